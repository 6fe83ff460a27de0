//! The tickets service's settings, from the environment.

use common::settings::{BackendSettings, Env, SettingsError};

#[derive(Debug, Clone)]
pub struct Settings {
    /// Nothing of its own: what every backend reads.
    pub backend: BackendSettings,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        Ok(Self {
            backend: BackendSettings::from_env(env, "tickets")?,
        })
    }
}
