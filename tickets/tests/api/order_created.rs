use std::collections::BTreeMap;
use std::time::Duration;

use common::bus::Outcome;
use common::events::TicketUpdated;
use common::store::{Decision, PendingEvent, StoreError};
use futures::future::join_all;
use mongodb::bson::Bson;
use mongodb::bson::oid::ObjectId;
use reqwest::StatusCode;
use serde_json::json;
use tickets::listeners::RETRY_DELAY;

use crate::helpers::{
    UNKNOWN_TICKET, infra, inserted_ticket_updated, new_order_id, order_cancelled, order_created,
    readable_with_a_malformed_ticket_id, sentinel_updated, spawn_app, user,
};

#[tokio::test]
async fn an_order_reserves_its_ticket_and_announces_the_order_id() {
    let infra = infra().await;
    let mut updated = infra.observe::<TicketUpdated>().await;
    let (id, order_id) = (infra.new_ticket_id().await, new_order_id());

    assert_eq!(infra.reserve(&id, order_id).await, Outcome::Ack);

    let stored = infra.ticket(&id).await;
    assert_eq!((stored.order_id, stored.version), (Some(order_id), 1));
    assert_eq!(
        (stored.title.as_str(), stored.price_cents),
        ("Concert", 2000)
    );
    assert_eq!(
        updated.next().await,
        inserted_ticket_updated(&id, 1, Some(order_id))
    );
    assert_eq!(updated.rest_before(sentinel_updated()).await, Vec::new());
}

#[tokio::test]
async fn a_redelivered_order_created_is_acked_without_a_second_change() {
    let infra = infra().await;
    let mut updated = infra.observe::<TicketUpdated>().await;
    let (id, order_id) = (infra.new_ticket_id().await, new_order_id());
    for _ in 0..3 {
        assert_eq!(infra.reserve(&id, order_id).await, Outcome::Ack);
    }
    assert_eq!(infra.ticket(&id).await.version, 1);
    assert_eq!(updated.next().await.version, 1);
    assert_eq!(updated.rest_before(sentinel_updated()).await, Vec::new());
}

#[tokio::test]
async fn an_order_for_a_ticket_held_by_another_order_is_retried_without_changing_it() {
    let infra = infra().await;
    let (id, first, second) = (infra.new_ticket_id().await, new_order_id(), new_order_id());
    infra.reserve(&id, first).await;

    assert_eq!(
        infra.reserve(&id, second).await,
        Outcome::Retry(RETRY_DELAY)
    );
    assert_eq!(infra.hold(&id).await, (Some(first), 1));

    // Once the first order's cancellation is in, the retried event reserves the ticket.
    infra.release(&id, first).await;
    assert_eq!(infra.reserve(&id, second).await, Outcome::Ack);
    assert_eq!(infra.hold(&id).await, (Some(second), 3));
}

#[tokio::test]
async fn a_reservation_leaves_no_pending_marker_whatever_it_decides() {
    let infra = infra().await;
    let (id, first, second) = (infra.new_ticket_id().await, new_order_id(), new_order_id());
    // Reserved, then the same event again, then another order's while it is held.
    assert_eq!(infra.reserve(&id, first).await, Outcome::Ack);
    // Its record write and marker delete finish after the ack; a redelivery comes later still.
    infra.store.tickets().settled().await;
    common::store::query_log::clear(infra.db.name());
    assert_eq!(infra.reserve(&id, first).await, Outcome::Ack);
    assert_eq!(
        infra.reserve(&id, second).await,
        Outcome::Retry(RETRY_DELAY)
    );
    assert_eq!(infra.pending_markers().await, 0);
    let marker_inserts = common::store::query_log::inserts_in(infra.db.name())
        .into_iter()
        .filter(|insert| insert.collection == "tickets_pending")
        .count();
    assert_eq!(
        marker_inserts, 0,
        "no marker for a ticket the read model shows held"
    );

    // An order cancelled before its `order:created` arrives.
    let cancelled = new_order_id();
    infra.release(&id, cancelled).await;
    assert_eq!(infra.reserve(&id, cancelled).await, Outcome::Ack);
    assert_eq!(infra.pending_markers().await, 0);

    // A ticket another replica changed since this one's read model saw it: the marker written
    // for the version after the one it knew is not the reservation's.
    let edited = infra.new_ticket_id().await;
    infra
        .store
        .tickets()
        .modify::<StoreError, _>(
            &infra.bus,
            Bson::ObjectId(ObjectId::parse_str(&edited).expect("an ObjectId")),
            |ticket| {
                let mut next = ticket.clone();
                next.version += 1;
                next.price_cents = 2500;
                Ok(Decision::Commit {
                    events: vec![PendingEvent::of(&next.updated_event()).expect("event")],
                    next,
                })
            },
        )
        .await
        .expect("an edit on another replica");
    assert_eq!(infra.reserve(&edited, second).await, Outcome::Ack);
    assert_eq!(infra.hold(&edited).await, (Some(second), 2));
    assert_eq!(infra.pending_markers().await, 0);
}

