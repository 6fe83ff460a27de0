//! Typed settings read from the environment. Every variable name appears here (or in a service's own
//! `settings.rs`) as a literal in `require`, `optional` or `or`, so the name is easy to find.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("missing required environment variable {0}")]
    Missing(&'static str),
    #[error("environment variable {name} has an invalid value: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// A snapshot of the environment (the process's, or a map in tests).
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars().collect(),
        }
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// A variable that must be present and not blank.
    pub fn require(&self, name: &'static str) -> Result<String, SettingsError> {
        self.optional(name).ok_or(SettingsError::Missing(name))
    }

    /// A variable that may be absent; blank counts as absent.
    pub fn optional(&self, name: &'static str) -> Option<String> {
        self.vars
            .get(name)
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty())
    }

    /// A variable with a default.
    pub fn or(&self, name: &'static str, default: &str) -> String {
        self.optional(name).unwrap_or_else(|| default.to_owned())
    }

    /// A variable parsed into `T`, with a default when absent.
    pub fn parse_or<T>(&self, name: &'static str, default: T) -> Result<T, SettingsError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.optional(name) {
            None => Ok(default),
            Some(text) => text.parse().map_err(|err: T::Err| SettingsError::Invalid {
                name,
                reason: format!("{text:?}: {err}"),
            }),
        }
    }

    /// A variable parsed into `T`, with a default when absent, refused outside `range`.
    pub fn parse_between<T>(
        &self,
        name: &'static str,
        default: T,
        range: RangeInclusive<T>,
    ) -> Result<T, SettingsError>
    where
        T: FromStr + PartialOrd + std::fmt::Display,
        T::Err: std::fmt::Display,
    {
        let value = self.parse_or(name, default)?;
        if !range.contains(&value) {
            return Err(SettingsError::Invalid {
                name,
                reason: format!(
                    "{value} is not between {} and {}",
                    range.start(),
                    range.end()
                ),
            });
        }
        Ok(value)
    }

    /// A boolean flag: `true/false`, `1/0`, `yes/no`.
    pub fn flag_or(&self, name: &'static str, default: bool) -> Result<bool, SettingsError> {
        match self.optional(name).map(|v| v.to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if matches!(v.as_str(), "true" | "1" | "yes") => Ok(true),
            Some(v) if matches!(v.as_str(), "false" | "0" | "no") => Ok(false),
            Some(v) => Err(SettingsError::Invalid {
                name,
                reason: format!("{v:?} is not a boolean (true/false)"),
            }),
        }
    }
}

/// The usual port of a Prometheus exporter: where `GET /metrics` is served unless `METRICS_PORT`
/// says otherwise.
pub const DEFAULT_METRICS_PORT: u16 = 9464;

/// Where the HTTP server listens, and its metrics beside it.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub host: IpAddr,
    pub port: u16,
    /// `GET /metrics` only, on the same host: a port of its own, which no ingress routes to.
    pub metrics_port: u16,
}

impl HttpSettings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Ok(Self {
            host: env.parse_or("HOST", IpAddr::from([0, 0, 0, 0]))?,
            port: env.parse_or("PORT", 3000)?,
            metrics_port: env.parse_or("METRICS_PORT", DEFAULT_METRICS_PORT)?,
        })
    }

    /// Loopback on a random free port: what tests use.
    pub fn ephemeral() -> Self {
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 0,
            metrics_port: 0,
        }
    }
}

/// The service's own MongoDB database.
#[derive(Debug, Clone)]
pub struct MongoSettings {
    /// May embed credentials, hence secret.
    pub url: SecretString,
    pub database: String,
    /// How long one operation may take before it fails as unavailable (503, a retried event).
    pub operation_timeout: Duration,
    /// How many database operations of requests may be in flight at once per process
    /// (`MONGO_REQUEST_CONCURRENCY`, 1 to 1024); the others wait their turn in the service (see
    /// `store/lane.rs`). Event handlers are not counted.
    pub request_concurrency: usize,
}

