//! MongoDB helpers: connecting, id parsing, error classification, and the versioned-record store
//! with its outbox (see `shared/CONSISTENCY.md`: exclusivity comes from unique keys at insert time).

use std::future::IntoFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use futures::{FutureExt as _, TryStreamExt as _};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};
use secrecy::ExposeSecret;

use crate::settings::MongoSettings;

mod group_commit;
mod lane;
mod outbox;
#[cfg(feature = "testing")]
pub mod query_log;
mod versioned;

pub use lane::{DEFAULT_REQUEST_CONCURRENCY, RequestLane};
pub use outbox::{RelayPass, RelayTiming};
pub use versioned::{
    Committed, Decision, PendingEvent, Premark, ReplicaUpdate, Settling, StoreError,
    VersionedRecord, VersionedStore,
};

/// One document per finished one-time data migration of a database (`{_id: <name>, at}`).
pub const MIGRATIONS_COLLECTION: &str = "migrations";

/// MongoDB's duplicate key error code.
pub const DUPLICATE_KEY: i32 = 11000;

/// How long (ms) one database operation may take when `MONGO_OPERATION_TIMEOUT_MS` is not set.
pub const DEFAULT_OPERATION_TIMEOUT_MS: u64 = 5_000;
/// Connections per service to the database unless `MONGO_URL` sets `maxPoolSize`.
pub const DEFAULT_POOL_SIZE: u32 = 32;

/// The process's operation timeout in milliseconds. The driver has no client-side operation
/// timeout (its `socketTimeoutMS` is unsupported), so a stalled server would hang a request or a
/// listener until its client or ack wait gives up; every operation is bounded here instead. One
/// value per process: `connect` sets it, and a process talks to one database server.
static OPERATION_TIMEOUT_MS: AtomicU64 = AtomicU64::new(DEFAULT_OPERATION_TIMEOUT_MS);

/// The error a database operation that outlived the operation timeout fails with (carried in a
/// driver error, so that it flows where driver errors do); classified as "unavailable".
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the database did not answer within the operation timeout")]
pub struct OperationTimedOut;

/// The operation timeout in force.
pub fn operation_timeout() -> Duration {
    Duration::from_millis(OPERATION_TIMEOUT_MS.load(Ordering::Relaxed))
}

type Answer<T> = mongodb::error::Result<T>;

/// Bounds a database operation (a driver action, or an async block of several) by the operation
/// timeout: past it the operation is dropped (the driver closes a connection dropped mid-command)
/// and fails as unavailable, so requests answer 503 and listeners retry later. In a request, the
/// operation first waits for its lane's admission within that timeout (see `lane.rs`).
pub trait Bounded<T>: IntoFuture<Output = Answer<T>> + Sized {
    fn bounded(self) -> impl Future<Output = Answer<T>> + Send
    where
        Self::IntoFuture: Send,
        T: Send,
    {
        let operation = self.into_future();
        let admitted = async move {
            let lane = lane::current();
            let _permit = lane::admit(lane.as_ref()).await;
            operation.await
        };
        tokio::time::timeout(operation_timeout(), admitted).map(|answer| {
            answer.unwrap_or_else(|_| Err(mongodb::error::Error::custom(OperationTimedOut)))
        })
    }
}

impl<T, F: IntoFuture<Output = Answer<T>>> Bounded<T> for F {}

/// Runs a find and reads its whole cursor, both within one operation timeout.
pub async fn find_all<T, F>(find: F) -> Answer<Vec<T>>
where
    F: IntoFuture<Output = Answer<mongodb::Cursor<T>>> + Send,
    F::IntoFuture: Send,
    T: serde::de::DeserializeOwned + Send + Sync + Unpin,
{
    async move { find.await?.try_collect().await }
        .bounded()
        .await
}

/// Whether `collection` holds a document whose `_id` is `id`, within one operation timeout.
pub async fn has_id(
    collection: &Collection<Document>,
    id: impl Into<mongodb::bson::Bson>,
) -> Result<bool, StoreError> {
    Ok(collection
        .find_one(doc! { "_id": id.into() })
        .bounded()
        .await?
        .is_some())
}

/// Connects lazily (the driver connects on first use) with short timeouts so that an unreachable
/// database fails requests quickly (503) instead of hanging them; sets the operation timeout.
pub async fn connect(settings: &MongoSettings, app_name: &str) -> anyhow::Result<Database> {
    let timeout_ms = u64::try_from(settings.operation_timeout.as_millis()).unwrap_or(u64::MAX);
    OPERATION_TIMEOUT_MS.store(timeout_ms.max(1), Ordering::Relaxed);
    let options = client_options(settings, app_name).await?;
    #[cfg(feature = "testing")]
    let options = {
        let mut options = options;
        options.command_event_handler = query_log::handler();
        options
    };
    let client = Client::with_options(options).context("creating the MongoDB client")?;
    Ok(client.database(&settings.database))
}

