//! The client's settings, from the environment.

use common::settings::{Env, HttpSettings, SettingsError};
use reqwest::Url;
use secrecy::SecretString;

use crate::csrf::CsrfKey;

#[derive(Debug, Clone)]
pub struct Settings {
    pub http: HttpSettings,
    /// Origin of the APIs as a browser sees them (the ingress in the cluster, the local proxy on a
    /// laptop), without a trailing slash: `/api/...` paths are appended to it.
    pub api_base_url: String,
    /// Stripe's publishable key for the card form (Stripe.js); without it the pay form sends
    /// Stripe's test token.
    pub stripe_publishable_key: Option<String>,
    /// Where the order page loads Stripe.js from (`STRIPE_JS_URL`): Stripe's own URL, or a stub
    /// in the browser tests. Allowed by the Content-Security-Policy, with its origin.
    pub stripe_js_url: Url,
    /// The key with which calls to auth vouch for the browser's address (`CLIENT_ADDRESS_KEY`).
    pub client_address_key: Option<SecretString>,
    /// The secret behind the forms' CSRF tokens (`CSRF_KEY`), the same on every replica.
    pub csrf_key: CsrfKey,
    /// `Secure` on the cookies the client itself sets (`COOKIE_SECURE`, as for auth's session).
    pub cookie_secure: bool,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Ok(Self {
            http: HttpSettings::from_env(env)?,
            api_base_url: api_base_url(&env.require("API_BASE_URL")?)?,
            stripe_publishable_key: publishable_key(env.optional("STRIPE_PUBLISHABLE_KEY"))?,
            stripe_js_url: stripe_js_url(&env.or("STRIPE_JS_URL", DEFAULT_STRIPE_JS_URL))?,
            client_address_key: common::settings::client_address_key(env)?,
            csrf_key: CsrfKey::new(env.require("CSRF_KEY")?)?,
            cookie_secure: env.flag_or("COOKIE_SECURE", false)?,
        })
    }
}

/// Stripe.js, which Stripe asks sites to load from its own address (never bundled).
pub const DEFAULT_STRIPE_JS_URL: &str = "https://js.stripe.com/v3/";

fn stripe_js_url(text: &str) -> Result<Url, SettingsError> {
    let url = Url::parse(text).map_err(|err| SettingsError::Invalid {
        name: "STRIPE_JS_URL",
        reason: format!("{text:?}: {err}"),
    })?;
    // Its origin goes into the Content-Security-Policy header: nothing but an http(s) origin fits.
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(SettingsError::Invalid {
            name: "STRIPE_JS_URL",
            reason: format!("{text:?} must be an http(s) URL"),
        });
    }
    Ok(url)
}