impl MongoSettings {
    pub fn from_env(env: &Env, default_database: &str) -> Result<Self, SettingsError> {
        Ok(Self {
            url: SecretString::from(env.require("MONGO_URL")?),
            database: env.or("MONGO_DB", default_database),
            operation_timeout: Duration::from_millis(env.parse_or(
                "MONGO_OPERATION_TIMEOUT_MS",
                crate::store::DEFAULT_OPERATION_TIMEOUT_MS,
            )?),
            request_concurrency: env.parse_between(
                "MONGO_REQUEST_CONCURRENCY",
                crate::store::DEFAULT_REQUEST_CONCURRENCY,
                1..=1024,
            )?,
        })
    }
}

/// The NATS JetStream event bus. Subject prefix and stream name let tests run in isolation.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    pub url: String,
    pub stream: String,
    pub subject_prefix: String,
    /// How many JetStream servers keep each message of the streams (`NATS_STREAM_REPLICAS`, 1 to
    /// 5): 3 in a 3-node cluster, so that losing a node loses no event. A stream made with fewer
    /// is raised to it at start.
    pub stream_replicas: usize,
    /// How many events of one subject each listener handles at once (`EVENT_HANDLERS_PER_SUBJECT`,
    /// 1 to 256).
    pub handlers_per_subject: usize,
}

/// Events of one subject a listener handles at once unless `EVENT_HANDLERS_PER_SUBJECT` says.
pub const DEFAULT_HANDLERS_PER_SUBJECT: usize = 16;

impl NatsSettings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        // JetStream keeps 1 to 5 replicas of a stream.
        let stream_replicas = env.parse_between("NATS_STREAM_REPLICAS", 1_usize, 1..=5)?;
        let handlers_per_subject = env.parse_between(
            "EVENT_HANDLERS_PER_SUBJECT",
            DEFAULT_HANDLERS_PER_SUBJECT,
            1..=256,
        )?;
        Ok(Self {
            url: env.require("NATS_URL")?,
            stream: env.or("NATS_STREAM", "ticketing"),
            subject_prefix: env.optional("NATS_SUBJECT_PREFIX").unwrap_or_default(),
            stream_replicas,
            handlers_per_subject,
        })
    }

    /// Settings for a stream of its own (tests, the fault suite): one replica.
    pub fn isolated(url: String, stream: String, subject_prefix: String) -> Self {
        Self {
            url,
            stream,
            subject_prefix,
            stream_replicas: 1,
            handlers_per_subject: DEFAULT_HANDLERS_PER_SUBJECT,
        }
    }
}

/// The key every backend uses to verify session tokens.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub key: SecretString,
}

/// The shortest secret key accepted (`JWT_KEY`, `CLIENT_ADDRESS_KEY`, the client's `CSRF_KEY`):
/// 256 bits. RFC 7518 asks that much of an HS256 key, a shorter one can be brute-forced from any
/// session cookie, and HKDF (the CSRF cookie key) needs it too.
pub const KEY_MIN_BYTES: usize = 32;

/// `key`, the value of the secret variable `name`, refused (naming it and its length) when shorter
/// than [`KEY_MIN_BYTES`].
pub fn long_key(name: &'static str, key: String) -> Result<SecretString, SettingsError> {
    if key.len() < KEY_MIN_BYTES {
        return Err(SettingsError::Invalid {
            name,
            reason: format!(
                "it is {} bytes long; it must be at least {KEY_MIN_BYTES} \
                 (generate one with `openssl rand -base64 32`)",
                key.len()
            ),
        });
    }
    Ok(SecretString::from(key))
}

impl JwtSettings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Ok(Self {
            key: long_key("JWT_KEY", env.require("JWT_KEY")?)?,
        })
    }
}

/// What every backend with its own database on the event bus reads (tickets, orders, payments):
/// where it listens, its database (`default_database` unless `MONGO_DB` says otherwise), the bus
/// and the session key.
#[derive(Debug, Clone)]
pub struct BackendSettings {
    pub http: HttpSettings,
    pub mongo: MongoSettings,
    pub nats: NatsSettings,
    pub jwt: JwtSettings,
}

