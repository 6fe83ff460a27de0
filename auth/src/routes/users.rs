//! `/api/users`: signup, signin, signout, currentuser.

use std::marker::PhantomData;
use std::net::IpAddr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::SET_COOKIE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::error::{ApiError, ApiResult};
use common::extract::{CurrentUser, FromBody, JsonBody, trimmed_string};
use common::session::{clear_session_cookie, set_session_cookie};
use mongodb::bson::oid::ObjectId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::json;
use validator::{Validate, ValidateEmail, ValidationError};

use crate::app::AppState;
use crate::password;
use crate::rate_limit::ClientAddr;
use crate::store::{InsertUserError, User};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/users/signup", post(signup))
        .route("/api/users/signin", post(signin))
        .route("/api/users/signout", post(signout))
        .route("/api/users/currentuser", get(current_user))
}

pub const EMAIL_INVALID: &str = "Email must be valid.";
pub const PASSWORD_LENGTH: &str = "Password must be between 5 and 20 characters.";
pub const PASSWORD_MISSING: &str = "You must provide a password.";
pub const EMAIL_IN_USE: &str = "Email in use";
pub const INVALID_CREDENTIALS: &str = "Invalid credentials.";

/// Email (trimmed, lower-cased) and password (trimmed, as the original's sanitiser does).
#[derive(Debug)]
pub struct Credentials {
    pub email: String,
    pub password: String,
}

// The `message`s below are the constants above: the derive only takes literals (the API tests
// compare the answers with the constants).

/// `POST /api/users/signup` as sent.
#[derive(Debug, Default, Deserialize, Validate)]
#[serde(default)]
pub struct SignupRequest {
    #[serde(deserialize_with = "email_address")]
    #[validate(custom(function = "valid_email", message = "Email must be valid."))]
    email: String,
    #[serde(deserialize_with = "trimmed_string")]
    #[validate(length(
        min = 5,
        max = 20,
        message = "Password must be between 5 and 20 characters."
    ))]
    password: String,
}

/// `POST /api/users/signin` as sent.
#[derive(Debug, Default, Deserialize, Validate)]
#[serde(default)]
pub struct SigninRequest {
    #[serde(deserialize_with = "email_address")]
    #[validate(custom(function = "valid_email", message = "Email must be valid."))]
    email: String,
    #[serde(deserialize_with = "trimmed_string")]
    #[validate(length(min = 1, message = "You must provide a password."))]
    password: String,
}

impl From<SignupRequest> for Credentials {
    fn from(SignupRequest { email, password }: SignupRequest) -> Self {
        Self { email, password }
    }
}

impl From<SigninRequest> for Credentials {
    fn from(SigninRequest { email, password }: SigninRequest) -> Self {
        Self { email, password }
    }
}

/// The credentials of a body that passed the rules of `R`, the request as sent.
pub struct CredentialsBody<R>(Credentials, PhantomData<R>);

pub type SignupBody = CredentialsBody<SignupRequest>;
pub type SigninBody = CredentialsBody<SigninRequest>;

impl<R> FromBody for CredentialsBody<R>
where
    R: DeserializeOwned + Validate + Into<Credentials>,
{
    type Raw = R;
    const FIELDS: &'static [(&'static str, &'static str)] =
        &[("email", "email"), ("password", "password")];

    fn from_raw(raw: R) -> Option<Self> {
        Some(Self(raw.into(), PhantomData))
    }
}

/// The email field trimmed and lower-cased (emails are compared case-insensitively, SPEC §8.11).
fn email_address<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    trimmed_string(deserializer).map(|email| email.to_lowercase())
}

fn valid_email(email: &str) -> Result<(), ValidationError> {
    if is_valid_email(email) {
        Ok(())
    } else {
        Err(ValidationError::new("email"))
    }
}

/// 429 once the client's address has made its signup and signin attempts of the minute.
fn allow_attempt(state: &AppState, client: Option<IpAddr>) -> ApiResult<()> {
    if state.rate_limiter.allow(client) {
        Ok(())
    } else {
        Err(ApiError::too_many_requests(
            state.rate_limiter.retry_after(),
        ))
    }
}

