use std::sync::Arc;
use std::time::Duration;

use common::bus::EventBus;
use common::events::{Event, ExpirationComplete};
use common::store::{
    Committed, Decision, PendingEvent, Premark, RelayPass, RelayTiming, Settling, StoreError,
    VersionedRecord, VersionedStore,
};
use futures::TryStreamExt;
use futures::future::join_all;
use mongodb::IndexModel;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::IndexOptions;
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    Counter, FINAL_WRITER, bus, counter, drain, fresh_database, fresh_nats_settings, named_id,
    observe,
};

/// An event that names version `version` of record `id`.
fn expiry_of(id: &str, version: i64) -> ExpirationComplete {
    ExpirationComplete {
        order_id: named_id(&format!("{id}:{version}")),
    }
}

fn event_for(id: &str, version: i64) -> PendingEvent {
    PendingEvent::of(&expiry_of(id, version)).expect("event")
}

/// Record `c1` as stored, without the catch-up a read through the store makes.
async fn raw_c1(store: &VersionedStore<Counter>) -> Counter {
    store
        .records()
        .find_one(doc! { "_id": "c1" })
        .await
        .expect("find")
        .expect("record")
}

/// Commits counter `c1` at version 0 with its event left unpublished, as a writer that stopped
/// before publishing leaves it.
async fn create_c1_unpublished(store: &VersionedStore<Counter>) {
    store
        .create_unpublished(&counter("c1", "c1"), vec![event_for("c1", 0)])
        .await
        .expect("create");
}

async fn store_with_unique_claim() -> (VersionedStore<Counter>, mongodb::Database) {
    let db = fresh_database().await;
    let store = VersionedStore::<Counter>::new(&db, "counters");
    store.ensure_indexes().await.expect("indexes");
    store
        .records()
        .create_index(
            IndexModel::builder()
                .keys(doc! { "claim": 1 })
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await
        .expect("unique index");
    (store, db)
}

/// [`store_with_unique_claim`] with `c1` created at version 0 (no events), and a bus.
async fn store_with_c1() -> (VersionedStore<Counter>, mongodb::Database, EventBus) {
    let (store, db) = store_with_unique_claim().await;
    let bus = bus(&fresh_nats_settings()).await;
    store
        .create(&bus, &counter("c1", "c1"), vec![])
        .await
        .expect("create");
    (store, db, bus)
}

#[tokio::test]
async fn concurrent_writers_never_fork_a_version_or_lose_an_update() {
    let (store, db, bus) = store_with_c1().await;
    let writers = 12;
    let results = join_all((0..writers).map(|w| {
        let (store, bus) = (store.clone(), bus.clone());
        async move {
            store
                .modify::<StoreError, _>(&bus, Bson::String("c1".into()), |current| {
                    let mut next = current.clone();
                    next.version += 1;
                    next.writers.push(format!("w{w}"));
                    Ok(Decision::Commit {
                        events: vec![event_for("c1", next.version)],
                        next,
                    })
                })
                .await
        }
    }))
    .await;
    assert!(
        results.iter().all(Result::is_ok),
        "every writer eventually commits: {results:?}"
    );
    let last = store
        .get(Bson::String("c1".into()))
        .await
        .expect("get")
        .expect("record");
    assert_eq!(last.version, writers);
    let mut names = last.writers.clone();
    names.sort();
    names.dedup();
    assert_eq!(
        names.len() as i64,
        writers,
        "each writer's change is in the final state: {:?}",
        last.writers
    );

    // One change document per version, each building on the previous one.
    let changes: Vec<Document> = db
        .collection::<Document>("counters_changes")
        .find(doc! {})
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("collect");
    let mut versions: Vec<i64> = changes
        .iter()
        .filter_map(|c| c.get_i64("version").ok())
        .collect();
    versions.sort();
    assert_eq!(versions, (0..=writers).collect::<Vec<_>>());
}

#[tokio::test]
async fn concurrent_creates_of_one_unique_claim_have_exactly_one_winner() {
    let (store, db) = store_with_unique_claim().await;
    let bus = bus(&fresh_nats_settings()).await;
    let results = join_all((0..30).map(|i| {
        let (store, bus) = (store.clone(), bus.clone());
        async move {
            store
                .create(
                    &bus,
                    &counter(&format!("r{i}"), "ticket-1"),
                    vec![event_for("r", i)],
                )
                .await
        }
    }))
    .await;
    let winners = results.iter().filter(|r| r.is_ok()).count();
    let losers = results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::Duplicate)))
        .count();
    assert_eq!((winners, losers), (1, 29), "{results:?}");
    let records = store
        .records()
        .count_documents(doc! { "claim": "ticket-1" })
        .await
        .expect("count");
    assert_eq!(records, 1);
    // Losers leave no change (and so no event) behind.
    let changes = db
        .collection::<Document>("counters_changes")
        .count_documents(doc! {})
        .await
        .expect("count");
    assert_eq!(changes, 1);
}