impl BackendSettings {
    pub fn from_env(env: &Env, default_database: &str) -> Result<Self, SettingsError> {
        Ok(Self {
            http: HttpSettings::from_env(env)?,
            mongo: MongoSettings::from_env(env, default_database)?,
            nats: NatsSettings::from_env(env)?,
            jwt: JwtSettings::from_env(env)?,
        })
    }
}

/// `CLIENT_ADDRESS_KEY` (client and auth; see `crate::client_address`), optional: without it the
/// client vouches for nothing and auth ignores the vouched-for address.
pub fn client_address_key(env: &Env) -> Result<Option<SecretString>, SettingsError> {
    env.optional("CLIENT_ADDRESS_KEY")
        .map(|key| long_key("CLIENT_ADDRESS_KEY", key))
        .transpose()
}

/// Where spans are exported: `OTEL_EXPORTER_OTLP_ENDPOINT`, the base URL of an OpenTelemetry
/// collector speaking OTLP over HTTP/protobuf (spans go to its `/v1/traces`). Absent: nothing is
/// exported (trace ids are still made, passed on and logged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TracingSettings {
    pub otlp_endpoint: Option<String>,
}

impl TracingSettings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let name = "OTEL_EXPORTER_OTLP_ENDPOINT";
        let Some(endpoint) = env.optional(name) else {
            return Ok(Self::default());
        };
        let uri: axum::http::Uri = endpoint.parse().map_err(|err| SettingsError::Invalid {
            name,
            reason: format!("{endpoint:?}: {err}"),
        })?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(SettingsError::Invalid {
                name,
                reason: format!("{endpoint:?} is not an http(s) URL"),
            });
        }
        Ok(Self {
            otlp_endpoint: Some(endpoint),
        })
    }
}

