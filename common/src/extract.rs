//! Extractors that answer in our error shape: a JSON body checked with `validator`, the optional
//! current user and the rejecting `RequireAuth`.

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::{Deserialize, DeserializeOwned, Deserializer};
use serde_json::{Map, Value};
use tower_cookies::Cookies;
use validator::{Validate, ValidationErrors};

use crate::error::{ApiError, ErrorEntry};
use crate::session::{SessionKeys, UserClaims};

/// express-validator's message for a rule declared without one.
pub const INVALID_VALUE: &str = "Invalid value";
/// A body that passed every rule but could not be turned into the handler's input: a rule forgot
/// a case. Reported rather than panicking.
const INVALID_BODY: &str = "Invalid request body";

/// The handler's input, built from a request body that `validator`'s derive checked first.
///
/// [`FromBody::Raw`] is the body as sent, read leniently: text fields through [`trimmed_string`],
/// fields that may hold several JSON types as `serde_json::Value`, and the struct `#[serde(default)]`.
/// So a field that is missing or of the wrong JSON type fails its own rules with their messages,
/// as express-validator answers, instead of failing to parse. Every failed rule is reported.
pub trait FromBody: Sized {
    type Raw: DeserializeOwned + Validate;
    /// `(struct field, JSON property)` in the order the API reports their failures: `validator`
    /// collects errors in a map, while the SPEC reports the failed rules in declaration order.
    /// Within a field, the derive checks its built-in rules first (in the crate's fixed order),
    /// then its `custom` rules in the order written.
    const FIELDS: &'static [(&'static str, &'static str)];
    /// The input from a body that passed every rule; `None` only if a rule missed a case.
    fn from_raw(raw: Self::Raw) -> Option<Self>;
}

/// Checks a JSON object as `T`'s body: the failed rules in report order, or `T`.
pub fn validate_body<T: FromBody>(object: Map<String, Value>) -> Result<T, Vec<ErrorEntry>> {
    // Lenient fields make this infallible for our bodies; a stricter `Raw` gets the generic answer.
    let raw: T::Raw = serde_json::from_value(Value::Object(object))
        .map_err(|_| vec![ErrorEntry::new(INVALID_BODY)])?;
    raw.validate()
        .map_err(|errors| ordered_errors(&errors, T::FIELDS))?;
    T::from_raw(raw).ok_or_else(|| vec![ErrorEntry::new(INVALID_BODY)])
}

/// `validator`'s errors as our entries, fields in `fields` order (JSON names), rules in order.
fn ordered_errors(errors: &ValidationErrors, fields: &[(&str, &str)]) -> Vec<ErrorEntry> {
    let mut by_field = errors.field_errors();
    let mut entries = Vec::new();
    let mut push = |field: &str, list: &Vec<validator::ValidationError>| {
        for error in list {
            let message = error.message.as_deref().unwrap_or(INVALID_VALUE);
            entries.push(ErrorEntry::for_field(field, message));
        }
    };
    for (key, name) in fields {
        if let Some(list) = by_field.remove(*key) {
            push(name, list);
        }
    }
    // A field left out of `fields` is still reported, last and in a stable order.
    let mut rest: Vec<_> = by_field.into_iter().collect();
    rest.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, list) in rest {
        push(&key, list);
    }
    entries
}

/// serde `deserialize_with` for a text field: the string trimmed (express-validator's `trim()`);
/// anything else (`null`, a number, an object) reads as `""` so that it fails the field's rules
/// as an empty string does.
pub fn trimmed_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::String(text) => text.trim().to_owned(),
        _ => String::new(),
    })
}

/// A JSON number, or a string that parses as a finite number (the original accepts `"12.50"`).
pub fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|n| n.is_finite())
}

/// A JSON body validated into `T` (see [`FromBody`]). An absent body counts as `{}` so that
/// validation messages, not parse errors, answer an empty request.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: FromBody,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json_content = is_json_content_type(req.headers());
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::bad_request("Could not read the request body")
            }
        })?;
        let object = parse_object(&bytes, json_content)?;
        validate_body(object)
            .map(JsonBody)
            .map_err(ApiError::Validation)
    }
}