#[tokio::test]
async fn concurrent_commits_share_their_write_commands_and_each_learns_its_own_fate() {
    let (store, db) = store_with_unique_claim().await;
    let bus = bus(&fresh_nats_settings()).await;
    let records = 40;
    for i in 0..records {
        store
            .create(&bus, &counter(&format!("c{i}"), &format!("c{i}")), vec![])
            .await
            .expect("create");
    }
    common::store::query_log::clear(db.name());
    // Each record gets one commit, and record c0 a second writer racing for the same version.
    let writers = (0..records)
        .map(|i| format!("c{i}"))
        .chain(["c0".to_owned()]);
    let results = join_all(writers.map(|id| {
        let (store, bus) = (store.clone(), bus.clone());
        async move {
            let current = store
                .stored(Bson::String(id.clone()))
                .await
                .expect("read")
                .expect("record");
            let mut next = current.clone();
            next.version += 1;
            let events = vec![event_for(&id, next.version)];
            store.commit(&bus, &current, &next, events).await
        }
    }))
    .await;
    let committed = results.iter().filter(|r| r.is_ok()).count();
    let lost = results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::Conflict)))
        .count();
    assert_eq!((committed, lost), (records, 1), "{results:?}");

    let inserts = common::store::query_log::inserts_in(db.name());
    let into = |collection: &str| {
        let commands: Vec<usize> = inserts
            .iter()
            .filter(|insert| insert.collection == collection)
            .map(|insert| insert.documents)
            .collect();
        (commands.len(), commands.iter().sum::<usize>())
    };
    let (change_commands, change_documents) = into("counters_changes");
    let (marker_commands, marker_documents) = into("counters_pending");
    assert_eq!(
        (change_documents, marker_documents),
        (records + 1, records + 1),
        "every writer's claim and marker was sent once"
    );
    assert!(
        change_commands < change_documents && marker_commands < marker_documents,
        "concurrent inserts go together: {change_commands} commands for the changes, \
         {marker_commands} for the markers"
    );
    // Their markers go the same way once the events are out, each delete by `_id` (alone or in a
    // list): an index lookup, not a read of every marker.
    let marker_deletes: Vec<_> = common::store::query_log::queries_in(db.name())
        .into_iter()
        .filter(|query| query.command == "delete" && query.collection == "counters_pending")
        .collect();
    assert!(
        marker_deletes.iter().all(|query| query.is_id_lookup()),
        "{marker_deletes:?}"
    );
    assert!(
        marker_deletes.len() < records,
        "concurrent marker deletes go together: {} commands",
        marker_deletes.len()
    );
    // The loser's claim was refused alone: one change per version, and no marker left behind.
    let c0 = store
        .get(Bson::String("c0".into()))
        .await
        .expect("get")
        .expect("record");
    assert_eq!(c0.version, 1);
    assert_eq!(markers(&db).await, 0);
}

#[tokio::test]
async fn a_change_left_unapplied_is_repaired_on_the_next_read() {
    let (store, db) = store_with_unique_claim().await;
    store
        .create_unpublished(&counter("c1", "c1"), vec![])
        .await
        .expect("create");
    // Simulate a writer that claimed version 1 and crashed before updating the record.
    let mut state = counter("c1", "c1");
    state.version = 1;
    state.writers = vec!["crashed".into()];
    db.collection::<Document>("counters_changes")
        .insert_one(doc! {
            "_id": "c1:1", "record_id": "c1", "record_key": "c1", "version": 1_i64,
            "state": mongodb::bson::to_document(&state).expect("bson"),
            "events": [], "published": false, "at": mongodb::bson::DateTime::now(),
        })
        .await
        .expect("insert change");
    let read = store
        .get(Bson::String("c1".into()))
        .await
        .expect("get")
        .expect("record");
    assert_eq!(read, state);
    let raw = raw_c1(&store).await;
    assert_eq!(raw.version, 1, "the repair was written back");
    // And the next writer builds on it instead of overwriting it.
    let outcome = store
        .commit_unpublished(&counter("c1", "c1"), &state.clone(), vec![])
        .await;
    assert!(
        matches!(outcome, Err(StoreError::Conflict)),
        "version 1 is taken"
    );
}

/// Counter `c1` stored at version 0 with version 1 claimed by a writer that "crashed" before
/// writing the record.
async fn c1_lagging_its_change(store: &VersionedStore<Counter>, db: &mongodb::Database) {
    store
        .create_unpublished(&counter("c1", "c1"), vec![])
        .await
        .expect("create");
    let mut state = counter("c1", "c1");
    state.version = 1;
    state.writers = vec!["crashed".into()];
    db.collection::<Document>("counters_changes")
        .insert_one(doc! {
            "_id": "c1:1", "record_id": "c1", "record_key": "c1", "version": 1_i64,
            "state": mongodb::bson::to_document(&state).expect("bson"),
            "events": [], "at": mongodb::bson::DateTime::now(),
        })
        .await
        .expect("insert change");
}

/// The next version of `current`, with `writer` added and no events.
fn next_written_by(current: &Counter, writer: &str) -> Decision<Counter> {
    let mut next = current.clone();
    next.version += 1;
    next.writers.push(writer.into());
    Decision::Commit {
        next,
        events: vec![],
    }
}

#[tokio::test]
async fn a_remembered_copy_nothing_came_after_is_the_newest_after_one_lookup_of_the_next_change() {
    let (store, db) = store_with_unique_claim().await;
    let bus = bus(&fresh_nats_settings()).await;
    let created = counter("c1", "c1");
    store.create(&bus, &created, vec![]).await.expect("create");
    common::store::query_log::clear(db.name());

    let newest = store.newest_from(created.clone()).await.expect("read");

    assert_eq!(newest, created);
    let queries = common::store::query_log::queries_in(db.name());
    assert_eq!(
        queries.len(),
        1,
        "the next version's change alone: {queries:?}"
    );
    assert_eq!(queries[0].collection, "counters_changes");
    assert!(queries[0].is_id_lookup(), "{queries:?}");
}

#[tokio::test]
async fn a_remembered_copy_someone_moved_past_reads_through_to_the_newest_state() {
    let (store, _db) = store_with_unique_claim().await;
    let bus = bus(&fresh_nats_settings()).await;
    let created = counter("c1", "c1");
    store.create(&bus, &created, vec![]).await.expect("create");
    let (moved, _) = store
        .modify::<StoreError, _>(&bus, Bson::String("c1".into()), |current| {
            Ok(next_written_by(current, "w1"))
        })
        .await
        .expect("modify");

    assert_eq!(store.newest_from(created).await.expect("read"), moved);

    // Also when the record itself lags its newest change (a writer that crashed between the two).
    let (lagging, db2) = store_with_unique_claim().await;
    c1_lagging_its_change(&lagging, &db2).await;
    let newest = lagging
        .newest_from(counter("c1", "c1"))
        .await
        .expect("read");
    assert_eq!(
        (newest.version, newest.writers.clone()),
        (1, vec!["crashed".to_owned()])
    );
    assert_eq!(
        raw_c1(&lagging).await,
        newest,
        "the repair was written back"
    );
}

