//! A synchronizer token on every form (double-submit, with `axum_csrf`): a page with a form sets an
//! encrypted, HttpOnly cookie holding a random token and puts an HMAC of that token in a hidden
//! field; a POST is only handled when the field matches the cookie. Another site can make a
//! browser send our cookie, but it can neither read the cookie nor the page, so it cannot fill in
//! the field. This backs up `cross_site` for clients that send neither `Origin` nor
//! `Sec-Fetch-Site`.
//!
//! The cookie key and the HMAC salt come from `CSRF_KEY`, so a token issued by one replica is
//! accepted by every other (the crate's default is a random key per process).

use axum::body::{Body, Bytes};
use axum::extract::{Form, FromRef, FromRequest, FromRequestParts, Request, State};
use axum::http::header::SET_COOKIE;
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, IntoResponseParts, Response, ResponseParts};
use axum_csrf::{CsrfConfig, CsrfToken, Key, SameSite};
use common::settings::SettingsError;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::api::FormErrors;
use crate::page::PageError;
use crate::views::{ErrorPage, Viewer, internal_error_page, render};

/// The cookie holding the (encrypted) token.
pub const CSRF_COOKIE: &str = "csrf";
/// The hidden form field holding the authenticity token.
pub const CSRF_FIELD: &str = "csrf_token";
/// What the refusal page says.
pub const CSRF_MESSAGE: &str =
    "This form has expired or was not sent from this site. Reload the page and try again.";
/// How long a page's form stays valid (each page with a form renews it).
const TOKEN_LIFETIME: cookie::time::Duration = cookie::time::Duration::days(1);

/// `CSRF_KEY`, known to be long enough.
#[derive(Debug, Clone)]
pub struct CsrfKey(SecretString);

impl CsrfKey {
    /// `key` is `CSRF_KEY`'s value; one too short is refused, naming the variable.
    pub fn new(key: String) -> Result<Self, SettingsError> {
        common::settings::long_key("CSRF_KEY", key).map(Self)
    }
}

/// The token configuration every replica with this key shares. `secure` adds `Secure` to the
/// cookie (`COOKIE_SECURE`, behind TLS).
pub fn config(key: &CsrfKey, secure: bool) -> CsrfConfig {
    let master = key.0.expose_secret().as_bytes();
    // `CsrfKey::new` guarantees the 32 bytes `derive_from` needs (it panics below that).
    let cookie_key = Key::derive_from(master);
    // A separate secret for the form field's HMAC, so the field never reveals the cookie key.
    let salt: String = Sha256::new()
        .chain_update(b"ticketing client csrf form salt\0")
        .chain_update(master)
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    CsrfConfig::default()
        .with_cookie_name(CSRF_COOKIE)
        .with_cookie_path("/")
        .with_http_only(true)
        .with_cookie_same_site(SameSite::Lax)
        .with_secure(secure)
        .with_lifetime(TOKEN_LIFETIME)
        .with_key(Some(cookie_key))
        .with_salt(salt)
}

/// Extractor for pages with a form: the token for the hidden field, and (as a response part) the
/// cookie it pairs with. The browser's existing token is kept, so several open tabs all work.
pub struct FormToken {
    token: CsrfToken,
    field: String,
}

impl FormToken {
    /// The value of the hidden `csrf_token` field.
    pub fn field(&self) -> &str {
        &self.field
    }

    async fn issue(parts: &mut Parts, config: &CsrfConfig) -> Option<Self> {
        let token = CsrfToken::from_request_parts(parts, config).await.ok()?;
        let field = token.authenticity_token().ok()?;
        Some(Self { token, field })
    }
}

impl<S> FromRequestParts<S> for FormToken
where
    S: Send + Sync,
    CsrfConfig: FromRef<S>,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Self::issue(parts, &CsrfConfig::from_ref(state))
            .await
            .ok_or_else(|| {
                tracing::error!("a CSRF token could not be made");
                internal_error_page()
            })
    }
}

impl IntoResponseParts for FormToken {
    type Error = std::convert::Infallible;

    fn into_response_parts(self, res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        self.token.into_response_parts(res)
    }
}

/// A fresh pair as a page would issue it: the `Cookie` header value (`csrf=...`) and the hidden
/// field's value. For clients that post without loading a page first (the tests).
pub async fn issue_pair(config: &CsrfConfig) -> Option<(String, String)> {
    let (mut parts, ()) = Request::new(()).into_parts();
    let token = FormToken::issue(&mut parts, config).await?;
    let field = token.field.clone();
    let response = (token, ()).into_response();
    let set_cookie =
        cookie::Cookie::parse(response.headers().get(SET_COOKIE)?.to_str().ok()?).ok()?;
    Some((
        format!("{}={}", set_cookie.name(), set_cookie.value()),
        field,
    ))
}

