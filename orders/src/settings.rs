//! The orders service's settings, from the environment.

use std::time::Duration;

use chrono::TimeDelta;
use common::settings::{BackendSettings, Env, SettingsError};

use crate::sweeper::SweepTiming;

/// The longest expiration window accepted (one week): beyond it an order would hold its ticket for
/// an unreasonable time, and far beyond it the date arithmetic would overflow.
const MAX_EXPIRATION_WINDOW_SECONDS: u64 = 7 * 24 * 3600;

#[derive(Debug, Clone)]
pub struct Settings {
    pub backend: BackendSettings,
    /// How long a new order holds its ticket before the expiration service cancels it.
    pub expiration_window: TimeDelta,
    /// The expiry sweeper behind the expiration service (`EXPIRY_SWEEP_SECONDS`, default 10).
    pub sweep: SweepTiming,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Ok(Self {
            backend: BackendSettings::from_env(env, "orders")?,
            expiration_window: expiration_window(env)?,
            sweep: SweepTiming {
                interval: seconds_between(env, "EXPIRY_SWEEP_SECONDS", 10, 1..=3600)?,
                grace: seconds_between(env, "EXPIRY_SWEEP_GRACE_SECONDS", 10, 0..=3600)?,
            },
        })
    }
}

fn seconds_between(
    env: &Env,
    name: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Duration, SettingsError> {
    env.parse_between(name, default, range)
        .map(Duration::from_secs)
}

fn expiration_window(env: &Env) -> Result<TimeDelta, SettingsError> {
    const NAME: &str = "EXPIRATION_WINDOW_SECONDS";
    let seconds: u64 = env.parse_between(NAME, 60, 1..=MAX_EXPIRATION_WINDOW_SECONDS)?;
    // In range by the check above.
    Ok(TimeDelta::seconds(i64::try_from(seconds).unwrap_or(60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(window: Option<&str>) -> Env {
        let mut pairs = common::testing::BACKEND_ENV.to_vec();
        if let Some(window) = window {
            pairs.push(("EXPIRATION_WINDOW_SECONDS", window));
        }
        Env::from_pairs(pairs)
    }

    #[test]
    fn the_expiration_window_defaults_to_one_minute() -> Result<(), SettingsError> {
        let settings = Settings::from_env(&env(None))?;
        assert_eq!(settings.expiration_window, TimeDelta::seconds(60));
        assert_eq!(settings.backend.mongo.database, "orders");
        Ok(())
    }

    #[test]
    fn the_expiration_window_can_be_configured_within_bounds() {
        assert_eq!(
            Settings::from_env(&env(Some("5"))).map(|s| s.expiration_window),
            Ok(TimeDelta::seconds(5))
        );
        for bad in ["0", "-3", "soon", "604801"] {
            assert!(
                matches!(
                    Settings::from_env(&env(Some(bad))),
                    Err(SettingsError::Invalid {
                        name: "EXPIRATION_WINDOW_SECONDS",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn every_required_variable_is_enforced() {
        for missing in ["MONGO_URL", "NATS_URL", "JWT_KEY"] {
            let pairs: Vec<(&str, &str)> = common::testing::BACKEND_ENV
                .into_iter()
                .filter(|(name, _)| *name != missing)
                .collect();
            assert_eq!(
                Settings::from_env(&Env::from_pairs(pairs)).err(),
                Some(SettingsError::Missing(missing))
            );
        }
    }
}
