//! `/api/users`: signup, signin, signout, currentuser.

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::SET_COOKIE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::error::{ApiError, ApiResult, ErrorEntry};
use common::extract::{CurrentUser, FromJson, JsonBody, JsonObject, Validator};
use common::session::{clear_session_cookie, set_session_cookie};
use mongodb::bson::oid::ObjectId;
use serde_json::json;

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

fn read_credentials(body: &JsonObject) -> (String, String) {
    let email = body.trimmed_str("email").unwrap_or_default().to_lowercase();
    let password = body.trimmed_str("password").unwrap_or_default().to_owned();
    (email, password)
}

pub struct SignupBody(Credentials);

impl FromJson for SignupBody {
    fn from_json(body: &JsonObject) -> Result<Self, Vec<ErrorEntry>> {
        let (email, password) = read_credentials(body);
        let mut v = Validator::default();
        v.check(is_valid_email(&email), "email", EMAIL_INVALID);
        v.check(
            (5..=20).contains(&password.chars().count()),
            "password",
            PASSWORD_LENGTH,
        );
        v.finish(|| Some(SignupBody(Credentials { email, password })))
    }
}

pub struct SigninBody(Credentials);

impl FromJson for SigninBody {
    fn from_json(body: &JsonObject) -> Result<Self, Vec<ErrorEntry>> {
        let (email, password) = read_credentials(body);
        let mut v = Validator::default();
        v.check(is_valid_email(&email), "email", EMAIL_INVALID);
        v.check(!password.is_empty(), "password", PASSWORD_MISSING);
        v.finish(|| Some(SigninBody(Credentials { email, password })))
    }
}

#[tracing::instrument(name = "signup", skip_all)]
async fn signup(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    JsonBody(SignupBody(creds)): JsonBody<SignupBody>,
) -> ApiResult<Response> {
    if !state.rate_limiter.allow(client) {
        return Err(ApiError::TooManyRequests);
    }
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
    JsonBody(SigninBody(creds)): JsonBody<SigninBody>,
) -> ApiResult<Response> {
    if !state.rate_limiter.allow(client) {
        return Err(ApiError::TooManyRequests);
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
        Some(user) if matches => signed_in(&state, &user, StatusCode::OK),
        _ => Err(ApiError::bad_request(INVALID_CREDENTIALS)),
    }
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

/// A pragmatic address check in the spirit of validator.js `isEmail`: one `@`, a sane local part,
/// and a dotted domain of letters, digits and hyphens with an alphabetic top-level label.
pub fn is_valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.rsplit_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = email.len() <= 254
        && labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic()));
    local_ok && domain_ok
}

#[cfg(test)]
mod tests {
    use super::is_valid_email;

    #[test]
    fn ordinary_addresses_are_valid() {
        for email in ["test@test.com", "a.b+tag@sub.example.co.uk", "x_y-z@d-1.io"] {
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
        ] {
            assert!(!is_valid_email(email), "{email}");
        }
    }
}
