//! MongoDB helpers: connecting, id parsing, error classification, and the versioned-record store
//! with its outbox (see `shared/CONSISTENCY.md`: exclusivity comes from unique keys at insert time).

use std::time::Duration;

use anyhow::Context as _;
use mongodb::bson::doc;
use mongodb::bson::oid::ObjectId;
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::ClientOptions;
use mongodb::{Client, Database};
use secrecy::ExposeSecret;

use crate::error::ApiError;
use crate::settings::MongoSettings;

mod versioned;

pub use versioned::{
    Committed, Decision, PendingEvent, RelayPass, RelayTiming, ReplicaUpdate, StoreError,
    VersionedRecord, VersionedStore,
};

/// MongoDB's duplicate key error code.
pub const DUPLICATE_KEY: i32 = 11000;

/// Connects lazily (the driver connects on first use) with short timeouts so that an unreachable
/// database fails requests quickly (503) instead of hanging them.
pub async fn connect(settings: &MongoSettings, app_name: &str) -> anyhow::Result<Database> {
    let mut options = ClientOptions::parse(settings.url.expose_secret())
        .await
        .context("parsing MONGO_URL")?;
    options.app_name = Some(app_name.to_owned());
    options.server_selection_timeout = Some(Duration::from_secs(3));
    options.connect_timeout = Some(Duration::from_secs(3));
    options.max_pool_size = Some(32);
    let client = Client::with_options(options).context("creating the MongoDB client")?;
    Ok(client.database(&settings.database))
}

/// Whether the database answers (for `/readyz`).
pub async fn ping(db: &Database) -> bool {
    db.run_command(doc! { "ping": 1 }).await.is_ok()
}

/// Parses an ObjectId-like path or body id. A malformed id cannot name anything: 404.
pub fn parse_id(id: &str) -> Result<ObjectId, ApiError> {
    parse_object_id(id).ok_or(ApiError::NotFound)
}

/// 24 lowercase or uppercase hex characters.
pub fn parse_object_id(id: &str) -> Option<ObjectId> {
    if id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        ObjectId::parse_str(id).ok()
    } else {
        None
    }
}

/// Whether an insert failed because a unique key (`_id` or a unique index) is taken.
pub fn is_duplicate_key(err: &mongodb::error::Error) -> bool {
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        ErrorKind::Command(e) => e.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(e) => e
            .write_errors
            .as_ref()
            .is_some_and(|errors| errors.iter().any(|e| e.code == DUPLICATE_KEY)),
        _ => false,
    }
}

/// Whether the error means the database cannot be reached (as opposed to a bad command).
pub fn is_unavailable(err: &mongodb::error::Error) -> bool {
    matches!(
        err.kind.as_ref(),
        ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_24_hex_characters_make_an_id() {
        assert!(parse_object_id("64b7f0c2a1b2c3d4e5f60718").is_some());
        for bad in [
            "",
            "abc",
            "64b7f0c2a1b2c3d4e5f6071",
            "64b7f0c2a1b2c3d4e5f60718a",
            "zzzzzzzzzzzzzzzzzzzzzzzz",
            "12-char-str!",
        ] {
            assert!(parse_object_id(bad).is_none(), "{bad}");
        }
        assert!(matches!(parse_id("nope"), Err(ApiError::NotFound)));
    }
}