#[tokio::test]
async fn a_modify_of_a_record_lagging_its_newest_change_decides_again_on_the_newest_state() {
    let (store, db) = store_with_unique_claim().await;
    let bus = bus(&fresh_nats_settings()).await;
    c1_lagging_its_change(&store, &db).await;
    let mut seen = Vec::new();

    // Nothing to do at the stored version, something at the newest: the unchanged answer is
    // checked against the next change before it is given.
    let (after, committed) = store
        .modify::<StoreError, _>(&bus, Bson::String("c1".into()), |current| {
            seen.push(current.version);
            if current.version == 0 {
                return Ok(Decision::Unchanged);
            }
            Ok(next_written_by(current, "w"))
        })
        .await
        .expect("modify");

    assert_eq!(seen, vec![0, 1]);
    assert!(committed.is_some());
    assert_eq!(
        (after.version, after.writers),
        (2, vec!["crashed".to_owned(), "w".to_owned()])
    );

    // A commit based on the lagging record loses the claim of version 1 and is decided again.
    let (store, db) = store_with_unique_claim().await;
    c1_lagging_its_change(&store, &db).await;
    let mut seen = Vec::new();
    let (after, _) = store
        .modify::<StoreError, _>(&bus, Bson::String("c1".into()), |current| {
            seen.push(current.version);
            Ok(next_written_by(current, "w"))
        })
        .await
        .expect("modify");
    assert_eq!(seen, vec![0, 1]);
    assert_eq!(
        (after.version, after.writers),
        (2, vec!["crashed".to_owned(), "w".to_owned()])
    );

    // A refusal is checked against the next change too: only the newest state may refuse.
    let (store, db) = store_with_unique_claim().await;
    c1_lagging_its_change(&store, &db).await;
    let mut seen = Vec::new();
    let (after, _) = store
        .modify::<StoreError, _>(&bus, Bson::String("c1".into()), |current| {
            seen.push(current.version);
            if current.writers.contains(&"crashed".to_owned()) {
                return Ok(next_written_by(current, "w"));
            }
            Err(StoreError::NotFound)
        })
        .await
        .expect("decided on the newest state");
    assert_eq!(seen, vec![0, 1]);
    assert_eq!(after.version, 2);
}

#[tokio::test]
async fn a_modify_from_a_read_another_writer_overtook_decides_again_on_the_newest_state() {
    let (store, _db) = store_with_unique_claim().await;
    let bus = bus(&fresh_nats_settings()).await;
    store
        .create(&bus, &counter("c1", "c1"), vec![])
        .await
        .expect("create");
    let read_earlier = store
        .stored(Bson::String("c1".into()))
        .await
        .expect("read")
        .expect("c1 is stored");
    store
        .modify::<StoreError, _>(&bus, Bson::String("c1".into()), |current| {
            Ok(next_written_by(current, "first"))
        })
        .await
        .expect("the other writer");

    let mut seen = Vec::new();
    let (after, committed) = store
        .modify_from::<StoreError, _>(&bus, read_earlier, |current| {
            seen.push(current.version);
            Ok(next_written_by(current, "second"))
        })
        .await
        .expect("modify from the earlier read");

    assert_eq!(
        seen,
        vec![0, 1],
        "the stale read loses its claim, then the newest is decided on"
    );
    assert!(committed.is_some());
    assert_eq!(
        (after.version, after.writers),
        (2, vec!["first".to_owned(), "second".to_owned()])
    );
}

#[tokio::test]
async fn a_modify_of_an_up_to_date_record_reads_it_once_and_after_its_write_only_the_next_change() {
    let (store, db) = store_with_unique_claim().await;
    let finds = modify_c1_by(&store, &db, "plain", vec![event_for("c1", 1)]).await;
    assert_eq!(finds.records, 1, "the record, once");
    assert_eq!(
        finds.changes, 1,
        "version 2's change, after the write: a state that is not final can be followed"
    );
}

/// The `find` commands one `modify` sent, per collection.
struct Finds {
    records: usize,
    changes: usize,
}

/// `c1` created, then moved from version 0 by `writer` through `modify`, publishing `events`.
async fn modify_c1_by(
    store: &VersionedStore<Counter>,
    db: &mongodb::Database,
    writer: &str,
    events: Vec<PendingEvent>,
) -> Finds {
    let bus = bus(&fresh_nats_settings()).await;
    store
        .create(&bus, &counter("c1", "c1"), vec![])
        .await
        .expect("create");
    common::store::query_log::clear(db.name());
    store
        .modify::<StoreError, _>(&bus, Bson::String("c1".into()), |current| {
            let mut next = current.clone();
            next.version += 1;
            next.writers.push(writer.to_owned());
            Ok(Decision::Commit {
                next,
                events: events.clone(),
            })
        })
        .await
        .expect("modify");
    let queries = common::store::query_log::queries_in(db.name());
    let finds = |collection: &str| {
        queries
            .iter()
            .filter(|query| query.command == "find" && query.collection == collection)
            .count()
    };
    Finds {
        records: finds("counters"),
        changes: finds("counters_changes"),
    }
}