fn is_json_content_type(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

fn parse_object(bytes: &[u8], json_content: bool) -> Result<Map<String, Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    // Only JSON is accepted for a non-empty body: this also stops cross-site HTML form posts.
    if !json_content {
        return Err(ApiError::UnsupportedMediaType(
            "Content-Type must be application/json".into(),
        ));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("Request body must be a JSON object")),
        Err(_) => Err(ApiError::bad_request("Request body is not valid JSON")),
    }
}

/// The user of the request's session cookie, read from the jar of tower-cookies'
/// `CookieManagerLayer` (installed on every service by `server::finish_router`).
fn session_user(parts: &Parts, keys: &SessionKeys) -> Result<Option<UserClaims>, ApiError> {
    let cookies = parts.extensions.get::<Cookies>().ok_or_else(|| {
        // A wiring mistake, not a client's: fail loudly rather than treat everyone as anonymous.
        ApiError::Internal(anyhow::anyhow!("the CookieManagerLayer is not installed"))
    })?;
    Ok(keys.user_from_cookies(cookies))
}

/// The signed-in user, or `None` for anonymous requests. Never rejects a client.
#[derive(Debug, Clone)]
pub struct CurrentUser(pub Option<UserClaims>);

impl<S> FromRequestParts<S> for CurrentUser
where
    S: Send + Sync,
    SessionKeys: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        session_user(parts, &SessionKeys::from_ref(state)).map(Self)
    }
}

/// The signed-in user; anonymous requests are rejected with 401 `Not authorized`. Put it before the
/// body extractor so that auth is checked before validation, as in the original.
#[derive(Debug, Clone)]
pub struct RequireAuth(pub UserClaims);

