//! The tickets service's settings, from the environment.

use common::settings::{
    Env, HttpSettings, JwtSettings, MongoSettings, NatsSettings, SettingsError,
};

#[derive(Debug, Clone)]
pub struct Settings {
    pub http: HttpSettings,
    pub mongo: MongoSettings,
    pub nats: NatsSettings,
    pub jwt: JwtSettings,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Ok(Self {
            http: HttpSettings::from_env(env)?,
            mongo: MongoSettings::from_env(env, "tickets")?,
            nats: NatsSettings::from_env(env)?,
            jwt: JwtSettings::from_env(env)?,
        })
    }
}
