//! The payments service's settings, from the environment.

use std::time::Duration;

use common::settings::{
    Env, HttpSettings, JwtSettings, MongoSettings, NatsSettings, SettingsError,
};
use secrecy::SecretString;

/// Stripe's production API.
pub const DEFAULT_STRIPE_API_BASE: &str = "https://api.stripe.com";

/// How long one charge request may take before the payment is answered 502. Well above Stripe's
/// usual latency, well below the ingress's request timeout.
pub const DEFAULT_STRIPE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Settings {
    pub http: HttpSettings,
    pub mongo: MongoSettings,
    pub nats: NatsSettings,
    pub jwt: JwtSettings,
    pub stripe: StripeSettings,
}

/// Where and as whom charges are made.
#[derive(Debug, Clone)]
pub struct StripeSettings {
    /// The secret API key (`sk_...`).
    pub key: SecretString,
    /// Base URL of the API, always ending in `/` (the client appends `v1/...`).
    pub api_base: String,
    /// Per-request timeout. Not an environment variable: tests shorten it on the struct.
    pub timeout: Duration,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Ok(Self {
            http: HttpSettings::from_env(env)?,
            mongo: MongoSettings::from_env(env, "payments")?,
            nats: NatsSettings::from_env(env)?,
            jwt: JwtSettings::from_env(env)?,
            stripe: StripeSettings::from_env(env)?,
        })
    }
}

impl StripeSettings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Ok(Self {
            key: SecretString::from(env.require("STRIPE_KEY")?),
            api_base: api_base(env.or("STRIPE_API_BASE", DEFAULT_STRIPE_API_BASE))?,
            timeout: DEFAULT_STRIPE_TIMEOUT,
        })
    }
}

/// An http(s) URL with a host, normalised to end in `/`.
fn api_base(url: String) -> Result<String, SettingsError> {
    let invalid = |reason: &str| SettingsError::Invalid {
        name: "STRIPE_API_BASE",
        reason: format!("{url:?} {reason}"),
    };
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| invalid("must start with https:// or http://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(invalid("has no host"));
    }
    if url.contains(['?', '#']) {
        return Err(invalid("must not have a query or fragment"));
    }
    if url.ends_with('/') {
        Ok(url)
    } else {
        Ok(format!("{url}/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn env(pairs: &[(&str, &str)]) -> Env {
        let mut all = vec![
            ("MONGO_URL", "mongodb://x"),
            ("NATS_URL", "nats://y"),
            ("JWT_KEY", "k"),
        ];
        all.extend_from_slice(pairs);
        Env::from_pairs(all)
    }

    #[test]
    fn the_stripe_key_is_required() {
        assert_eq!(
            Settings::from_env(&env(&[])).err(),
            Some(SettingsError::Missing("STRIPE_KEY"))
        );
    }

    #[test]
    fn defaults_are_the_payments_database_and_the_real_stripe_api() -> Result<(), SettingsError> {
        let settings = Settings::from_env(&env(&[("STRIPE_KEY", "unit-test-stripe-key")]))?;
        assert_eq!(settings.mongo.database, "payments");
        assert_eq!(settings.stripe.api_base, "https://api.stripe.com/");
        assert_eq!(settings.stripe.key.expose_secret(), "unit-test-stripe-key");
        assert_eq!(settings.stripe.timeout, DEFAULT_STRIPE_TIMEOUT);
        Ok(())
    }

    #[test]
    fn the_api_base_is_normalised_to_end_in_a_slash() -> Result<(), SettingsError> {
        let settings = Settings::from_env(&env(&[
            ("STRIPE_KEY", "unit-test-stripe-key"),
            ("STRIPE_API_BASE", "http://127.0.0.1:12111"),
        ]))?;
        assert_eq!(settings.stripe.api_base, "http://127.0.0.1:12111/");
        let settings = Settings::from_env(&env(&[
            ("STRIPE_KEY", "unit-test-stripe-key"),
            ("STRIPE_API_BASE", "https://proxy.local/stripe/"),
        ]))?;
        assert_eq!(settings.stripe.api_base, "https://proxy.local/stripe/");
        Ok(())
    }

    #[test]
    fn an_api_base_that_is_not_an_http_url_is_refused() {
        for bad in [
            "api.stripe.com",
            "ftp://x",
            "https://",
            "http:///v1",
            "https://x/?a=1",
        ] {
            let result = Settings::from_env(&env(&[
                ("STRIPE_KEY", "unit-test-stripe-key"),
                ("STRIPE_API_BASE", bad),
            ]));
            assert!(
                matches!(
                    result,
                    Err(SettingsError::Invalid {
                        name: "STRIPE_API_BASE",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }
}