fn api_base_url(text: &str) -> Result<String, SettingsError> {
    let invalid = |reason: String| SettingsError::Invalid {
        name: "API_BASE_URL",
        reason,
    };
    let url = Url::parse(text).map_err(|err| invalid(format!("{text:?}: {err}")))?;
    if !matches!(url.scheme(), "http" | "https")
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(invalid(format!(
            "{text:?} must be an http(s) origin with an optional path, e.g. http://ingress-nginx-controller"
        )));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// The key ends up in every order page, so anything that is not a publishable key (a secret key
/// pasted into the wrong variable) is refused instead of being published.
fn publishable_key(key: Option<String>) -> Result<Option<String>, SettingsError> {
    match key {
        Some(key) if !key.starts_with("pk_") => Err(SettingsError::Invalid {
            name: "STRIPE_PUBLISHABLE_KEY",
            reason: "a publishable key starts with pk_ (never put a secret key here)".into(),
        }),
        key => Ok(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSRF_KEY: &str = "csrf-key-for-the-client-settings-tests";

    /// `pairs` plus a valid CSRF_KEY unless they bring their own.
    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let mut pairs = pairs.to_vec();
        if !pairs.iter().any(|(name, _)| *name == "CSRF_KEY") {
            pairs.push(("CSRF_KEY", CSRF_KEY));
        }
        Settings::from_env(&Env::from_pairs(pairs))
    }

    #[test]
    fn the_api_base_url_is_required() {
        assert_eq!(
            settings(&[]).err(),
            Some(SettingsError::Missing("API_BASE_URL"))
        );
    }

    #[test]
    fn the_api_base_url_loses_its_trailing_slash() -> Result<(), SettingsError> {
        let s = settings(&[("API_BASE_URL", "http://127.0.0.1:8080/")])?;
        assert_eq!(s.api_base_url, "http://127.0.0.1:8080");
        let s = settings(&[("API_BASE_URL", "http://proxy/ticketing/")])?;
        assert_eq!(s.api_base_url, "http://proxy/ticketing");
        assert_eq!(s.stripe_publishable_key, None);
        Ok(())
    }

    #[test]
    fn an_api_base_url_that_is_not_http_is_refused() {
        for bad in [
            "127.0.0.1:8080",
            "ftp://host",
            "http://host/?q=1",
            "not a url",
        ] {
            assert!(
                matches!(
                    settings(&[("API_BASE_URL", bad)]),
                    Err(SettingsError::Invalid {
                        name: "API_BASE_URL",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_publishable_stripe_keys_are_accepted() -> Result<(), SettingsError> {
        let s = settings(&[
            ("API_BASE_URL", "http://x"),
            ("STRIPE_PUBLISHABLE_KEY", "pk_test_123"),
        ])?;
        assert_eq!(s.stripe_publishable_key.as_deref(), Some("pk_test_123"));
        assert!(matches!(
            settings(&[
                ("API_BASE_URL", "http://x"),
                ("STRIPE_PUBLISHABLE_KEY", "sk_test_123")
            ]),
            Err(SettingsError::Invalid {
                name: "STRIPE_PUBLISHABLE_KEY",
                ..
            })
        ));
        Ok(())
    }

    #[test]
    fn stripe_js_comes_from_stripe_unless_an_http_url_is_given() -> Result<(), SettingsError> {
        let s = settings(&[("API_BASE_URL", "http://x")])?;
        assert_eq!(s.stripe_js_url.as_str(), "https://js.stripe.com/v3/");
        let s = settings(&[
            ("API_BASE_URL", "http://x"),
            ("STRIPE_JS_URL", "http://127.0.0.1:8299/stripe-stub.js"),
        ])?;
        assert_eq!(
            s.stripe_js_url.as_str(),
            "http://127.0.0.1:8299/stripe-stub.js"
        );
        for bad in [
            "js.stripe.com/v3",
            "javascript:alert(1)",
            "data:text/javascript,1",
        ] {
            assert!(
                matches!(
                    settings(&[("API_BASE_URL", "http://x"), ("STRIPE_JS_URL", bad)]),
                    Err(SettingsError::Invalid {
                        name: "STRIPE_JS_URL",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        Ok(())
    }

    #[test]
    fn the_csrf_key_is_required_and_must_be_long_enough() {
        let env = |key: &str| {
            Settings::from_env(&Env::from_pairs([
                ("API_BASE_URL", "http://x"),
                ("CSRF_KEY", key),
            ]))
        };
        assert_eq!(env("").err(), Some(SettingsError::Missing("CSRF_KEY")));
        assert!(matches!(
            env("too-short"),
            Err(SettingsError::Invalid {
                name: "CSRF_KEY",
                ..
            })
        ));
        assert!(env(CSRF_KEY).is_ok());
    }

    #[test]
    fn cookies_are_secure_only_when_asked() -> Result<(), SettingsError> {
        assert!(!settings(&[("API_BASE_URL", "http://x")])?.cookie_secure);
        let secure = settings(&[("API_BASE_URL", "http://x"), ("COOKIE_SECURE", "true")])?;
        assert!(secure.cookie_secure);
        Ok(())
    }
}