#[tokio::test]
async fn the_writer_of_a_final_state_does_not_look_for_a_later_version_and_a_reader_trusts_it() {
    let (store, db) = store_with_unique_claim().await;
    assert_eq!(
        modify_c1_by(&store, &db, FINAL_WRITER, vec![])
            .await
            .changes,
        0,
        "no version can follow a final state"
    );
    assert_eq!(raw_c1(&store).await.writers, vec![FINAL_WRITER.to_owned()]);

    let final_copy = raw_c1(&store).await;
    common::store::query_log::clear(db.name());
    let newest = store.newest_from(final_copy.clone()).await.expect("read");
    assert_eq!(newest, final_copy);
    assert!(
        common::store::query_log::queries_in(db.name()).is_empty(),
        "a final copy is the newest without a lookup"
    );
}

#[tokio::test]
async fn the_claim_observer_hears_each_claimed_state_once_and_never_a_lost_claim() {
    let db = fresh_database().await;
    let heard = Arc::new(std::sync::Mutex::new(Vec::<Counter>::new()));
    let store = VersionedStore::<Counter>::new(&db, "counters").on_claimed({
        let heard = Arc::clone(&heard);
        move |state: &Counter| heard.lock().expect("lock").push(state.clone())
    });
    let bus = bus(&fresh_nats_settings()).await;
    let current = counter("c1", "c1");
    store.create(&bus, &current, vec![]).await.expect("create");
    assert!(
        heard.lock().expect("lock").is_empty(),
        "a create is no version claim: its record's unique keys can still undo it"
    );

    let attempts = ["a", "b", "c"].map(|writer| {
        let mut next = current.clone();
        next.version = 1;
        next.writers.push(writer.to_owned());
        next
    });
    let results = join_all(
        attempts
            .iter()
            .map(|next| store.commit(&bus, &current, next, vec![])),
    )
    .await;
    let winners: Vec<&Counter> = attempts
        .iter()
        .zip(&results)
        .filter(|(_, result)| result.is_ok())
        .map(|(next, _)| next)
        .collect();
    assert_eq!(winners.len(), 1, "one claim of version 1 wins: {results:?}");
    assert_eq!(
        *heard.lock().expect("lock"),
        vec![winners[0].clone()],
        "the observer hears the winner only"
    );
}

#[tokio::test]
async fn a_replica_lagging_its_newest_change_takes_the_version_after_it() {
    use common::store::ReplicaUpdate;
    let (store, db) = store_with_unique_claim().await;
    c1_lagging_its_change(&store, &db).await;

    let update = store
        .apply_replica_version(Bson::String("c1".into()), 2, |current| {
            let mut next = current.clone();
            next.version = 2;
            next.writers.push("v2".into());
            next
        })
        .await
        .expect("apply");

    assert_eq!(update, ReplicaUpdate::Applied);
    let stored = store
        .get(Bson::String("c1".into()))
        .await
        .expect("read")
        .expect("record");
    assert_eq!(stored.writers, vec!["crashed".to_owned(), "v2".to_owned()]);
}

#[tokio::test]
async fn the_relay_publishes_what_a_crashed_writer_left_behind_exactly_once() {
    let (store, _db) = store_with_unique_claim().await;
    let store = Arc::new(store);
    let settings = fresh_nats_settings();
    let bus = bus(&settings).await;
    let shutdown = CancellationToken::new();
    let mut seen = observe::<ExpirationComplete>(&bus, "observer", &shutdown).await;

    // Created and committed, but the process "died" before publishing.
    create_c1_unpublished(&store).await;
    let current = store
        .get(Bson::String("c1".into()))
        .await
        .expect("get")
        .expect("record");
    let mut next = current.clone();
    next.version = 1;
    store
        .commit_unpublished(&current, &next, vec![event_for("c1", 1)])
        .await
        .expect("commit");

    // Too young for the relay: an in-flight request may still publish it itself.
    assert_eq!(
        store
            .relay_once(&bus, Duration::from_secs(60))
            .await
            .expect("relay"),
        RelayPass {
            published: 0,
            waiting: 2
        }
    );
    assert_eq!(
        store.relay_once(&bus, Duration::ZERO).await.expect("relay"),
        RelayPass {
            published: 2,
            waiting: 0
        }
    );
    // A second relay (another replica, or a retry) finds nothing left.
    assert_eq!(
        store.relay_once(&bus, Duration::ZERO).await.expect("relay"),
        RelayPass::default()
    );
    let events = drain(&mut seen, Duration::from_millis(800)).await;
    let ids: Vec<String> = events.iter().map(Event::message_id).collect();
    assert_eq!(
        ids,
        vec![
            expiry_of("c1", 0).message_id(),
            expiry_of("c1", 1).message_id()
        ]
    );
    shutdown.cancel();
}

#[tokio::test]
async fn publishing_twice_after_a_crash_delivers_once() {
    let (store, db) = store_with_unique_claim().await;
    let settings = fresh_nats_settings();
    let bus = bus(&settings).await;
    let shutdown = CancellationToken::new();
    let mut seen = observe::<ExpirationComplete>(&bus, "observer", &shutdown).await;
    // The writer published, then crashed before deleting its pending marker: the relay publishes
    // it again, and JetStream drops the duplicate by its message id.
    let committed = store
        .create(&bus, &counter("c1", "c1"), vec![event_for("c1", 0)])
        .await
        .expect("create");
    assert!(committed.in_stream);
    let change = db
        .collection::<Document>("counters_changes")
        .find_one(doc! { "_id": "c1:0" })
        .await
        .expect("find")
        .expect("change");
    let marker = change
        .get_str("marker")
        .expect("the change names its marker");
    db.collection::<Document>("counters_pending")
        .insert_one(doc! { "_id": marker, "change": "c1:0", "at": mongodb::bson::DateTime::now() })
        .await
        .expect("marker");
    assert_eq!(
        store
            .relay_once(&bus, Duration::ZERO)
            .await
            .expect("relay")
            .published,
        1
    );
    assert_eq!(drain(&mut seen, Duration::from_millis(800)).await.len(), 1);
    shutdown.cancel();
}

