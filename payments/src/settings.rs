//! The payments service's settings, from the environment.

use std::time::Duration;

use common::settings::{BackendSettings, Env, SettingsError};
use secrecy::SecretString;

use crate::saga::ReconcileTiming;

/// Stripe's production API.
pub const DEFAULT_STRIPE_API_BASE: &str = "https://api.stripe.com";

/// How long one Stripe request may take before its outcome is `unknown` (left to the reconciler).
/// Well above Stripe's usual latency, and below what waits for it: the client's payment request
/// timeout (20 s), the ingress's (60 s), and Kubernetes' grace period minus the preStop sleep
/// (30 - 5 s), so a request, or a pod stopping, never gives up on a charge still in flight.
pub const DEFAULT_STRIPE_TIMEOUT: Duration = Duration::from_secs(8);

#[derive(Debug, Clone)]
pub struct Settings {
    pub backend: BackendSettings,
    pub stripe: StripeSettings,
    /// When open payments are asked about again; derived from the Stripe timeout.
    pub reconcile: ReconcileTiming,
}

/// Where and as whom charges are made.
#[derive(Debug, Clone)]
pub struct StripeSettings {
    /// The secret API key (`sk_...`).
    pub key: SecretString,
    /// Base URL of the API, always ending in `/` (the client appends `v1/...`).
    pub api_base: String,
    /// Per-request timeout (`STRIPE_TIMEOUT_MS`, default 8000).
    pub timeout: Duration,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let stripe = StripeSettings::from_env(env)?;
        Ok(Self {
            backend: BackendSettings::from_env(env, "payments")?,
            reconcile: ReconcileTiming::for_stripe_timeout(stripe.timeout),
            stripe,
        })
    }
}

impl StripeSettings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Ok(Self {
            key: SecretString::from(env.require("STRIPE_KEY")?),
            api_base: api_base(env.or("STRIPE_API_BASE", DEFAULT_STRIPE_API_BASE))?,
            timeout: stripe_timeout(env)?,
        })
    }
}

/// `STRIPE_TIMEOUT_MS`: at least 100 ms, at most 60 s (Stripe's own advice is "tens of seconds").
fn stripe_timeout(env: &Env) -> Result<Duration, SettingsError> {
    let default_ms = u64::try_from(DEFAULT_STRIPE_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
    let ms: u64 = env.parse_between("STRIPE_TIMEOUT_MS", default_ms, 100..=60_000)?;
    Ok(Duration::from_millis(ms))
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

    const KEY: (&str, &str) = ("STRIPE_KEY", "unit-test-stripe-key");

    fn env(pairs: &[(&str, &str)]) -> Env {
        let mut all = common::testing::BACKEND_ENV.to_vec();
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
        let settings = Settings::from_env(&env(&[KEY]))?;
        assert_eq!(settings.backend.mongo.database, "payments");
        assert_eq!(settings.stripe.api_base, "https://api.stripe.com/");
        assert_eq!(settings.stripe.key.expose_secret(), "unit-test-stripe-key");
        assert_eq!(settings.stripe.timeout, DEFAULT_STRIPE_TIMEOUT);
        Ok(())
    }

    #[test]
    fn the_stripe_timeout_is_in_milliseconds_and_sets_the_reconcilers_horizon()
    -> Result<(), SettingsError> {
        let settings = Settings::from_env(&env(&[("STRIPE_KEY", "k")]))?;
        assert_eq!(settings.stripe.timeout, Duration::from_secs(8));
        assert_eq!(settings.reconcile.horizon, Duration::from_secs(13));
        let settings =
            Settings::from_env(&env(&[("STRIPE_KEY", "k"), ("STRIPE_TIMEOUT_MS", "1500")]))?;
        assert_eq!(settings.stripe.timeout, Duration::from_millis(1500));
        assert_eq!(settings.reconcile.horizon, Duration::from_millis(6500));
        for bad in ["0", "99", "60001", "soon", "-5"] {
            assert!(
                matches!(
                    Settings::from_env(&env(&[("STRIPE_KEY", "k"), ("STRIPE_TIMEOUT_MS", bad)])),
                    Err(SettingsError::Invalid {
                        name: "STRIPE_TIMEOUT_MS",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        Ok(())
    }

    #[test]
    fn the_api_base_is_normalised_to_end_in_a_slash() -> Result<(), SettingsError> {
        for (given, normalised) in [
            ("http://127.0.0.1:12111", "http://127.0.0.1:12111/"),
            ("https://proxy.local/stripe/", "https://proxy.local/stripe/"),
        ] {
            let settings = Settings::from_env(&env(&[KEY, ("STRIPE_API_BASE", given)]))?;
            assert_eq!(settings.stripe.api_base, normalised);
        }
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
            let result = Settings::from_env(&env(&[KEY, ("STRIPE_API_BASE", bad)]));
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
