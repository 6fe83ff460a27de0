use std::time::Duration;

use common::bus::{EventBus, ListenerOptions, Outcome, listen};
use std::hash::{DefaultHasher, Hash, Hasher};

use common::events::{Event, Id};
use common::settings::{MongoSettings, NatsSettings};
use mongodb::Database;
use mongodb::bson::oid::ObjectId;
use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn infra(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests through scripts/test.sh"))
}

fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_owned()
}

pub async fn fresh_database() -> Database {
    let settings = MongoSettings {
        url: SecretString::from(infra("MONGO_URL")),
        database: format!("common_{}", suffix()),
        operation_timeout: Duration::from_millis(common::store::DEFAULT_OPERATION_TIMEOUT_MS),
    };
    common::store::connect(&settings, "common-tests")
        .await
        .expect("mongo client")
}

pub fn fresh_nats_settings() -> NatsSettings {
    let suffix = suffix();
    NatsSettings {
        url: infra("NATS_URL"),
        stream: format!("test_{suffix}"),
        subject_prefix: format!("t{suffix}."),
    }
}

pub async fn bus(settings: &NatsSettings) -> EventBus {
    EventBus::connect(settings, "common-tests")
        .await
        .expect("NATS connection")
}

/// A listener that acks everything and forwards what it receives.
pub async fn observe<E: Event + Clone>(
    bus: &EventBus,
    group: &str,
    shutdown: &CancellationToken,
) -> mpsc::UnboundedReceiver<E> {
    let (tx, rx) = mpsc::unbounded_channel();
    listen::<E, _, _>(
        bus,
        ListenerOptions::new(group),
        shutdown.clone(),
        move |event, _| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(event);
                Ok(Outcome::Ack)
            }
        },
    )
    .await
    .expect("listener starts");
    rx
}

/// Everything that arrives within `quiet` of the previous message (or of the start).
pub async fn drain<E>(rx: &mut mpsc::UnboundedReceiver<E>, quiet: Duration) -> Vec<E> {
    let mut all = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(quiet, rx.recv()).await {
        all.push(event);
    }
    all
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