/// A store with its relay running (a pass every 100 ms while wanted, a sweep every `sweep`), and
/// what is published on its bus. The relay's start-up pass has run (and found nothing) on return.
struct RunningRelay {
    store: VersionedStore<Counter>,
    db: mongodb::Database,
    seen: common::testing::Observer<ExpirationComplete>,
    shutdown: CancellationToken,
    relay: tokio::task::JoinHandle<()>,
}

impl RunningRelay {
    async fn start(sweep: Duration) -> Self {
        let (store, db) = store_with_unique_claim().await;
        let bus = bus(&fresh_nats_settings()).await;
        let shutdown = CancellationToken::new();
        let seen = observe::<ExpirationComplete>(&bus, "observer", &shutdown).await;
        let timing = RelayTiming {
            interval: Duration::from_millis(100),
            sweep,
            min_age: Duration::ZERO,
        };
        let relay = store.spawn_relay(bus, shutdown.clone(), timing);
        tokio::time::sleep(Duration::from_millis(300)).await;
        Self {
            store,
            db,
            seen,
            shutdown,
            relay,
        }
    }

    async fn next_published(&mut self, within: Duration) -> Option<ExpirationComplete> {
        tokio::time::timeout(within, self.seen.recv())
            .await
            .ok()
            .flatten()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.relay.await.expect("relay task");
    }
}

#[tokio::test]
async fn a_change_its_writer_did_not_publish_is_relayed_by_the_next_pass_not_the_next_sweep() {
    let mut running = RunningRelay::start(Duration::from_secs(3600)).await;
    // A request commits and is cancelled before publishing.
    create_c1_unpublished(&running.store).await;

    assert_eq!(
        running.next_published(Duration::from_secs(10)).await,
        Some(expiry_of("c1", 0)),
        "relayed long before the hourly sweep"
    );
    running.stop().await;
}

#[tokio::test]
async fn a_change_another_replica_left_behind_waits_for_the_sweep() {
    let mut running = RunningRelay::start(Duration::from_secs(4)).await;
    // Another replica (its own store) commits and crashes before publishing: nothing tells this
    // replica, so only its sweep finds the change.
    let other_replica = VersionedStore::<Counter>::new(&running.db, "counters");
    create_c1_unpublished(&other_replica).await;
    // Ten 100 ms passes go by without it...
    assert_eq!(
        running.next_published(Duration::from_secs(1)).await,
        None,
        "relayed before the sweep"
    );
    // ...and the sweep publishes it.
    assert_eq!(
        running.next_published(Duration::from_secs(15)).await,
        Some(expiry_of("c1", 0)),
        "relayed by the sweep"
    );
    running.stop().await;
}

#[tokio::test]
async fn a_replica_is_one_insert_of_its_record_and_its_redelivery_is_recognised() {
    let db = fresh_database().await;
    let store = VersionedStore::<Counter>::new(&db, "replicas");
    let first = counter("r1", "r1");

    assert!(store.create_replica(&first).await.expect("created"));
    assert!(!store.create_replica(&first).await.expect("redelivered"));

    assert_eq!(store.get(first.key()).await.expect("read"), Some(first));
    let changes = db
        .collection::<Document>("replicas_changes")
        .count_documents(doc! {})
        .await
        .expect("count");
    assert_eq!(changes, 0, "version 0 needs no change document");
}

#[tokio::test]
async fn a_replica_insert_an_earlier_release_cut_after_its_change_document_is_finished_by_the_redelivery()
 {
    let db = fresh_database().await;
    let store = VersionedStore::<Counter>::new(&db, "replicas");
    let first = counter("r1", "r1");
    // The crash: the change document of version 0 is written, the record is not.
    store
        .create_unpublished(&first, Vec::new())
        .await
        .expect("created");
    store
        .records()
        .delete_one(doc! { "_id": "r1" })
        .await
        .expect("the record vanishes");

    assert!(store.create_replica(&first).await.expect("redelivered"));

    assert_eq!(store.get(first.key()).await.expect("read"), Some(first));
}

#[tokio::test]
async fn replica_versions_apply_in_order_once_and_duplicates_are_recognised() {
    use common::store::ReplicaUpdate;
    let db = fresh_database().await;
    let store = VersionedStore::<Counter>::new(&db, "replicas");
    assert!(
        store
            .create_replica(&counter("r1", "r1"))
            .await
            .expect("created")
    );
    let to = |version: i64| {
        move |current: &Counter| Counter {
            version,
            writers: [current.writers.clone(), vec![format!("v{version}")]].concat(),
            ..current.clone()
        }
    };
    let key = Bson::String("r1".into());

    assert_eq!(
        store
            .apply_replica_version(key.clone(), 2, to(2))
            .await
            .expect("v2"),
        ReplicaUpdate::NotYet
    );
    let applied =
        join_all((0..5).map(|_| store.apply_replica_version(key.clone(), 1, to(1)))).await;
    let applied: Vec<ReplicaUpdate> = applied.into_iter().map(|r| r.expect("v1")).collect();
    assert_eq!(
        applied
            .iter()
            .filter(|u| **u == ReplicaUpdate::Applied)
            .count(),
        1,
        "{applied:?}"
    );
    assert_eq!(
        store
            .apply_replica_version(key.clone(), 2, to(2))
            .await
            .expect("v2"),
        ReplicaUpdate::Applied
    );
    let stored = store.get(key).await.expect("read").expect("the replica");
    assert_eq!(
        (stored.version, stored.writers),
        (2, vec!["v1".to_owned(), "v2".to_owned()])
    );
}