impl<S> FromRequestParts<S> for RequireAuth
where
    S: Send + Sync,
    SessionKeys: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        session_user(parts, &SessionKeys::from_ref(state))?
            .map(Self)
            .ok_or(ApiError::NotAuthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{COOKIE_NAME, encode_session};
    use axum::Router;
    use axum::body::Body;
    use axum::routing::post;
    use secrecy::SecretString;
    use serde_json::json;
    use std::time::Duration;
    use tower_cookies::CookieManagerLayer;

    #[derive(Debug)]
    struct NewThing {
        title: String,
    }

    /// Two fields, two rules on the second, declared in the opposite order of the struct's
    /// fields to show that `FIELDS`, not the struct or validator's map, decides the report order.
    #[derive(Debug, Default, serde::Deserialize, Validate)]
    #[serde(default)]
    struct NewThingBody {
        #[validate(
            custom(function = "positive", message = "Price must be larger than 0."),
            custom(function = "below_100", message = "Price must be below 100.")
        )]
        price: Value,
        #[serde(deserialize_with = "trimmed_string")]
        #[validate(length(min = 1, message = "Title is required."))]
        title: String,
    }

    fn positive(price: &Value) -> Result<(), validator::ValidationError> {
        match number(price) {
            Some(p) if p > 0.0 => Ok(()),
            _ => Err(validator::ValidationError::new("positive")),
        }
    }

    fn below_100(price: &Value) -> Result<(), validator::ValidationError> {
        match number(price) {
            Some(p) if p >= 100.0 => Err(validator::ValidationError::new("below_100")),
            _ => Ok(()),
        }
    }

    impl FromBody for NewThing {
        type Raw = NewThingBody;
        const FIELDS: &'static [(&'static str, &'static str)] =
            &[("title", "title"), ("price", "price")];

        fn from_raw(raw: NewThingBody) -> Option<Self> {
            Some(NewThing { title: raw.title })
        }
    }

    fn app() -> Router {
        let keys = SessionKeys::new(&SecretString::from("k".to_owned()));
        Router::new()
            .route(
                "/things",
                post(|RequireAuth(user): RequireAuth, JsonBody(thing): JsonBody<NewThing>| async move {
                    format!("{} by {}", thing.title, user.email)
                }),
            )
            .route(
                "/me",
                post(|CurrentUser(user): CurrentUser| async move {
                    user.map(|u| u.email).unwrap_or_else(|| "anonymous".to_owned())
                }),
            )
            .with_state(keys)
            .layer(CookieManagerLayer::new())
    }

    fn cookie() -> String {
        let keys = SessionKeys::new(&SecretString::from("k".to_owned()));
        let token = keys
            .issue("id", "a@b.co", Duration::from_secs(60))
            .unwrap_or_default();
        format!("{COOKIE_NAME}={}", encode_session(&token))
    }

    async fn send(request: axum::http::Request<Body>) -> (StatusCode, String) {
        crate::test_support::respond(app(), request).await
    }

    fn post_things(
        content_type: Option<&str>,
        body: &str,
        signed_in: bool,
    ) -> axum::http::Request<Body> {
        let mut builder = axum::http::Request::post("/things");
        if let Some(ct) = content_type {
            builder = builder.header(CONTENT_TYPE, ct);
        }
        if signed_in {
            builder = builder.header("cookie", cookie());
        }
        builder
            .body(Body::from(body.to_owned()))
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn anonymous_requests_get_401_before_validation() {
        let (status, body) = send(post_things(Some("application/json"), "{}", false)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body, r#"{"errors":[{"message":"Not authorized"}]}"#);
    }

    #[tokio::test]
    async fn an_absent_body_is_validated_as_an_empty_object() {
        let (status, body) = send(post_things(None, "", true)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            r#"{"errors":[{"message":"Title is required.","field":"title"},{"message":"Price must be larger than 0.","field":"price"}]}"#
        );
    }

    #[tokio::test]
    async fn malformed_json_gets_the_error_shape() {
        let (status, body) = send(post_things(Some("application/json"), "{\"title\":", true)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            r#"{"errors":[{"message":"Request body is not valid JSON"}]}"#
        );
        let (status, body) = send(post_things(Some("application/json"), "[1,2]", true)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            r#"{"errors":[{"message":"Request body must be a JSON object"}]}"#
        );
    }

    #[tokio::test]
    async fn a_form_post_is_refused_with_415() {
        let (status, body) = send(post_things(
            Some("application/x-www-form-urlencoded"),
            "title=x&price=3",
            true,
        ))
        .await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(
            body,
            r#"{"errors":[{"message":"Content-Type must be application/json"}]}"#
        );
    }

    #[tokio::test]
    async fn a_valid_body_reaches_the_handler_with_numeric_strings_accepted() {
        let (status, body) = send(post_things(
            Some("application/json; charset=utf-8"),
            r#"{"title":" Gig ","price":"12.50"}"#,
            true,
        ))
        .await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "Gig by a@b.co"));
    }

    #[tokio::test]
    async fn fields_of_the_wrong_json_type_fail_their_rules_in_field_order() {
        // Many runs: validator's error map is a HashMap with a random seed per map.
        for _ in 0..32 {
            let (status, body) = send(post_things(
                Some("application/json"),
                r#"{"price":{"euros":3},"title":42}"#,
                true,
            ))
            .await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert_eq!(
                body,
                r#"{"errors":[{"message":"Title is required.","field":"title"},{"message":"Price must be larger than 0.","field":"price"}]}"#
            );
        }
        let (_, body) = send(post_things(
            Some("application/json"),
            r#"{"price":"120","title":null}"#,
            true,
        ))
        .await;
        assert_eq!(
            body,
            r#"{"errors":[{"message":"Title is required.","field":"title"},{"message":"Price must be below 100.","field":"price"}]}"#
        );
    }

    #[test]
    fn errors_are_reported_in_field_order_and_unlisted_fields_last() {
        let mut errors = ValidationErrors::new();
        for (field, message) in [
            ("zeta", "z"),
            ("b_field", "b1"),
            ("alpha", "a"),
            ("b_field", "b2"),
        ] {
            errors.add(
                field,
                validator::ValidationError::new("rule").with_message(message.into()),
            );
        }
        errors.add("a_field", validator::ValidationError::new("no message"));
        let entries: Vec<String> =
            ordered_errors(&errors, &[("b_field", "bField"), ("a_field", "aField")])
                .into_iter()
                .map(|e| format!("{}:{}", e.field.unwrap_or_default(), e.message))
                .collect();
        assert_eq!(
            entries,
            [
                "bField:b1",
                "bField:b2",
                "aField:Invalid value",
                "alpha:a",
                "zeta:z"
            ]
        );
    }

    #[test]
    fn trimmed_strings_and_numbers_read_leniently() {
        let body: Result<NewThing, _> = validate_body(
            json!({ "title": "  x ", "price": " 1e0 ", "extra": true })
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        assert_eq!(body.map(|b| b.title).ok().as_deref(), Some("x"));
        for (value, expected) in [
            (json!(12.5), Some(12.5)),
            (json!(" 12.50 "), Some(12.5)),
            (json!("inf"), None),
            (json!("NaN"), None),
            (json!("12 euros"), None),
            (json!(true), None),
            (json!([1]), None),
            (Value::Null, None),
        ] {
            assert_eq!(number(&value), expected, "{value}");
        }
    }

    fn post_me(cookie_headers: &[&str]) -> axum::http::Request<Body> {
        let mut builder = axum::http::Request::post("/me");
        for header in cookie_headers {
            builder = builder.header("cookie", *header);
        }
        builder.body(Body::empty()).unwrap_or_default()
    }

    #[tokio::test]
    async fn the_session_cookie_is_found_among_others_and_across_cookie_headers() {
        let session = cookie();
        for headers in [
            vec![session.clone()],
            vec![format!("other=1; {session}")],
            vec![format!("{session}; other=1")],
            vec![format!("  other=1 ;  {session} ")],
            vec!["other=1".to_owned(), session.clone()],
        ] {
            assert_read_as(&headers, "a@b.co").await;
        }
    }

    /// Sends `headers` as the request's `Cookie` headers and checks who the request is from.
    async fn assert_read_as(headers: &[String], who: &str) {
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let (status, body) = send(post_me(&headers)).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, who),
            "{headers:?}"
        );
    }

    #[tokio::test]
    async fn garbage_or_absent_session_cookies_mean_anonymous() {
        let session = cookie();
        let value = session.trim_start_matches("express:sess=");
        for headers in [
            vec![],
            vec!["express:sess=".to_owned()],
            vec!["express:sess=!!!".to_owned()],
            vec!["express:sess=e30=".to_owned()],
            vec!["express:sess=bm90IGpzb24=".to_owned()],
            vec!["express:sess".to_owned()],
            vec![";;;".to_owned()],
            vec!["express:sess=%FF%FE".to_owned()],
            // The name is matched exactly.
            vec![format!("Express:sess={value}")],
            vec![format!("express:sess.sig={value}")],
            vec![format!("xexpress:sess={value}")],
        ] {
            assert_read_as(&headers, "anonymous").await;
        }
    }

    #[tokio::test]
    async fn cookies_are_read_the_way_the_cookie_crate_reads_them() {
        // Percent-escapes are decoded (tower-cookies parses with `Cookie::parse_encoded`), and of
        // two session cookies the last one counts (a jar keeps one cookie per name).
        let session = cookie();
        let value = session.trim_start_matches("express:sess=");
        let escaped = format!("express%3Asess={}", value.replace('=', "%3D"));
        let (_, body) = send(post_me(&[&escaped])).await;
        assert_eq!(body, "a@b.co");
        let (_, body) = send(post_me(&[&format!("express:sess=garbage; {session}")])).await;
        assert_eq!(body, "a@b.co");
        let (_, body) = send(post_me(&[&format!("{session}; express:sess=garbage")])).await;
        assert_eq!(body, "anonymous");
    }

    #[tokio::test]
    async fn without_the_cookie_layer_the_extractors_fail_loudly() {
        let keys = SessionKeys::new(&SecretString::from("k".to_owned()));
        let app = Router::new()
            .route(
                "/me",
                post(|CurrentUser(user): CurrentUser| async move { format!("{user:?}") }),
            )
            .with_state(keys);
        let (status, body) = crate::test_support::respond(app, post_me(&[&cookie()])).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body, r#"{"errors":[{"message":"Something went wrong"}]}"#);
    }
}
