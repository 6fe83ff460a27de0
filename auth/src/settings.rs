//! The auth service's settings, from the environment.

use std::time::Duration;

use common::settings::{Env, HttpSettings, JwtSettings, MongoSettings, SettingsError, seconds_or};
use secrecy::SecretString;

#[derive(Debug, Clone)]
pub struct Settings {
    pub http: HttpSettings,
    pub mongo: MongoSettings,
    pub jwt: JwtSettings,
    /// Lifetime of a session token (and of its cookie).
    pub token_ttl: Duration,
    /// Mark the session cookie `Secure` (production, behind TLS).
    pub cookie_secure: bool,
    /// Signup and signin attempts per client address per minute (0: unlimited).
    pub rate_limit_per_minute: u32,
    /// The key with which the web client vouches for the browser addresses it forwards.
    pub client_address_key: Option<SecretString>,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Ok(Self {
            http: HttpSettings::from_env(env)?,
            mongo: MongoSettings::from_env(env, "auth")?,
            jwt: JwtSettings::from_env(env)?,
            token_ttl: seconds_or(env, "JWT_TTL_SECONDS", 24 * 3600)?,
            cookie_secure: env.flag_or("COOKIE_SECURE", false)?,
            rate_limit_per_minute: env.parse_or("AUTH_RATE_LIMIT_PER_MINUTE", 30)?,
            client_address_key: common::settings::client_address_key(env)?,
        })
    }
}