#[derive(Deserialize)]
struct TokenField {
    #[serde(default)]
    csrf_token: String,
}

/// Middleware on the routes: a POST whose `csrf_token` field does not match its cookie is
/// answered 403 before its handler (and so any API) runs. The body is read here and handed on
/// unchanged; a body that is no readable form gets the same page its handler would give.
pub async fn require_form_token(
    State(config): State<CsrfConfig>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    // Through the extractor, so the router's body limit applies.
    let bytes = match Bytes::from_request(Request::from_parts(parts.clone(), body), &()).await {
        Ok(bytes) => bytes,
        Err(rejection) => return PageError::BadForm(rejection.status()).into_response(),
    };
    let probe = Request::from_parts(parts.clone(), Body::from(bytes.clone()));
    let field = match Form::<TokenField>::from_request(probe, &()).await {
        Ok(Form(TokenField { csrf_token })) => csrf_token,
        Err(rejection) => return PageError::BadForm(rejection.status()).into_response(),
    };
    let verified = match CsrfToken::from_request_parts(&mut parts, &config).await {
        Ok(token) => token.verify(&field).is_ok(),
        Err(_) => false,
    };
    if !verified {
        tracing::warn!(path = %parts.uri.path(), has_field = !field.is_empty(), "form without a valid CSRF token refused");
        return refusal();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// 403 with no cookie set or cleared.
fn refusal() -> Response {
    render(
        StatusCode::FORBIDDEN,
        &ErrorPage {
            viewer: Viewer::Unknown,
            heading: "Request refused".into(),
            message: CSRF_MESSAGE.into(),
            errors: FormErrors::default(),
        },
    )
}

/// Whether a `Cookie` header pair (`name=value`) is our token cookie, which the APIs never need.
pub fn is_token_cookie(pair: &[u8]) -> bool {
    pair.strip_prefix(CSRF_COOKIE.as_bytes())
        .is_some_and(|rest| rest.trim_ascii_start().starts_with(b"="))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> CsrfKey {
        CsrfKey::new(text.to_owned()).unwrap_or_else(|err| panic!("{err}"))
    }

    #[test]
    fn a_csrf_key_shorter_than_32_bytes_is_refused_with_its_name() {
        let err = CsrfKey::new("k".repeat(31)).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("CSRF_KEY") && e.contains("31 bytes long")),
            "{err:?}"
        );
        assert!(CsrfKey::new("k".repeat(32)).is_ok());
    }

    #[tokio::test]
    async fn the_cookie_is_http_only_lax_site_wide_for_a_day_and_secure_when_asked() {
        let secret = "k".repeat(32);
        for secure in [false, true] {
            let (mut parts, ()) = Request::new(()).into_parts();
            let token = FormToken::issue(&mut parts, &config(&key(&secret), secure))
                .await
                .unwrap_or_else(|| panic!("a token"));
            let response = (token, ()).into_response();
            let set_cookie = response
                .headers()
                .get(SET_COOKIE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            assert!(set_cookie.starts_with("csrf="), "{set_cookie}");
            for flag in ["HttpOnly", "SameSite=Lax", "Path=/", "Expires="] {
                assert!(set_cookie.contains(flag), "{flag} missing: {set_cookie}");
            }
            assert_eq!(set_cookie.contains("Secure"), secure, "{set_cookie}");
        }
    }

    #[tokio::test]
    async fn a_pair_verifies_with_the_same_key_and_not_with_another() {
        let one = config(&key(&"a".repeat(32)), false);
        let other = config(&key(&"b".repeat(32)), false);
        let (cookie, field) = issue_pair(&one)
            .await
            .unwrap_or_else(|| panic!("a token pair"));
        let verify = |config: CsrfConfig, cookie: String, field: String| async move {
            let mut request = Request::new(());
            request.headers_mut().insert(
                axum::http::header::COOKIE,
                cookie.parse().unwrap_or_else(|_| panic!("a header")),
            );
            let (mut parts, ()) = request.into_parts();
            CsrfToken::from_request_parts(&mut parts, &config)
                .await
                .is_ok_and(|token| token.verify(&field).is_ok())
        };
        assert!(verify(one.clone(), cookie.clone(), field.clone()).await);
        assert!(
            verify(
                config(&key(&"a".repeat(32)), false),
                cookie.clone(),
                field.clone()
            )
            .await
        );
        assert!(!verify(other, cookie.clone(), field.clone()).await);
        assert!(!verify(one, cookie, "d3Jvbmc=".into()).await);
    }

    #[test]
    fn only_the_token_cookie_is_recognised() {
        assert!(is_token_cookie(b"csrf=abc"));
        assert!(!is_token_cookie(b"csrftoken=abc"));
        assert!(!is_token_cookie(b"express:sess=abc"));
    }
}
