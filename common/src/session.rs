//! The session: an HS256 JWT `{id, email, iat, exp}` inside the cookie-session style cookie
//! `express:sess=<base64 of {"jwt":"<token>"}>`, exactly as the original's clients expect.
//!
//! The cookie is read from tower-cookies' jar. It is written as the fixed `Set-Cookie` text below,
//! not through the jar: tower-cookies renders with the `cookie` crate's `Display`, which writes
//! its own attribute spelling and order (`HttpOnly; SameSite=Lax; Path=/; Max-Age=…`), while the
//! SPEC (§2) fixes the sign-out header byte for byte as cookie-session writes it.

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tower_cookies::Cookies;

pub const COOKIE_NAME: &str = "express:sess";

/// The verified token payload, which is also what `GET /api/users/currentuser` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserClaims {
    pub id: String,
    pub email: String,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Serialize, Deserialize)]
struct SessionPayload {
    jwt: String,
}

/// Signs and verifies session tokens. Cheap to clone.
#[derive(Clone)]
pub struct SessionKeys {
    inner: Arc<Keys>,
}

struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl SessionKeys {
    pub fn new(secret: &SecretString) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        // Only HS256 is accepted: `alg: none` or any other algorithm fails verification.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "iat"]);
        Self {
            inner: Arc::new(Keys {
                encoding: EncodingKey::from_secret(bytes),
                decoding: DecodingKey::from_secret(bytes),
                validation,
            }),
        }
    }

    /// Issues a token for the user, valid for `ttl`.
    pub fn issue(&self, id: &str, email: &str, ttl: Duration) -> anyhow::Result<String> {
        let iat = chrono::Utc::now().timestamp();
        let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let claims = UserClaims {
            id: id.to_owned(),
            email: email.to_owned(),
            iat,
            exp: iat.saturating_add(ttl_secs),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.inner.encoding,
        )?)
    }

    /// The claims of a valid, unexpired token signed with our key; `None` otherwise.
    pub fn verify(&self, token: &str) -> Option<UserClaims> {
        jsonwebtoken::decode::<UserClaims>(token, &self.inner.decoding, &self.inner.validation)
            .ok()
            .map(|data| data.claims)
    }

    /// The signed-in user of a request, if its session cookie holds a valid token.
    pub fn user_from_cookies(&self, cookies: &Cookies) -> Option<UserClaims> {
        cookies
            .get(COOKIE_NAME)
            .and_then(|cookie| decode_session(cookie.value()))
            .and_then(|token| self.verify(&token))
    }
}

/// Cookie attributes chosen by the deployment.
#[derive(Debug, Clone, Copy)]
pub struct CookiePolicy {
    pub secure: bool,
    pub max_age: Duration,
}

/// The value of the session cookie for a token: base64 of `{"jwt":"<token>"}`.
pub fn encode_session(token: &str) -> String {
    let json = serde_json::json!({ "jwt": token }).to_string();
    STANDARD.encode(json)
}

/// The token inside a session cookie value, if it decodes.
pub fn decode_session(value: &str) -> Option<String> {
    let bytes = STANDARD.decode(value.trim()).ok()?;
    let payload: SessionPayload = serde_json::from_slice(&bytes).ok()?;
    Some(payload.jwt)
}

