//! Extractors that answer in our error shape: a validated JSON body, the optional current user and
//! the rejecting `RequireAuth`.

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

use crate::error::{ApiError, ErrorEntry};
use crate::session::{SessionKeys, UserClaims};

/// A request body that knows how to validate itself from a JSON object. Rules are checked in
/// declaration order and every failure is reported, like express-validator does.
pub trait FromJson: Sized {
    fn from_json(body: &JsonObject) -> Result<Self, Vec<ErrorEntry>>;
}

/// The parsed JSON object of a request body, with typed field readers.
#[derive(Debug, Default)]
pub struct JsonObject(pub Map<String, Value>);

impl JsonObject {
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.0.get(field)
    }

    /// The field as a string, trimmed; `None` if absent or not a string.
    pub fn trimmed_str(&self, field: &str) -> Option<&str> {
        self.0.get(field).and_then(Value::as_str).map(str::trim)
    }

    /// A number, or a string that parses as a finite number (the original accepts `"12.50"`).
    pub fn number(&self, field: &str) -> Option<f64> {
        match self.0.get(field)? {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        }
        .filter(|n| n.is_finite())
    }
}

/// Collects validation failures in order.
#[derive(Debug, Default)]
pub struct Validator {
    errors: Vec<ErrorEntry>,
}

impl Validator {
    /// Records `message` for `field` unless `ok`.
    pub fn check(&mut self, ok: bool, field: &str, message: &str) -> &mut Self {
        if !ok {
            self.errors.push(ErrorEntry::for_field(field, message));
        }
        self
    }

    /// The value built by `build` if no rule failed, the failures otherwise.
    pub fn finish<T>(self, build: impl FnOnce() -> Option<T>) -> Result<T, Vec<ErrorEntry>> {
        if self.errors.is_empty() {
            // `build` only fails if a rule above forgot a case; report it rather than panic.
            build().ok_or_else(|| vec![ErrorEntry::new("Invalid request body")])
        } else {
            Err(self.errors)
        }
    }
}

/// A JSON body validated into `T`. An absent body counts as `{}` so that validation messages, not
/// parse errors, answer an empty request.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: FromJson,
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
        T::from_json(&object)
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

fn parse_object(bytes: &[u8], json_content: bool) -> Result<JsonObject, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(JsonObject::default());
    }
    // Only JSON is accepted for a non-empty body: this also stops cross-site HTML form posts.
    if !json_content {
        return Err(ApiError::UnsupportedMediaType(
            "Content-Type must be application/json".into(),
        ));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(JsonObject(map)),
        Ok(_) => Err(ApiError::bad_request("Request body must be a JSON object")),
        Err(_) => Err(ApiError::bad_request("Request body is not valid JSON")),
    }
}

/// The signed-in user, or `None` for anonymous requests. Never rejects.
#[derive(Debug, Clone)]
pub struct CurrentUser(pub Option<UserClaims>);

impl<S> FromRequestParts<S> for CurrentUser
where
    S: Send + Sync,
    SessionKeys: FromRef<S>,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let keys = SessionKeys::from_ref(state);
        Ok(Self(keys.user_from_headers(&parts.headers)))
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
        let keys = SessionKeys::from_ref(state);
        keys.user_from_headers(&parts.headers)
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
    use http_body_util::BodyExt;
    use secrecy::SecretString;
    use std::time::Duration;
    use tower::ServiceExt;

    #[derive(Debug)]
    struct NewThing {
        title: String,
    }

    impl FromJson for NewThing {
        fn from_json(body: &JsonObject) -> Result<Self, Vec<ErrorEntry>> {
            let title = body.trimmed_str("title").unwrap_or_default();
            let mut v = Validator::default();
            v.check(!title.is_empty(), "title", "Title is required.");
            v.check(
                body.number("price").is_some_and(|p| p > 0.0),
                "price",
                "Price must be larger than 0.",
            );
            v.finish(|| {
                Some(NewThing {
                    title: title.to_owned(),
                })
            })
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
            .with_state(keys)
    }

    fn cookie() -> String {
        let keys = SessionKeys::new(&SecretString::from("k".to_owned()));
        let token = keys
            .issue("id", "a@b.co", Duration::from_secs(60))
            .unwrap_or_default();
        format!("{COOKIE_NAME}={}", encode_session(&token))
    }

    async fn send(request: axum::http::Request<Body>) -> (StatusCode, String) {
        let response = app().oneshot(request).await.unwrap_or_else(|e| match e {});
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (status, String::from_utf8_lossy(&body).into_owned())
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
}