#[tokio::test]
async fn each_relay_pass_sets_the_waiting_gauge_and_counts_what_it_published() {
    let handle = common::metrics::install(None);
    let db = fresh_database().await;
    // A collection name of its own: the gauge is per collection, and other tests relay too.
    let collection = format!("metered_{}", common::testing::unique_suffix());
    let store = VersionedStore::<Counter>::new(&db, &collection);
    store.ensure_indexes().await.expect("indexes");
    let bus = bus(&fresh_nats_settings()).await;
    store
        .create_unpublished(&counter("m1", "m1"), vec![event_for("m1", 0)])
        .await
        .expect("create");
    // The value of the series of `name` that carries `label`.
    let sample = |name: &str, label: &str| {
        let prefix = format!("{name}{{");
        handle
            .render()
            .lines()
            .find(|line| line.starts_with(&prefix) && line.contains(label))
            .and_then(|line| line.rsplit(' ').next().map(str::to_owned))
    };
    let of_collection = format!(r#"collection="{collection}""#);

    store
        .relay_once(&bus, Duration::from_secs(60))
        .await
        .expect("relay");
    assert_eq!(
        sample("outbox_waiting", &of_collection).as_deref(),
        Some("1")
    );

    store.relay_once(&bus, Duration::ZERO).await.expect("relay");
    assert_eq!(
        sample("outbox_waiting", &of_collection).as_deref(),
        Some("0")
    );
    assert_eq!(
        sample("outbox_published_total", &of_collection).as_deref(),
        Some("1"),
        "{}",
        handle.render()
    );
}

/// How many pending markers the `counters` store holds.
async fn markers(db: &mongodb::Database) -> u64 {
    db.collection::<Document>("counters_pending")
        .count_documents(doc! {})
        .await
        .expect("count")
}

#[tokio::test]
async fn a_change_published_by_its_writer_leaves_no_pending_marker_and_is_not_written_again() {
    let (store, db) = store_with_unique_claim().await;
    let bus = bus(&fresh_nats_settings()).await;
    common::store::query_log::clear(db.name());
    let committed = store
        .create(&bus, &counter("c1", "c1"), vec![event_for("c1", 0)])
        .await
        .expect("create");
    assert!(committed.in_stream);
    assert_eq!(markers(&db).await, 0);
    // Deleting the marker is what says the events are out: the change document stays as written.
    let change_writes: Vec<_> = common::store::query_log::queries_in(db.name())
        .into_iter()
        .filter(|query| query.collection == "counters_changes")
        .collect();
    assert_eq!(change_writes, vec![], "no update of the change document");
    // A change without events needs no relay, so it is never marked.
    store
        .create_unpublished(&counter("c2", "c2"), vec![])
        .await
        .expect("create");
    assert_eq!(markers(&db).await, 0);
}

/// Commits `current`'s next version by `writer` as the change `premark` announces.
async fn commit_premarked(
    store: &VersionedStore<Counter>,
    bus: &EventBus,
    current: Counter,
    premark: Premark,
    settling: Settling,
    writer: &str,
) -> (Counter, Option<Committed>) {
    store
        .modify_from_premarked::<StoreError, _>(bus, current, Some(premark), settling, |current| {
            commit_by(current, writer)
        })
        .await
        .expect("commit")
}

/// A decision that moves a counter to its next version, written by `writer`, with its event.
fn commit_by(current: &Counter, writer: &str) -> Result<Decision<Counter>, StoreError> {
    let mut next = current.clone();
    next.version += 1;
    next.writers.push(writer.to_owned());
    Ok(Decision::Commit {
        events: vec![event_for(&current.id, next.version)],
        next,
    })
}

#[tokio::test]
async fn a_premarked_commit_claims_its_version_with_one_insert_and_is_announced_by_the_premark() {
    let (store, db) = store_with_unique_claim().await;
    let bus = bus(&fresh_nats_settings()).await;
    let shutdown = CancellationToken::new();
    let mut seen = observe::<ExpirationComplete>(&bus, "observer", &shutdown).await;
    store
        .create(&bus, &counter("c1", "c1"), vec![])
        .await
        .expect("create");
    let premark = store.premark("c1", 0).await.expect("premark");
    let pending = db.collection::<Document>("counters_pending");
    let marker = pending
        .find_one(doc! {})
        .await
        .expect("read")
        .expect("the premark")
        .get_str("_id")
        .expect("its id")
        .to_owned();
    common::store::query_log::clear(db.name());

    let (after, committed) = commit_premarked(
        &store,
        &bus,
        raw_c1(&store).await,
        premark,
        Settling::Awaited,
        "premarked",
    )
    .await;

    assert!(committed.is_some_and(|committed| committed.in_stream));
    assert_eq!(after.version, 1);
    let inserts = |collection: &str| {
        common::store::query_log::inserts_in(db.name())
            .into_iter()
            .filter(|insert| insert.collection == collection)
            .count()
    };
    assert_eq!(inserts("counters_pending"), 0, "the premark is the marker");
    assert_eq!(inserts("counters_changes"), 1);
    // Had the writer died before publishing, the relay would have found the change by its marker.
    let change = db
        .collection::<Document>("counters_changes")
        .find_one(doc! { "_id": "c1:1" })
        .await
        .expect("read")
        .expect("the change");
    assert_eq!(change.get_str("marker"), Ok(marker.as_str()));
    assert_eq!(markers(&db).await, 0, "deleted once the event was out");
    assert_eq!(drain(&mut seen, Duration::from_millis(500)).await.len(), 1);
    shutdown.cancel();
}

#[tokio::test]
async fn a_premark_its_writer_does_not_commit_by_is_deleted() {
    let (store, db, bus) = store_with_c1().await;

    // Nothing to commit.
    let premark = store.premark("c1", 0).await.expect("premark");
    let (_, committed) = store
        .modify_from_premarked::<StoreError, _>(
            &bus,
            raw_c1(&store).await,
            Some(premark),
            Settling::Awaited,
            |_| Ok(Decision::Unchanged),
        )
        .await
        .expect("unchanged");
    assert!(committed.is_none());
    assert_eq!(markers(&db).await, 0, "after an unchanged decision");

    // Another writer took the premarked version first: the commit, decided again on the newest
    // state, is the version after, with a marker of its own.
    let stale = raw_c1(&store).await;
    let premark = store.premark("c1", 0).await.expect("premark");
    store
        .modify::<StoreError, _>(&bus, Bson::String("c1".into()), |current| {
            commit_by(current, "other")
        })
        .await
        .expect("the other commit");
    let (after, committed) =
        commit_premarked(&store, &bus, stale, premark, Settling::Awaited, "premarked").await;
    assert!(committed.is_some());
    assert_eq!(
        (after.version, after.writers),
        (2, vec!["other".to_owned(), "premarked".to_owned()])
    );
    assert_eq!(markers(&db).await, 0, "after a premark for a version taken");
    let pass = store.relay_once(&bus, Duration::ZERO).await.expect("relay");
    assert_eq!(pass, RelayPass::default(), "nothing left for the relay");
}

#[tokio::test]
async fn a_commit_settled_behind_is_announced_and_written_by_the_time_its_store_has_settled() {
    let (store, db, bus) = store_with_c1().await;
    let shutdown = CancellationToken::new();
    let mut seen = observe::<ExpirationComplete>(&bus, "observer", &shutdown).await;
    let premark = store.premark("c1", 0).await.expect("premark");

    let (after, committed) = commit_premarked(
        &store,
        &bus,
        raw_c1(&store).await,
        premark,
        Settling::Behind,
        "behind",
    )
    .await;

    // Waiting at once: the marker's delete, the last write, is still ahead unless this waits.
    store.settled().await;
    assert_eq!(markers(&db).await, 0, "deleted once settled");
    assert_eq!(raw_c1(&store).await.writers, vec!["behind".to_owned()]);
    assert!(committed.is_some_and(|committed| committed.in_stream));
    assert_eq!(after.version, 1);
    assert_eq!(drain(&mut seen, Duration::from_millis(500)).await.len(), 1);
    let pass = store.relay_once(&bus, Duration::ZERO).await.expect("relay");
    assert_eq!(pass, RelayPass::default(), "nothing left for the relay");
    shutdown.cancel();
}

#[tokio::test]
async fn concurrent_writers_of_one_version_leave_no_marker_the_relay_cannot_clear() {
    let (store, db, bus) = store_with_c1().await;
    join_all((0..8).map(|w| {
        let (store, bus) = (store.clone(), bus.clone());
        async move {
            store
                .modify::<StoreError, _>(&bus, Bson::String("c1".into()), |current| {
                    let mut next = current.clone();
                    next.version += 1;
                    next.writers.push(format!("w{w}"));
                    Ok(Decision::Commit {
                        events: vec![event_for("c1", next.version)],
                        next,
                    })
                })
                .await
                .expect("commit")
        }
    }))
    .await;
    // Every writer marks with an id of its own, and a loser deletes its own marker.
    assert_eq!(markers(&db).await, 0);
    let pass = store.relay_once(&bus, Duration::ZERO).await.expect("relay");
    assert_eq!(pass, RelayPass::default());
}

#[tokio::test]
async fn markers_the_relay_must_not_publish_again_are_dropped() {
    let (store, db) = store_with_unique_claim().await;
    let settings = fresh_nats_settings();
    let bus = bus(&settings).await;
    let shutdown = CancellationToken::new();
    let mut seen = observe::<ExpirationComplete>(&bus, "observer", &shutdown).await;
    store
        .create(&bus, &counter("c1", "c1"), vec![event_for("c1", 0)])
        .await
        .expect("create");
    assert_eq!(drain(&mut seen, Duration::from_millis(500)).await.len(), 1);
    let now = mongodb::bson::DateTime::now();
    // A writer that lost version 0 of c1 and crashed before deleting its marker.
    let pending = db.collection::<Document>("counters_pending");
    pending
        .insert_one(doc! { "_id": "c1:0~loser", "change": "c1:0", "at": now })
        .await
        .expect("marker");
    // An earlier release's change, published by its writer, who could not delete its marker
    // (those releases marked with the change's id and flagged the change published).
    let state = mongodb::bson::to_document(&counter("c2", "c2")).expect("bson");
    let payload = serde_json::to_string(&expiry_of("c2", 0)).expect("json");
    db.collection::<Document>("counters_changes")
        .insert_one(doc! {
            "_id": "c2:0", "record_id": "c2", "record_key": "c2", "version": 0_i64,
            "state": state.clone(),
            "events": [{ "subject": "expiration:complete",
                "msg_id": expiry_of("c2", 0).message_id(), "payload": &payload }],
            "published": true, "at": now,
        })
        .await
        .expect("old change");
    db.collection::<Document>("counters")
        .insert_one(state)
        .await
        .expect("record");
    pending
        .insert_one(doc! { "_id": "c2:0", "at": now })
        .await
        .expect("old marker");

    let pass = store.relay_once(&bus, Duration::ZERO).await.expect("relay");

    assert_eq!(pass, RelayPass::default());
    assert_eq!(markers(&db).await, 0);
    assert_eq!(
        drain(&mut seen, Duration::from_millis(800)).await.len(),
        0,
        "nothing published again"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_commit_whose_record_write_lands_after_the_next_versions_is_repaired_by_its_writer() {
    let (store, db) = store_with_unique_claim().await;
    store
        .create_unpublished(&counter("c1", "c1"), vec![])
        .await
        .expect("create");
    let current = counter("c1", "c1");
    let mut next = current.clone();
    next.version = 1;
    next.writers = vec!["slow".into()];
    let mut newest = next.clone();
    newest.version = 2;
    newest.writers.push("fast".into());
    // The writer of version 2 read version 1 (the change below, applied), wrote its change and
    // its record, and found nothing newer, all before the slow writer's record write landed.
    db.collection::<Document>("counters_changes")
        .insert_one(doc! {
            "_id": "c1:2", "record_id": "c1", "record_key": "c1", "version": 2_i64,
            "state": mongodb::bson::to_document(&newest).expect("bson"),
            "events": [], "at": mongodb::bson::DateTime::now(),
        })
        .await
        .expect("insert change");

    store
        .commit_unpublished(&current, &next, vec![])
        .await
        .expect("commit");

    let raw = raw_c1(&store).await;
    assert_eq!(
        raw, newest,
        "the slow writer read through to the newest version"
    );
}

#[tokio::test]
async fn a_change_whose_record_write_failed_after_its_events_went_out_keeps_its_marker_for_the_relay()
 {
    let (store, db) = store_with_unique_claim().await;
    let bus = bus(&fresh_nats_settings()).await;
    for id in ["c1", "c2"] {
        store
            .create(&bus, &counter(id, id), vec![])
            .await
            .expect("create");
    }
    // Version 1 of c1 takes c2's unique claim: its change is claimed and its event sent, then
    // the record's write fails (as a crash or a lost connection between the two would leave it).
    let current = counter("c1", "c1");
    let mut next = counter("c1", "c2");
    next.version = 1;
    let failed = store
        .commit(&bus, &current, &next, vec![event_for("c1", 1)])
        .await;
    assert!(matches!(failed, Err(StoreError::Db(_))), "{failed:?}");
    assert_eq!(
        markers(&db).await,
        1,
        "the marker outlives a record write that did not happen"
    );

    // Once the write can succeed, the relay writes the record (its event is out already).
    db.collection::<Document>("counters")
        .delete_one(doc! { "_id": "c2" })
        .await
        .expect("delete");
    store.relay_once(&bus, Duration::ZERO).await.expect("relay");
    assert_eq!(markers(&db).await, 0);
    let raw = raw_c1(&store).await;
    assert_eq!(raw, next);
}

#[tokio::test]
async fn a_marker_whose_change_a_crash_never_wrote_is_kept_a_while_then_dropped() {
    let (store, db) = store_with_unique_claim().await;
    let bus = bus(&fresh_nats_settings()).await;
    let pending = db.collection::<Document>("counters_pending");
    let long_ago = mongodb::bson::DateTime::from_millis(
        mongodb::bson::DateTime::now().timestamp_millis() - 3_600_000,
    );
    pending
        .insert_one(doc! { "_id": "fresh:1", "at": mongodb::bson::DateTime::now() })
        .await
        .expect("marker");
    pending
        .insert_one(doc! { "_id": "old:1", "at": long_ago })
        .await
        .expect("marker");

    let pass = store.relay_once(&bus, Duration::ZERO).await.expect("relay");

    assert_eq!(
        pass,
        RelayPass::default(),
        "nothing to publish, nothing waiting"
    );
    let left: Vec<Document> = pending
        .find(doc! {})
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("read");
    let ids: Vec<&str> = left.iter().filter_map(|d| d.get_str("_id").ok()).collect();
    assert_eq!(ids, vec!["fresh:1"], "a stalled writer may still write it");
}

#[tokio::test]
async fn unpublished_changes_written_before_markers_existed_are_adopted_once_and_published() {
    let db = fresh_database().await;
    let settings = fresh_nats_settings();
    let bus = bus(&settings).await;
    let shutdown = CancellationToken::new();
    let mut seen = observe::<ExpirationComplete>(&bus, "observer", &shutdown).await;
    let state = counter("c1", "c1");
    let payload = serde_json::to_string(&expiry_of("c1", 0)).expect("json");
    // As the previous version left them: one unpublished change with an event, one published.
    let changes = db.collection::<Document>("counters_changes");
    for (id, published) in [("c1:0", false), ("c2:0", true)] {
        changes
            .insert_one(doc! {
                "_id": id, "record_id": &id[..2], "record_key": &id[..2], "version": 0_i64,
                "state": mongodb::bson::to_document(&state).expect("bson"),
                "events": [{ "subject": "expiration:complete",
                    "msg_id": expiry_of("c1", 0).message_id(), "payload": &payload }],
                "published": published, "at": mongodb::bson::DateTime::now(),
            })
            .await
            .expect("old change");
    }
    let store = VersionedStore::<Counter>::new(&db, "counters");

    store.ensure_indexes().await.expect("indexes");
    assert_eq!(
        store.adopt_unmarked_changes().await.expect("again"),
        0,
        "once"
    );
    assert_eq!(markers(&db).await, 1);
    let pass = store.relay_once(&bus, Duration::ZERO).await.expect("relay");

    assert_eq!(pass.published, 1);
    let events = drain(&mut seen, Duration::from_millis(800)).await;
    assert_eq!(events.len(), 1);
    assert!(
        store
            .get(Bson::String("c1".into()))
            .await
            .expect("get")
            .is_some(),
        "the record a crash never wrote is materialised"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn the_relay_reads_its_markers_and_looks_changes_up_by_id_alone() {
    let (store, db) = store_with_unique_claim().await;
    let bus = bus(&fresh_nats_settings()).await;
    for i in 0..5 {
        let id = format!("p{i}");
        store
            .create(&bus, &counter(&id, &id), vec![event_for(&id, 0)])
            .await
            .expect("create");
    }
    create_c1_unpublished(&store).await;
    common::store::query_log::clear(db.name());

    let pass = store.relay_once(&bus, Duration::ZERO).await.expect("relay");

    assert_eq!(pass.published, 1);
    for query in common::store::query_log::queries_in(db.name()) {
        assert!(
            query.is_id_lookup() || query.collection == "counters_pending",
            "{query:?}"
        );
    }
}