#[tokio::test]
async fn an_order_for_an_unknown_ticket_is_retried_and_one_with_a_malformed_id_cannot_be_read() {
    let infra = infra().await;
    let outcome = infra.reserve(UNKNOWN_TICKET, new_order_id()).await;
    assert_eq!(outcome, Outcome::Retry(RETRY_DELAY));
    // The bus moves a payload it cannot read to the dead-letter stream before any handler runs.
    let event = order_created(UNKNOWN_TICKET, new_order_id());
    assert!(!readable_with_a_malformed_ticket_id(&event));
}

#[tokio::test]
async fn the_running_listener_waits_for_the_previous_holders_cancellation() {
    let app = spawn_app().await;
    let (_, id) = app.new_ticket().await;
    let id = id.as_str();
    let (first, second) = (new_order_id(), new_order_id());

    app.infra.publish(&order_created(id, first)).await;
    app.wait_for_ticket(id, |t| t["orderId"] == first.to_string())
        .await;
    // The second order's creation overtakes the first one's cancellation.
    app.infra.publish(&order_created(id, second)).await;
    app.infra.publish(&order_cancelled(id, first)).await;

    let held = app
        .wait_for_ticket(id, |t| t["orderId"] == second.to_string())
        .await;
    assert_eq!(held["version"], 3);
}

/// CONSISTENCY.md, "An owner's edit racing a reservation": both changes survive, and every version
/// is taken exactly once.
#[tokio::test]
async fn an_owners_edits_racing_a_reservation_all_survive_with_one_version_each() {
    const EDITS: usize = 10;
    let app = spawn_app().await;
    let owner = user();
    let mut updated = app.infra.observe::<TicketUpdated>().await;

    // The reservation starts a little later in each round, so that it lands at different points
    // among the edits (the HTTP round trip makes the direct call win when started together).
    for (round, delay_ms) in [0u64, 15, 40].into_iter().enumerate() {
        let ticket = app.create_ticket(&owner, "Original", 20.0).await;
        let id = ticket["id"].as_str().expect("id").to_owned();
        let order_id = new_order_id();

        let edits = join_all((0..EDITS).map(|i| {
            let (app, id, cookie) = (&app, id.clone(), owner.cookie.clone());
            async move {
                app.put_ticket(
                    &id,
                    Some(&cookie),
                    &json!({ "title": format!("Title {i}"), "price": 10 + i }),
                )
                .await
            }
        }));
        let reservation = async {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            app.infra.reserve(&id, order_id).await
        };
        let (edits, reservation) = tokio::join!(edits, reservation);
        assert_eq!(reservation, Outcome::Ack);

        // Every edit either won a version or lost to the reservation; none conflicted.
        let mut edit_versions = BTreeMap::new();
        for reply in &edits {
            match reply.status {
                StatusCode::OK => {
                    let version = reply.body["version"].as_i64().expect("version");
                    let title = reply.body["title"].as_str().expect("title").to_owned();
                    assert!(
                        edit_versions.insert(version, title).is_none(),
                        "version {version} given twice"
                    );
                }
                StatusCode::BAD_REQUEST => assert_eq!(
                    reply.body["errors"][0]["message"],
                    "Ticket is already reserved and unable to edit."
                ),
                other => panic!("unexpected {other}: {:?}", reply.body),
            }
        }
        let successes = edit_versions.len() as i64;
        // Edits can only land before the reservation: versions 1..=successes, then the reservation.
        assert_eq!(
            edit_versions.keys().copied().collect::<Vec<_>>(),
            (1..=successes).collect::<Vec<_>>()
        );
        let last_title = edit_versions
            .values()
            .last()
            .cloned()
            .unwrap_or_else(|| "Original".into());

        // The document as stored, before any read repair: a late write of an older version would
        // show the reserved ticket as free in the list.
        let raw = app.infra.raw_ticket(&id).await;
        assert_eq!(
            raw.get_i64("version").ok(),
            Some(successes + 1),
            "round {round}: {raw}"
        );
        let stored = app.get_ticket(&id).await.body;
        assert_eq!(stored["version"], successes + 1, "round {round}: {stored}");
        assert_eq!(stored["orderId"], order_id.to_string());
        assert_eq!(stored["title"], last_title.as_str());

        let mut events = Vec::new();
        while events.len() < (successes + 1) as usize {
            let event = updated.next().await;
            assert_eq!(event.id, id, "events of earlier rounds were all seen");
            events.push(event);
        }
        // Concurrent requests publish concurrently, so the stream order need not be the version
        // order (consumers apply by version); what must hold is one event per version, each
        // carrying the state of that version.
        events.sort_by_key(|e| e.version);
        let versions: Vec<i64> = events.iter().map(|e| e.version).collect();
        assert_eq!(
            versions,
            (1..=successes + 1).collect::<Vec<_>>(),
            "round {round}"
        );
        for event in &events[..events.len() - 1] {
            assert_eq!(Some(&event.title), edit_versions.get(&event.version));
            assert_eq!(event.order_id, None);
        }
        let reserved = events.last().expect("the reservation event");
        assert_eq!(
            (reserved.title.as_str(), reserved.order_id),
            (last_title.as_str(), Some(order_id))
        );
        println!("round {round}: {successes} of {EDITS} edits landed before the reservation");
    }
    assert_eq!(
        updated.rest_before(sentinel_updated()).await,
        Vec::new(),
        "no duplicates"
    );
}