#[tracing::instrument(name = "signup", skip_all)]
async fn signup(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    JsonBody(CredentialsBody(creds, _)): JsonBody<SignupBody>,
) -> ApiResult<Response> {
    allow_attempt(&state, client)?;
    // Cheap early answer; the unique index below is what actually guarantees one account per email.
    if state.users.find_by_email(&creds.email).await?.is_some() {
        return Err(ApiError::bad_request(EMAIL_IN_USE));
    }
    let user = User {
        id: ObjectId::new(),
        email: creds.email,
        password_hash: password::hash(creds.password).await?,
    };
    match state.users.insert(&user).await {
        Ok(()) => {}
        Err(InsertUserError::EmailTaken) => return Err(ApiError::bad_request(EMAIL_IN_USE)),
        Err(InsertUserError::Db(e)) => return Err(e.into()),
    }
    tracing::info!(user_id = %user.id, "user signed up");
    signed_in(&state, &user, StatusCode::CREATED)
}

#[tracing::instrument(name = "signin", skip_all)]
async fn signin(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    JsonBody(CredentialsBody(creds, _)): JsonBody<SigninBody>,
) -> ApiResult<Response> {
    allow_attempt(&state, client)?;
    // Checked before any work: an account under a password-guessing flood costs no hashing.
    if let Err(retry_after) = state.failed_signins.check(&creds.email) {
        return Err(ApiError::TooManyRequests {
            message: account_slowed_down(retry_after),
            retry_after,
        });
    }
    let user = state.users.find_by_email(&creds.email).await?;
    let stored = match &user {
        Some(user) => user.password_hash.clone(),
        None => state
            .dummy_hash
            .get_or_try_init(password::dummy_hash)
            .await?
            .clone(),
    };
    let matches = password::verify(creds.password, stored).await?;
    match user {
        // One message for unknown emails and wrong passwords: no user enumeration (SPEC §8.10).
        Some(user) if matches => {
            state.failed_signins.succeeded(&creds.email);
            signed_in(&state, &user, StatusCode::OK)
        }
        _ => {
            state.failed_signins.failed(&creds.email);
            Err(ApiError::bad_request(INVALID_CREDENTIALS))
        }
    }
}

/// What a signin for an account under repeated failures is told.
fn account_slowed_down(retry_after: std::time::Duration) -> String {
    let seconds = retry_after.as_millis().div_ceil(1000).max(1);
    let unit = if seconds == 1 { "second" } else { "seconds" };
    format!("Too many failed sign-ins for this account, please wait {seconds} {unit} and try again")
}

fn signed_in(state: &AppState, user: &User, status: StatusCode) -> ApiResult<Response> {
    let id = user.id.to_hex();
    let token = state.keys.issue(&id, &user.email, state.token_ttl)?;
    let cookie = set_session_cookie(&token, state.cookie);
    Ok((
        status,
        [(SET_COOKIE, cookie)],
        Json(json!({ "email": user.email, "id": id })),
    )
        .into_response())
}

async fn signout(State(state): State<AppState>) -> Response {
    (
        [(SET_COOKIE, clear_session_cookie(state.cookie))],
        Json(json!({})),
    )
        .into_response()
}

async fn current_user(CurrentUser(user): CurrentUser) -> Json<serde_json::Value> {
    Json(json!({ "currentUser": user }))
}

/// validator's email rule (the WHATWG grammar), plus the checks of the original's `isEmail()`
/// (express-validator) that the WHATWG grammar leaves out, so that no address refused before is
/// accepted now: a top-level domain (`a@b`, `a@b.c`, `a@[1.2.3.4]` cannot be mailed from the
/// internet), dots only between characters of the local part (RFC 5321 dot-atom), at most 254
/// characters (RFC 5321's path limit), and ASCII only. The crate maps Unicode domains through
/// IDNA, which folds many spellings into one domain (full-width letters, ignored zero-width
/// characters, `bücher.de` beside `xn--bcher-kva.de`): one mailbox could then hold several accounts
/// and invisible characters would enter account names. The ASCII (`xn--`) form is accepted.
pub fn is_valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.rsplit_once('@') else {
        return false;
    };
    let dot_atom = !local.starts_with('.') && !local.ends_with('.') && !local.contains("..");
    let has_tld = domain.rsplit_once('.').is_some_and(|(_, tld)| is_tld(tld));
    email.is_ascii() && email.len() <= 254 && dot_atom && has_tld && email.validate_email()
}