/// The driver's options: `MONGO_URL`'s, with short connect timeouts and our pool size.
async fn client_options(settings: &MongoSettings, app_name: &str) -> anyhow::Result<ClientOptions> {
    let mut options = ClientOptions::parse(settings.url.expose_secret())
        .await
        .context("parsing MONGO_URL")?;
    options.app_name = Some(app_name.to_owned());
    options.server_selection_timeout = Some(Duration::from_secs(3));
    options.connect_timeout = Some(Duration::from_secs(3));
    // 32 unless MONGO_URL says otherwise (`maxPoolSize=`): on FerretDB/SQLite fewer connections
    // mean fewer writers waiting on a database's lock (8 sold the benchmark's flash sale out in
    // 1.6 s instead of 2.0 s) but slower event handling behind busy requests (payment -> order
    // complete p99 126 ms instead of 45 ms); README, "What limits it".
    if options.max_pool_size.is_none() {
        options.max_pool_size = Some(DEFAULT_POOL_SIZE);
    }
    Ok(options)
}

/// Whether the database answers (for `/readyz`).
pub async fn ping(db: &Database) -> bool {
    db.run_command(doc! { "ping": 1 }).await.is_ok()
}

/// 24 lowercase or uppercase hex characters.
pub fn parse_object_id(id: &str) -> Option<ObjectId> {
    if id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        ObjectId::parse_str(id).ok()
    } else {
        None
    }
}

/// Whether an index lets two documents share its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    Plain,
    /// A second document with the same key is refused at insert (CONSISTENCY.md: exclusivity).
    Unique,
}

/// Creates the index `name` on `keys` of `collection` (nothing happens if it exists already),
/// within the operation timeout like every other call.
pub async fn ensure_index<T: Send + Sync>(
    collection: &Collection<T>,
    name: &str,
    keys: Document,
    kind: IndexKind,
) -> mongodb::error::Result<()> {
    let options = IndexOptions::builder()
        .name(name.to_owned())
        .unique((kind == IndexKind::Unique).then_some(true))
        .build();
    collection
        .create_index(IndexModel::builder().keys(keys).options(options).build())
        .bounded()
        .await?;
    Ok(())
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
    ) || err.get_custom::<OperationTimedOut>().is_some()
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;
    use crate::error::ApiError;
    use crate::settings::MongoSettings;

    fn mongo(url: &str) -> MongoSettings {
        MongoSettings {
            url: SecretString::from(url),
            database: "orders".to_owned(),
            operation_timeout: Duration::from_secs(5),
            request_concurrency: DEFAULT_REQUEST_CONCURRENCY,
        }
    }

    #[tokio::test]
    async fn the_pool_has_32_connections_unless_the_url_sets_max_pool_size() -> anyhow::Result<()> {
        let default = client_options(&mongo("mongodb://127.0.0.1:27017"), "orders").await?;
        assert_eq!(default.max_pool_size, Some(DEFAULT_POOL_SIZE));
        let set =
            client_options(&mongo("mongodb://127.0.0.1:27017/?maxPoolSize=8"), "orders").await?;
        assert_eq!(set.max_pool_size, Some(8));
        assert_eq!(set.app_name.as_deref(), Some("orders"));
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn an_operation_that_outlives_the_timeout_fails_as_a_database_outage() {
        let started = tokio::time::Instant::now();
        let stalled = std::future::pending::<mongodb::error::Result<()>>();

        let Err(err) = stalled.bounded().await else {
            panic!("a stalled operation cannot succeed");
        };

        assert_eq!(started.elapsed(), operation_timeout());
        assert!(is_unavailable(&err), "{err}");
        assert!(matches!(
            ApiError::from(err),
            ApiError::DatabaseUnavailable(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn an_operation_within_the_timeout_gives_its_own_answer() {
        let quick = async {
            tokio::time::sleep(operation_timeout() / 2).await;
            Ok(7)
        };
        assert_eq!(quick.bounded().await.ok(), Some(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waits_for_its_lane_within_the_timeout_and_a_handler_does_not_wait() {
        let lane = RequestLane::new(1);
        // The lane's only permit, held the way a request's operation in flight holds it.
        let in_flight = lane.hold();
        assert!(in_flight.is_some());

        let started = tokio::time::Instant::now();
        let handler = async { Ok(1) }.bounded().await;
        assert_eq!(handler.ok(), Some(1), "outside a request: no wait");
        assert_eq!(started.elapsed(), Duration::ZERO);

        let Err(err) = lane.run(async { async { Ok(2) }.bounded().await }).await else {
            panic!("a request cannot get past a full lane");
        };
        assert_eq!(started.elapsed(), operation_timeout());
        assert!(is_unavailable(&err), "{err}");

        drop(in_flight);
        let admitted = lane.run(async { async { Ok(3) }.bounded().await }).await;
        assert_eq!(admitted.ok(), Some(3), "admitted once the permit is back");
    }

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
    }
}
