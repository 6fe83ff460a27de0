//! The per-replica read model (`tickets/src/catalog.rs`): filled from the database at start, kept
//! current by the events of every replica, and fresh for a writer on whichever replica answers.

use common::events::Id;
use common::store::PendingEvent;
use mongodb::bson::oid::ObjectId;
use reqwest::Method;
use serde_json::json;
use tickets::store::Ticket;

use crate::helpers::{TestApp, spawn_app, spawn_app_with, spawn_replica, user};

fn titles(reply: &common::testing::Reply) -> Vec<String> {
    reply
        .body
        .as_array()
        .expect("a list")
        .iter()
        .map(|t| t["title"].as_str().expect("a title").to_owned())
        .collect()
}

async fn list_as(app: &TestApp, cookie: Option<&str>, path: &str) -> Vec<String> {
    titles(&app.request(Method::GET, path, cookie, None).await)
}

/// A ticket written by another replica whose event never reached the stream (that replica's
/// publish failed; its outbox relay has not run yet), recorded as its seller's latest write.
async fn written_elsewhere_unpublished(app: &TestApp, seller: &str, title: &str) -> Ticket {
    let ticket = Ticket {
        id: ObjectId::new(),
        title: title.into(),
        price_cents: 1500,
        user_id: seller.into(),
        version: 0,
        order_id: None,
    };
    let events = vec![PendingEvent::of(&ticket.created_event()).expect("event")];
    app.infra
        .store
        .tickets()
        .create_unpublished(&ticket, events)
        .await
        .expect("created");
    app.infra
        .store
        .catalog()
        .remember_write(seller, &ticket)
        .await;
    ticket
}

#[tokio::test]
async fn tickets_in_the_database_before_the_start_are_listed_once_the_model_is_filled() {
    let before = crate::helpers::infra().await;
    let seller = user();
    before.insert_ticket(&seller.id).await;
    before.insert_ticket(&seller.id).await;
    let app = spawn_app_with(before).await;
    let listed = app.get("/api/tickets").await;
    assert_eq!(
        listed.body.as_array().map(Vec::len),
        Some(2),
        "{}",
        listed.body
    );
    let ready = app.get("/readyz").await;
    assert_eq!(
        ready.body["readModel"],
        json!({ "state": "live", "tickets": 2 })
    );
}

#[tokio::test]
async fn a_sellers_new_ticket_is_in_their_reads_on_any_replica_before_its_event_arrives() {
    let app = spawn_app().await;
    let seller = user();
    let ticket = written_elsewhere_unpublished(&app, &seller.id, "Fresh gig").await;

    // Everyone else sees it once its event arrives; the seller sees it at once.
    assert_eq!(
        list_as(&app, None, "/api/tickets").await,
        Vec::<String>::new()
    );
    assert_eq!(
        list_as(&app, Some(&seller.cookie), "/api/tickets").await,
        ["Fresh gig"]
    );
    assert_eq!(
        list_as(&app, Some(&seller.cookie), "/api/tickets?mine=true").await,
        ["Fresh gig"]
    );
    assert_eq!(app.infra.relay().await, 1);
    crate::helpers::eventually_listed(&app, None, &ticket.id.to_hex()).await;
}

#[tokio::test]
async fn a_sellers_edit_is_in_their_reads_on_any_replica_while_others_see_it_when_its_event_arrives()
 {
    let app = spawn_app().await;
    let (seller, id) = app.new_ticket().await;
    let stranger = user();
    let current = app.infra.ticket(&id).await;
    let edited = Ticket {
        title: "Concert, moved to Friday".into(),
        version: 1,
        ..current.clone()
    };
    let events = vec![PendingEvent::of(&edited.updated_event()).expect("event")];
    app.infra
        .store
        .tickets()
        .commit_unpublished(&current, &edited, events)
        .await
        .expect("committed");
    app.infra
        .store
        .catalog()
        .remember_write(&seller.id, &edited)
        .await;

    let read = |cookie: String| {
        let app = &app;
        let path = format!("/api/tickets/{id}");
        async move {
            app.request(Method::GET, &path, Some(&cookie), None)
                .await
                .body
        }
    };
    // Answered from memory: a stranger's read does not go to the database for it.
    assert_eq!(read(stranger.cookie.clone()).await["title"], "Concert");
    let as_seller = read(seller.cookie.clone()).await;
    assert_eq!(as_seller["title"], "Concert, moved to Friday");
    assert_eq!(as_seller["version"], 1);
    // What the seller's read brought in is this replica's view from then on.
    assert_eq!(read(stranger.cookie).await["version"], 1);
    assert_eq!(app.infra.relay().await, 1);
    crate::helpers::eventually_titled(&app, &id, "Concert, moved to Friday").await;
}

#[tokio::test]
async fn two_replicas_show_each_others_tickets_and_reservations() {
    let first = spawn_app().await;
    let second = spawn_replica(&first).await;
    let seller = user();
    let created = first.create_ticket(&seller, "Both ways", 30.0).await;
    let id = created["id"].as_str().expect("an id").to_owned();

    // The seller, at once; anyone, as soon as the event arrives.
    assert_eq!(
        list_as(&second, Some(&seller.cookie), "/api/tickets").await,
        ["Both ways"]
    );
    crate::helpers::eventually_listed(&second, None, &id).await;

    // A reservation handled by the first replica's listener leaves the second replica's listing.
    let order = Id::new();
    first.infra.reserve(&id, order).await;
    common::testing::eventually("the reservation on the second replica", || async {
        let shown = second.get_ticket(&id).await;
        (shown.body["orderId"] == order.to_string()
            && list_as(&second, None, "/api/tickets").await.is_empty())
        .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_replica_starting_while_a_reservations_record_write_is_still_on_its_way_shows_the_reservation()
 {
    let app = spawn_app().await;
    let id = app.infra.new_ticket_id().await;
    let free = app.infra.ticket(&id).await;
    let order = Id::new();
    app.infra.reserve(&id, order).await;
    // The stored ticket back at version 0: its writer has published the reservation but its record
    // write has not landed yet when the new replica reads every ticket.
    app.infra
        .db
        .collection::<Ticket>("tickets")
        .replace_one(mongodb::bson::doc! { "_id": free.id }, &free)
        .await
        .expect("replace");

    let replica = spawn_replica(&app).await;
    replica
        .wait_for_ticket(&id, |shown| {
            shown["orderId"] == order.to_string() && shown["version"] == 1
        })
        .await;
}

#[tokio::test]
async fn a_replica_filled_after_a_ticket_left_the_database_does_not_bring_it_back_from_the_replayed_events()
 {
    let app = spawn_app().await;
    // Listed, its `ticket:created` in the stream, then removed from the database (as the benchmark
    // empties the databases between its phases).
    let gone = app.infra.insert_ticket("seller").await;
    app.infra
        .db
        .collection::<Ticket>("tickets")
        .delete_one(mongodb::bson::doc! { "_id": gone.id })
        .await
        .expect("delete");

    let replica = spawn_replica(&app).await;
    // Listed after it: once the replica shows this one, it has seen the earlier creation too.
    let (_, later) = app.new_ticket().await;
    crate::helpers::eventually_listed(&replica, None, &later).await;
    let listed: Vec<String> = replica
        .get("/api/tickets")
        .await
        .body
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|t| t["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(listed, [later]);
    assert_eq!(
        replica.get_ticket(&gone.id.to_hex()).await.status,
        reqwest::StatusCode::NOT_FOUND
    );
}
