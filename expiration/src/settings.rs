//! The expiration service's settings, from the environment.

use std::time::Duration;

use common::settings::{Env, HttpSettings, NatsSettings, SettingsError};
use secrecy::{ExposeSecret, SecretString};

#[derive(Debug, Clone)]
pub struct Settings {
    /// No API, but `/healthz` and `/readyz` are served here.
    pub http: HttpSettings,
    pub nats: NatsSettings,
    pub redis: RedisSettings,
    pub scheduler: SchedulerSettings,
}

/// Where the delayed jobs live.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// May embed a password, hence secret.
    pub url: SecretString,
    /// Key prefix of the queue: jobs live in `<queue>:due` and `<queue>:inflight`.
    pub queue: String,
}

/// How the poller works. Not read from the environment: the defaults suit production, and tests
/// shorten them on the struct.
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// How often due jobs are looked for; it bounds how late a job fires.
    pub poll_interval: Duration,
    /// How long a claimed job may stay unpublished before the reaper hands it out again. Far
    /// longer than a publish takes (at most 5 s for the broker's ack).
    pub lease: Duration,
    /// At most this many jobs are claimed per round trip; a full batch is followed by another
    /// claim at once.
    pub batch_size: usize,
    /// A job whose publish failed is due again after this delay.
    pub retry_delay: Duration,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(100),
            lease: Duration::from_secs(30),
            batch_size: 100,
            retry_delay: Duration::from_secs(1),
        }
    }
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Ok(Self {
            http: HttpSettings::from_env(env)?,
            nats: NatsSettings::from_env(env)?,
            redis: RedisSettings::from_env(env)?,
            scheduler: SchedulerSettings::default(),
        })
    }
}

impl RedisSettings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let url = SecretString::from(env.require("REDIS_URL")?);
        // Refuse to start on a URL the client cannot use, without echoing it (it may hold a password).
        redis::Client::open(url.expose_secret()).map_err(|_| SettingsError::Invalid {
            name: "REDIS_URL",
            reason: "not a redis:// or rediss:// URL".into(),
        })?;
        Ok(Self {
            url,
            queue: env.or("EXPIRATION_QUEUE", "order:expiration"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REDIS: (&str, &str) = ("REDIS_URL", "redis://localhost:6379");
    const NATS: (&str, &str) = ("NATS_URL", "nats://localhost:4222");

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn the_queue_defaults_to_the_original_bull_queue_name() -> Result<(), SettingsError> {
        let settings = Settings::from_env(&env(&[REDIS, NATS]))?;
        assert_eq!(settings.redis.queue, "order:expiration");
        assert_eq!(settings.http.port, 3000);
        assert_eq!(settings.scheduler.poll_interval, Duration::from_millis(100));
        Ok(())
    }

    #[test]
    fn the_queue_prefix_can_be_configured() -> Result<(), SettingsError> {
        let settings =
            RedisSettings::from_env(&env(&[REDIS, ("EXPIRATION_QUEUE", "staging:expiration")]))?;
        assert_eq!(settings.queue, "staging:expiration");
        Ok(())
    }

    #[test]
    fn a_missing_redis_url_is_refused() {
        assert_eq!(
            Settings::from_env(&env(&[NATS])).err(),
            Some(SettingsError::Missing("REDIS_URL"))
        );
    }

    #[test]
    fn an_unusable_redis_url_is_refused_without_echoing_it() {
        let err = RedisSettings::from_env(&env(&[("REDIS_URL", "http://user:hunter2@host")]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("REDIS_URL"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}
