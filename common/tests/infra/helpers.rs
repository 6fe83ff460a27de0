use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use common::bus::{EventBus, ListenerOptions};
use common::events::{Event, Id};
use common::settings::{MongoSettings, NatsSettings};
use common::store::VersionedRecord;
use common::testing::{Observer, unique_suffix};
use mongodb::Database;
use mongodb::bson::Bson;
use mongodb::bson::oid::ObjectId;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use common::testing::drain;

fn infra(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests through scripts/test.sh"))
}

pub async fn fresh_database() -> Database {
    // Every test's client records its filters (`common::store::query_log`), per database.
    common::store::query_log::enable();
    let settings = MongoSettings {
        url: SecretString::from(infra("MONGO_URL")),
        database: format!("common_{}", unique_suffix()),
        operation_timeout: Duration::from_millis(common::store::DEFAULT_OPERATION_TIMEOUT_MS),
        request_concurrency: common::store::DEFAULT_REQUEST_CONCURRENCY,
    };
    common::store::connect(&settings, "common-tests")
        .await
        .expect("mongo client")
}

pub fn fresh_nats_settings() -> NatsSettings {
    let suffix = unique_suffix();
    NatsSettings::isolated(
        infra("NATS_URL"),
        format!("test_{suffix}"),
        format!("t{suffix}."),
    )
}

pub async fn bus(settings: &NatsSettings) -> EventBus {
    EventBus::connect(settings, "common-tests")
        .await
        .expect("NATS connection")
}

/// A listener of `group` (the tests here are about queue groups) that acks everything and
/// forwards what it receives.
pub async fn observe<E: Event>(
    bus: &EventBus,
    group: &str,
    shutdown: &CancellationToken,
) -> Observer<E> {
    Observer::listen(bus, ListenerOptions::new(group), shutdown).await
}

/// The id of a made-up record called `label`: the same label always gives the same id, different
/// labels different ids, so tests can name records and still send well-formed events.
pub fn named_id(label: &str) -> Id {
    let mut bytes = [0u8; 12];
    for (salt, chunk) in bytes.chunks_mut(4).enumerate() {
        let mut hasher = DefaultHasher::new();
        (salt, label).hash(&mut hasher);
        chunk.copy_from_slice(&hasher.finish().to_be_bytes()[..4]);
    }
    ObjectId::from_bytes(bytes).into()
}

/// The versioned record of the store tests: who wrote each version, and a field with a unique
/// index (`claim`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counter {
    #[serde(rename = "_id")]
    pub id: String,
    pub version: i64,
    /// Who made each change, in order: lost updates would show up as missing writers.
    pub writers: Vec<String>,
    pub claim: String,
}

impl VersionedRecord for Counter {
    fn key(&self) -> Bson {
        Bson::String(self.id.clone())
    }
    fn record_id(&self) -> String {
        self.id.clone()
    }
    fn version(&self) -> i64 {
        self.version
    }
    fn is_final(&self) -> bool {
        self.writers
            .last()
            .is_some_and(|writer| writer == FINAL_WRITER)
    }
}

/// The writer whose change ends a [`Counter`]'s history (as payment ends an order's).
pub const FINAL_WRITER: &str = "final";

pub fn counter(id: &str, claim: &str) -> Counter {
    Counter {
        id: id.into(),
        version: 0,
        writers: Vec::new(),
        claim: claim.into(),
    }
}