/// Two or more letters, or an IDNA `xn--` label (`.xn--p1ai` is `.рф`), as `isFQDN()` requires.
fn is_tld(label: &str) -> bool {
    (label.len() >= 2 && label.bytes().all(|b| b.is_ascii_alphabetic()))
        || label.starts_with("xn--")
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::testing::validate_json;

    #[test]
    fn ordinary_addresses_are_valid() {
        for email in [
            "test@test.com",
            "a.b+tag@sub.example.co.uk",
            "x_y-z@d-1.io",
            "a!#$%&'*+/=?^_`{|}~-@b.com",
            "a@123.com",
            "a@a--b.com",
            "a@b.co",
            "a@b.museum",
            "a@xn--bcher-kva.de",
            "A@B.COM",
        ] {
            assert!(is_valid_email(email), "{email}");
        }
    }

    #[test]
    fn malformed_addresses_are_rejected() {
        for email in [
            "",
            "plain",
            "@test.com",
            "a@",
            "a@b",
            "a@@b.com",
            "a b@c.com",
            "a@b..com",
            ".a@b.com",
            "a@-b.com",
            "a@b.c0m",
            "a@b.c",
            // validator's (WHATWG) grammar accepts these; the original's isEmail() does not.
            "a.@b.com",
            "a..b@c.com",
            "a@1.2.3.4",
            "a@[1.2.3.4]",
            "user@localhost",
            "a@b.a1",
            "a@b.c-m",
            "1@2.3",
            // Neither accepts these.
            "a@b.com.",
            "a@.b.com",
            "a@b-.com",
            "a@b_c.com",
            "\"a\"@b.com",
            "a(b)@c.com",
            "a@b.com@c.com",
            "a@b.com\n",
            "a\0@b.com",
            "é@b.com",
            // IDNA would fold these into plain ASCII domains (see `is_valid_email`).
            "a@bücher.de",
            "a@b.рф",
            "a@ｂ.ｃｏｍ",
            "a@b\u{200b}.com",
            "a@b。com",
        ] {
            assert!(!is_valid_email(email), "{email}");
        }
    }

    #[test]
    fn punycode_top_level_domains_are_valid() {
        // Refused by the rule this one replaced, which wanted letters only; `.xn--p1ai` is `.рф`.
        assert!(is_valid_email("a@b.xn--p1ai"));
    }

    #[test]
    fn lengths_are_capped_like_rfc_5321() {
        let label = |n: usize| "b".repeat(n);
        let domain = format!(
            "{}.{}.{}.{}.com",
            label(62),
            label(62),
            label(62),
            label(59)
        );
        assert!(is_valid_email(&format!("a@{domain}")), "254 characters");
        assert!(!is_valid_email(&format!("aa@{domain}")), "255 characters");
        assert!(is_valid_email(&format!("{}@b.com", "a".repeat(64))));
        assert!(!is_valid_email(&format!("{}@b.com", "a".repeat(65))));
        assert!(is_valid_email(&format!("a@{}.com", label(63))));
        assert!(!is_valid_email(&format!("a@{}.com", label(64))));
    }

    fn errors<T: FromBody>(body: serde_json::Value) -> Vec<String> {
        common::testing::rule_failures::<T>(body)
    }

    #[test]
    fn the_rule_messages_are_the_published_constants() {
        assert_eq!(
            errors::<SignupBody>(json!({ "email": 42, "password": ["x"] })),
            [
                format!("email:{EMAIL_INVALID}"),
                format!("password:{PASSWORD_LENGTH}")
            ]
        );
        assert_eq!(
            errors::<SigninBody>(json!({ "email": null, "password": "   " })),
            [
                format!("email:{EMAIL_INVALID}"),
                format!("password:{PASSWORD_MISSING}")
            ]
        );
    }

    #[test]
    fn credentials_are_trimmed_and_the_email_lower_cased() {
        let body =
            validate_json::<SignupBody>(json!({ "email": " Me@Test.COM ", "password": " 12345 " }));
        let creds = body.ok().map(|CredentialsBody(c, _)| (c.email, c.password));
        assert_eq!(creds, Some(("me@test.com".to_owned(), "12345".to_owned())));
        // The length counts characters, not bytes.
        assert!(errors::<SignupBody>(json!({ "email": "a@b.co", "password": "ééééé" })).is_empty());
        assert_eq!(
            errors::<SignupBody>(json!({ "email": "a@b.co", "password": "é".repeat(21) })),
            [format!("password:{PASSWORD_LENGTH}")]
        );
    }
}