/// `Set-Cookie` that starts a session.
pub fn set_session_cookie(token: &str, policy: CookiePolicy) -> HeaderValue {
    let mut cookie = format!(
        "{COOKIE_NAME}={}; path=/; max-age={}; samesite=lax; httponly",
        encode_session(token),
        policy.max_age.as_secs()
    );
    if policy.secure {
        cookie.push_str("; secure");
    }
    // Base64 and the fixed attributes are always valid header characters.
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `Set-Cookie` that ends the session, as cookie-session writes it.
pub fn clear_session_cookie(policy: CookiePolicy) -> HeaderValue {
    if policy.secure {
        HeaderValue::from_static(
            "express:sess=; path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT; httponly; secure",
        )
    } else {
        HeaderValue::from_static(
            "express:sess=; path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT; httponly",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> SessionKeys {
        SessionKeys::new(&SecretString::from(secret.to_owned()))
    }

    #[test]
    fn a_session_cookie_round_trips_to_the_same_claims() -> anyhow::Result<()> {
        let keys = keys("k1");
        let token = keys.issue(
            "64b7f0c2a1b2c3d4e5f60718",
            "a@b.co",
            Duration::from_secs(60),
        )?;
        let value = encode_session(&token);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&STANDARD.decode(&value)?)?,
            serde_json::json!({ "jwt": token })
        );
        let claims = decode_session(&value).and_then(|token| keys.verify(&token));
        assert_eq!(claims.as_ref().map(|c| c.email.as_str()), Some("a@b.co"));
        assert_eq!(claims.map(|c| c.exp - c.iat), Some(60));
        Ok(())
    }

    #[test]
    fn tokens_signed_with_another_key_are_rejected() -> anyhow::Result<()> {
        let token = keys("attacker").issue("id", "a@b.co", Duration::from_secs(60))?;
        assert_eq!(keys("k1").verify(&token), None);
        Ok(())
    }

    #[test]
    fn unsigned_alg_none_tokens_are_rejected() {
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"alg":"none","typ":"JWT"}"#);
        let now = chrono::Utc::now().timestamp();
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            serde_json::json!({"id": "x", "email": "a@b.co", "iat": now, "exp": now + 60})
                .to_string(),
        );
        assert_eq!(keys("k1").verify(&format!("{header}.{body}.")), None);
    }

    #[test]
    fn expired_tokens_are_rejected() -> anyhow::Result<()> {
        let keys = keys("k1");
        let now = chrono::Utc::now().timestamp();
        let claims = UserClaims {
            id: "x".into(),
            email: "a@b.co".into(),
            iat: now - 120,
            exp: now - 60,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &keys.inner.encoding,
        )?;
        assert_eq!(keys.verify(&token), None);
        Ok(())
    }

    #[test]
    fn garbage_cookie_values_mean_anonymous() {
        let keys = keys("k1");
        // More cases, through a request and tower-cookies' jar, in `extract`'s tests.
        for value in ["", "!!!", "e30=", "bm90IGpzb24="] {
            assert_eq!(
                decode_session(value).and_then(|token| keys.verify(&token)),
                None,
                "{value}"
            );
        }
    }

    fn policy(secure: bool, seconds: u64) -> CookiePolicy {
        CookiePolicy {
            secure,
            max_age: Duration::from_secs(seconds),
        }
    }

    #[test]
    fn the_signout_cookie_matches_the_original_byte_for_byte() {
        assert_eq!(
            clear_session_cookie(policy(false, 1)).to_str().ok(),
            Some("express:sess=; path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT; httponly")
        );
    }

    #[test]
    fn the_session_cookie_bytes_are_fixed() {
        let value = encode_session("t");
        for (secure, expected) in [
            (
                false,
                format!("express:sess={value}; path=/; max-age=3600; samesite=lax; httponly"),
            ),
            (
                true,
                format!(
                    "express:sess={value}; path=/; max-age=3600; samesite=lax; httponly; secure"
                ),
            ),
        ] {
            assert_eq!(
                set_session_cookie("t", policy(secure, 3600)).to_str().ok(),
                Some(&*expected)
            );
        }
        assert_eq!(
            clear_session_cookie(policy(true, 1)).to_str().ok(),
            Some("express:sess=; path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT; httponly; secure")
        );
    }

    #[test]
    fn the_cookie_crate_reads_our_set_cookie_headers_as_intended() -> anyhow::Result<()> {
        use tower_cookies::cookie::{Cookie, SameSite};
        let keys = keys("k1");
        let token = keys.issue("id", "a@b.co", Duration::from_secs(60))?;
        let policy = policy(true, 3600);
        let header = set_session_cookie(&token, policy);
        let cookie = Cookie::parse(header.to_str()?)?;
        // Base64's `+`, `/` and `=` and the colon in the name survive unescaped.
        assert_eq!(cookie.name(), COOKIE_NAME);
        assert_eq!(decode_session(cookie.value()), Some(token));
        assert_eq!(cookie.path(), Some("/"));
        assert_eq!(cookie.http_only(), Some(true));
        assert_eq!(cookie.same_site(), Some(SameSite::Lax));
        assert_eq!(cookie.secure(), Some(true));
        assert_eq!(cookie.max_age().map(|age| age.whole_seconds()), Some(3600));

        let cleared = clear_session_cookie(policy);
        let cleared = Cookie::parse(cleared.to_str()?)?;
        assert_eq!((cleared.name(), cleared.value()), (COOKIE_NAME, ""));
        assert_eq!(
            cleared.expires_datetime().map(|at| at.unix_timestamp()),
            Some(0)
        );
        assert_eq!(cleared.http_only(), Some(true));
        assert_eq!(cleared.path(), Some("/"));
        Ok(())
    }

    #[test]
    fn the_session_cookie_is_httponly_lax_and_secure_when_asked() {
        let policy = policy(true, 3600);
        let cookie = set_session_cookie("t", policy);
        let text = cookie.to_str().unwrap_or_default();
        assert!(text.starts_with("express:sess="), "{text}");
        for attribute in [
            "path=/",
            "httponly",
            "samesite=lax",
            "secure",
            "max-age=3600",
        ] {
            assert!(text.contains(attribute), "{attribute} missing in {text}");
        }
    }
}
