//! The client's settings, from the environment.

use common::settings::{Env, HttpSettings, SettingsError};
use reqwest::Url;
use secrecy::SecretString;

#[derive(Debug, Clone)]
pub struct Settings {
    pub http: HttpSettings,
    /// Origin of the APIs as a browser sees them (the ingress in the cluster, the local proxy on a
    /// laptop), without a trailing slash: `/api/...` paths are appended to it.
    pub api_base_url: String,
    /// Stripe's publishable key for Checkout; without it the pay form sends Stripe's test token.
    pub stripe_publishable_key: Option<String>,
    /// The key with which calls to auth vouch for the browser's address (`CLIENT_ADDRESS_KEY`).
    pub client_address_key: Option<SecretString>,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Ok(Self {
            http: HttpSettings::from_env(env)?,
            api_base_url: api_base_url(&env.require("API_BASE_URL")?)?,
            stripe_publishable_key: publishable_key(env.optional("STRIPE_PUBLISHABLE_KEY"))?,
            client_address_key: common::settings::client_address_key(env)?,
        })
    }
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

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::from_env(&Env::from_pairs(pairs.iter().copied()))
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
}