/// Seconds from an environment variable, e.g. `EXPIRATION_WINDOW_SECONDS`.
pub fn seconds_or(env: &Env, name: &'static str, default: u64) -> Result<Duration, SettingsError> {
    env.parse_or(name, default).map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_required_variable_is_named_in_the_error() {
        let env = Env::from_pairs([("MONGO_URL", "mongodb://x")]);
        assert_eq!(
            JwtSettings::from_env(&env).err().map(|e| e.to_string()),
            Some("missing required environment variable JWT_KEY".into())
        );
    }

    #[test]
    fn a_jwt_key_shorter_than_32_bytes_is_refused_with_its_length() {
        let env = Env::from_pairs([("JWT_KEY", "k".repeat(31))]);
        assert_eq!(
            JwtSettings::from_env(&env).err().map(|e| e.to_string()),
            Some(
                "environment variable JWT_KEY has an invalid value: it is 31 bytes long; it must \
                 be at least 32 (generate one with `openssl rand -base64 32`)"
                    .into()
            )
        );
        let env = Env::from_pairs([("JWT_KEY", "k".repeat(32))]);
        assert!(JwtSettings::from_env(&env).is_ok());
    }

    #[test]
    fn a_short_client_address_key_is_refused_and_none_is_allowed() {
        let short = Env::from_pairs([("CLIENT_ADDRESS_KEY", "short")]);
        assert!(client_address_key(&short).is_err());
        let long = Env::from_pairs([("CLIENT_ADDRESS_KEY", "k".repeat(32))]);
        assert!(matches!(client_address_key(&long), Ok(Some(_))));
        let none = Env::from_pairs::<&str, &str>([]);
        assert!(matches!(client_address_key(&none), Ok(None)));
    }

    /// Checks a numeric NATS setting: `default` when `name` is absent, `accepted` parsed, each of
    /// `refused` refused naming `name`.
    fn check_nats_number(
        name: &'static str,
        field: fn(&NatsSettings) -> usize,
        default: usize,
        accepted: (&str, usize),
        refused: &[&str],
    ) {
        let read = |value: Option<&str>| {
            let mut pairs = vec![("NATS_URL", "nats://x")];
            pairs.extend(value.map(|v| (name, v)));
            NatsSettings::from_env(&Env::from_pairs(pairs)).map(|s| field(&s))
        };
        assert_eq!(read(None), Ok(default), "{name}");
        assert_eq!(read(Some(accepted.0)), Ok(accepted.1), "{name}");
        for value in refused {
            assert!(
                matches!(
                    read(Some(value)),
                    Err(SettingsError::Invalid { name: refused_name, .. }) if refused_name == name
                ),
                "{name}={value}"
            );
        }
    }

    #[test]
    fn the_stream_keeps_one_replica_unless_told_and_never_more_than_jetstream_allows() {
        check_nats_number(
            "NATS_STREAM_REPLICAS",
            |s| s.stream_replicas,
            1,
            ("3", 3),
            &["0", "6", "three"],
        );
    }

    #[test]
    fn listeners_handle_sixteen_events_of_a_subject_at_once_unless_told() {
        check_nats_number(
            "EVENT_HANDLERS_PER_SUBJECT",
            |s| s.handlers_per_subject,
            16,
            ("64", 64),
            &["0", "257", "many"],
        );
    }

    #[test]
    fn a_number_outside_its_range_is_refused_with_the_range_and_the_default_applies_when_absent() {
        let range = |value: Option<&str>| {
            let pairs: Vec<(&str, &str)> = value.map(|v| ("N", v)).into_iter().collect();
            Env::from_pairs(pairs).parse_between("N", 10_u64, 5..=20)
        };
        assert_eq!(range(None), Ok(10));
        assert_eq!(range(Some("5")), Ok(5));
        assert_eq!(range(Some("20")), Ok(20));
        assert_eq!(
            range(Some("21")),
            Err(SettingsError::Invalid {
                name: "N",
                reason: "21 is not between 5 and 20".to_owned(),
            })
        );
        assert!(matches!(
            range(Some("x")),
            Err(SettingsError::Invalid { name: "N", .. })
        ));
    }

    #[test]
    fn a_blank_required_variable_counts_as_missing() {
        let env = Env::from_pairs([("JWT_KEY", "  ")]);
        assert_eq!(
            env.require("JWT_KEY"),
            Err(SettingsError::Missing("JWT_KEY"))
        );
    }

    #[test]
    fn defaults_apply_when_optional_variables_are_absent() -> Result<(), SettingsError> {
        let env = Env::from_pairs([("MONGO_URL", "mongodb://x"), ("NATS_URL", "nats://y")]);
        let http = HttpSettings::from_env(&env)?;
        assert_eq!((http.port, http.metrics_port), (3000, 9464));
        assert_eq!(MongoSettings::from_env(&env, "auth")?.database, "auth");
        let nats = NatsSettings::from_env(&env)?;
        assert_eq!(
            (nats.stream.as_str(), nats.subject_prefix.as_str()),
            ("ticketing", "")
        );
        Ok(())
    }

    #[test]
    fn spans_are_exported_only_to_an_http_endpoint_that_is_set() {
        let none = Env::from_pairs([("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]);
        assert_eq!(
            TracingSettings::from_env(&none),
            Ok(TracingSettings::default())
        );
        let set = Env::from_pairs([("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]);
        assert_eq!(
            TracingSettings::from_env(&set).map(|s| s.otlp_endpoint),
            Ok(Some("http://collector:4318".to_owned()))
        );
        for bad in ["collector:4318", "grpc://collector:4317", "http://"] {
            let env = Env::from_pairs([("OTEL_EXPORTER_OTLP_ENDPOINT", bad)]);
            assert!(
                matches!(
                    TracingSettings::from_env(&env),
                    Err(SettingsError::Invalid {
                        name: "OTEL_EXPORTER_OTLP_ENDPOINT",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_unparseable_value_is_rejected_with_its_name() {
        let env = Env::from_pairs([("PORT", "eighty")]);
        let err = HttpSettings::from_env(&env)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("PORT"), "{err}");
        assert_eq!(
            Env::from_pairs([("COOKIE_SECURE", "maybe")]).flag_or("COOKIE_SECURE", false),
            Err(SettingsError::Invalid {
                name: "COOKIE_SECURE",
                reason: "\"maybe\" is not a boolean (true/false)".into()
            })
        );
    }
}
