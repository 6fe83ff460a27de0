use chrono::{DateTime, TimeDelta, Utc};
use common::bus::Outcome;
use common::events::{OrderCreated, OrderCreatedTicket, OrderStatus};
use common::money::Price;
use common::testing::{as_id, id_of, new_user_id, order_cancelled};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, User, assert_reply, errors, not_authorized, not_found, spawn_app, spawn_app_in,
    spawn_app_with,
};

const TICKET_ID_REQUIRED: &str = "Ticket ID must be provided.";

fn expires_at(body: &Value) -> DateTime<Utc> {
    let text = body["expiresAt"].as_str().expect("expiresAt");
    // JavaScript's toISOString(): milliseconds and Z.
    assert_eq!(text.len(), 24, "{text}");
    assert!(text.ends_with('Z') && text.as_bytes()[19] == b'.', "{text}");
    DateTime::parse_from_rfc3339(text)
        .expect("ISO-8601")
        .with_timezone(&Utc)
}

#[tokio::test]
async fn creating_an_order_returns_201_with_the_ticket_embedded_and_publishes_order_created() {
    let app = spawn_app().await;
    let mut created = app.observe::<OrderCreated>().await;
    let ticket = app.ticket("Concert", 2050).await;
    let user = User::new();

    let before = Utc::now();
    let body = app.order_ok(&user, &ticket.id.to_hex()).await;
    let after = Utc::now();

    let id = body["id"].as_str().expect("id").to_owned();
    assert_eq!(id.len(), 24);
    assert_eq!(
        body,
        json!({
            "id": id,
            "userId": user.id,
            "status": "created",
            "expiresAt": body["expiresAt"],
            "version": 0,
            "ticket": {"id": ticket.id.to_hex(), "title": "Concert", "price": 20.5, "version": 0}
        })
    );
    let expires = expires_at(&body);
    assert!(
        expires >= before + TimeDelta::seconds(60) - TimeDelta::milliseconds(1)
            && expires <= after + TimeDelta::seconds(60),
        "the default window is 60 s: {expires} vs {before}"
    );

    assert_eq!(
        created.next().await,
        OrderCreated {
            id: as_id(&id),
            version: 0,
            status: OrderStatus::Created,
            user_id: user.id.clone(),
            expires_at: expires,
            ticket: OrderCreatedTicket {
                id: ticket.id.into(),
                price: Price::from_cents(2050),
            },
        }
    );
    let stored = app.stored_order(&id).await;
    assert_eq!(stored.reservation, ticket.id.to_hex());
    assert_eq!(stored.status, OrderStatus::Created);
}

#[tokio::test]
async fn the_expiration_window_comes_from_the_settings() {
    let app = spawn_app_with(&[("EXPIRATION_WINDOW_SECONDS", "5")]).await;
    let ticket = app.ticket("Gig", 1000).await;
    let before = Utc::now();
    let body = app.order_ok(&User::new(), &ticket.id.to_hex()).await;
    let after = Utc::now();
    let expires = expires_at(&body);
    assert!(
        expires >= before + TimeDelta::seconds(5) - TimeDelta::milliseconds(1)
            && expires <= after + TimeDelta::seconds(5),
        "{expires} vs {before}"
    );
}

#[tokio::test]
async fn ordering_needs_a_signed_in_user_before_the_body_is_validated() {
    let app = spawn_app().await;
    let ticket = app.ticket("Gig", 1000).await;
    for body in [json!({ "ticketId": ticket.id.to_hex() }), json!({})] {
        let reply = app.post_order(None, &body).await;
        assert_eq!(
            (reply.status, reply.body),
            (StatusCode::UNAUTHORIZED, not_authorized()),
            "{body}"
        );
    }
    let forged = User {
        id: new_user_id(),
        email: "forged@test.com".into(),
        cookie: "express:sess=eyJqd3QiOiJub3BlIn0=".into(),
    };
    let reply = app.order(&forged, &ticket.id.to_hex()).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.count("orders", Default::default()).await, 0);
}

#[tokio::test]
async fn a_missing_or_empty_ticket_id_breaks_both_rules() {
    let app = spawn_app().await;
    let user = User::new();
    let both = errors(&[
        ("Invalid value", Some("ticketId")),
        (TICKET_ID_REQUIRED, Some("ticketId")),
    ]);
    for body in [
        json!({}),
        json!({ "ticketId": "" }),
        json!({ "ticketId": null }),
    ] {
        let reply = app.post_order(Some(&user), &body).await;
        assert_eq!(
            (reply.status, &reply.body),
            (StatusCode::BAD_REQUEST, &both),
            "{body}"
        );
    }
    // No body at all is validated as `{}`.
    let reply = app
        .send(Method::POST, "/api/orders", Some(&user), None)
        .await;
    assert_eq!((reply.status, reply.body), (StatusCode::BAD_REQUEST, both));
}

#[tokio::test]
async fn a_malformed_ticket_id_only_reports_that_a_ticket_id_must_be_provided() {
    let app = spawn_app().await;
    let user = User::new();
    let expected = errors(&[(TICKET_ID_REQUIRED, Some("ticketId"))]);
    for body in [
        json!({ "ticketId": "abc" }),
        json!({ "ticketId": "12-char-str!" }),
        json!({ "ticketId": "zzzzzzzzzzzzzzzzzzzzzzzz" }),
        json!({ "ticketId": "64b7f0c2a1b2c3d4e5f607189" }),
        json!({ "ticketId": 42 }),
    ] {
        let reply = app.post_order(Some(&user), &body).await;
        assert_eq!(
            (reply.status, &reply.body),
            (StatusCode::BAD_REQUEST, &expected),
            "{body}"
        );
    }
}

#[tokio::test]
async fn ordering_a_ticket_the_replica_does_not_know_is_404() {
    let app = spawn_app().await;
    let reply = app.order(&User::new(), &new_user_id()).await;
    assert_reply(reply, StatusCode::NOT_FOUND, not_found());
    assert_eq!(app.count("orders", Default::default()).await, 0);
}

#[tokio::test]
async fn listing_returns_only_the_callers_orders_of_every_status_oldest_first() {
    let app = spawn_app().await;
    let (alice, bob) = (User::new(), User::new());
    let t1 = app.ticket("First", 1000).await;
    let t2 = app.ticket("Second", 2000).await;
    let t3 = app.ticket("Third", 3000).await;
    let t4 = app.ticket("Fourth", 4000).await;
    let o1 = app.order_ok(&alice, &t1.id.to_hex()).await;
    let o2 = app.order_ok(&bob, &t2.id.to_hex()).await;
    let o3 = app.order_ok(&alice, &t3.id.to_hex()).await;
    let o4 = app.order_ok(&alice, &t4.id.to_hex()).await;
    let (o1, o3, o4) = (o1["id"].as_str(), o3["id"].as_str(), o4["id"].as_str());
    let (o1, o3, o4) = (o1.expect("id"), o3.expect("id"), o4.expect("id"));
    assert_eq!(
        app.delete_order(Some(&alice), o1).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.pay(o4).await, Outcome::Ack);

    let reply = app.list_orders(Some(&alice)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let list = reply.body.as_array().expect("array").clone();
    let summary: Vec<(Value, Value, Value, Value)> = list
        .iter()
        .map(|o| {
            (
                o["id"].clone(),
                o["status"].clone(),
                o["version"].clone(),
                o["ticket"]["title"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (json!(o1), json!("cancelled"), json!(1), json!("First")),
            (json!(o3), json!("created"), json!(0), json!("Third")),
            (json!(o4), json!("complete"), json!(1), json!("Fourth")),
        ]
    );
    assert!(list.iter().all(|o| o["userId"] == alice.id));
    assert_eq!(
        list[2]["ticket"],
        json!({"id": t4.id.to_hex(), "title": "Fourth", "price": 40, "version": 0})
    );

    let reply = app.list_orders(Some(&bob)).await;
    assert_eq!(reply.body, json!([o2]));
    let reply = app.list_orders(Some(&User::new())).await;
    assert_eq!((reply.status, reply.body), (StatusCode::OK, json!([])));
    let reply = app.list_orders(None).await;
    assert_reply(reply, StatusCode::UNAUTHORIZED, not_authorized());
}

/// `method` on `/api/orders/{id}`: 401 without a session, 404 for an id that names no order (even
/// to its would-be owner), 401 for another user than the owner.
async fn assert_for_its_owner_only(app: &TestApp, method: Method, owner: &User, id: &str) {
    let path = |id: &str| format!("/api/orders/{id}");
    let reply = app.send(method.clone(), &path(id), None, None).await;
    assert_reply(reply, StatusCode::UNAUTHORIZED, not_authorized());
    for missing in ["not-an-id".to_owned(), new_user_id()] {
        let reply = app
            .send(method.clone(), &path(&missing), Some(owner), None)
            .await;
        reply.expect_not_found(&format!("{method} {missing}"));
    }
    let stranger = User::new();
    let reply = app.send(method, &path(id), Some(&stranger), None).await;
    assert_reply(reply, StatusCode::UNAUTHORIZED, not_authorized());
}

#[tokio::test]
async fn showing_an_order_is_for_its_owner_only() {
    let app = spawn_app().await;
    let owner = User::new();
    let ticket = app.ticket("Gig", 1000).await;
    let created = app.order_ok(&owner, &ticket.id.to_hex()).await;
    let id = created["id"].as_str().expect("id");

    assert_for_its_owner_only(&app, Method::GET, &owner, id).await;
    let reply = app.get_order(None, "not-an-id").await;
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "auth is checked first"
    );

    let reply = app.get_order(Some(&owner), id).await;
    assert_eq!((reply.status, &reply.body), (StatusCode::OK, &created));
}

#[tokio::test]
async fn an_order_is_shown_the_same_by_a_replica_that_never_saw_it_and_to_its_owner_only() {
    let app = spawn_app().await;
    let owner = User::new();
    let ticket = app.ticket("Gig", 1000).await;
    let created = app.order_ok(&owner, &ticket.id.to_hex()).await;
    let id = id_of(&created);
    // The replica that took the order remembers it; this one reads its buyer and ticket first.
    let other = spawn_app_in(app.env.clone()).await;
    app.cancel_ok(&owner, &id).await;

    assert_for_its_owner_only(&other, Method::GET, &owner, &id).await;
    let shown = other.get_order(Some(&owner), &id).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(
        (
            &shown.body["status"],
            &shown.body["version"],
            &shown.body["ticket"]
        ),
        (&json!("cancelled"), &json!(1), &created["ticket"])
    );
    // And the replica that remembers it shows its newest state, not the one it remembers.
    assert_eq!(app.get_order(Some(&owner), &id).await.body, shown.body);
}

#[tokio::test]
async fn an_order_whose_newest_change_a_crash_left_unwritten_is_shown_at_that_change_by_id_lookups()
{
    use mongodb::bson::{Bson, DateTime as BsonDateTime, Document, doc};

    let app = spawn_app().await;
    let owner = User::new();
    let ticket = app.ticket("Gig", 1000).await;
    let id = id_of(&app.order_ok(&owner, &ticket.id.to_hex()).await);
    let oid = common::store::parse_object_id(&id).expect("order id");
    // Version 1 claimed by its change document, the record never written: a writer that crashed
    // between the two.
    let mut state: Document = app
        .db
        .collection::<Document>("orders")
        .find_one(doc! { "_id": oid })
        .await
        .expect("read")
        .expect("stored");
    state.insert("status", "cancelled");
    state.insert("version", 1_i64);
    app.db
        .collection::<Document>("orders_changes")
        .insert_one(doc! {
            "_id": format!("{id}:1"), "record_id": &id, "record_key": Bson::ObjectId(oid),
            "version": 1_i64, "state": state, "events": [], "at": BsonDateTime::now(),
        })
        .await
        .expect("insert change");
    app.forget_queries();

    let shown = app.get_order(Some(&owner), &id).await;

    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(
        (&shown.body["status"], &shown.body["version"]),
        (&json!("cancelled"), &json!(1))
    );
    assert_eq!(shown.body["ticket"]["title"], json!("Gig"));
    let queries = app.queries();
    assert!(!queries.is_empty(), "the lookups were recorded");
    for query in queries {
        assert!(query.is_id_lookup(), "{query:?}");
    }
}

#[tokio::test]
async fn cancelling_an_order_releases_its_ticket_and_publishes_order_cancelled() {
    let app = spawn_app().await;
    let (mut cancelled, owner, id, ticket_id) = app.observed_pending_order().await;

    assert_for_its_owner_only(&app, Method::DELETE, &owner, &id).await;
    let untouched = app.stored_order(&id).await;
    assert_eq!(
        (untouched.status, untouched.version),
        (OrderStatus::Created, 0)
    );

    let reply = app.delete_order(Some(&owner), &id).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(reply.text, "", "204 has an empty body");

    assert_eq!(
        cancelled.next().await,
        order_cancelled(as_id(&id), as_id(&ticket_id), 1)
    );
    let shown = app.get_order(Some(&owner), &id).await.body;
    assert_eq!(
        (&shown["status"], &shown["version"]),
        (&json!("cancelled"), &json!(1))
    );
    let stored = app.stored_order(&id).await;
    assert_eq!(stored.reservation, format!("released:{id}"));
    assert_eq!(app.holders_of(&ticket_id).await, 0);
}

#[tokio::test]
async fn cancelling_a_cancelled_order_again_answers_204_and_changes_nothing() {
    let app = spawn_app().await;
    let (mut cancelled, owner, id, _) = app.observed_pending_order().await;
    app.cancel_ok(&owner, &id).await;
    let reply = app.delete_order(Some(&owner), &id).await;
    assert_eq!(
        (reply.status, reply.text.as_str()),
        (StatusCode::NO_CONTENT, "")
    );
    assert_eq!(app.stored_order(&id).await.version, 1);
    assert!(app.change(&id, 2).await.is_none(), "no second version");

    assert_eq!(
        app.cancellations_of(&mut cancelled, &id).await,
        vec![1],
        "order:cancelled published once"
    );
}

#[tokio::test]
async fn a_paid_order_cannot_be_cancelled_and_keeps_its_ticket() {
    let app = spawn_app().await;
    let (owner, id, ticket_id) = app.new_pending_order().await;
    assert_eq!(app.pay(&id).await, Outcome::Ack);

    let reply = app.delete_order(Some(&owner), &id).await;
    assert_reply(
        reply,
        StatusCode::BAD_REQUEST,
        errors(&[("Cannot cancel an order that has been paid.", None)]),
    );
    let stored = app.stored_order(&id).await;
    assert_eq!((stored.status, stored.version), (OrderStatus::Complete, 1));
    assert_eq!(stored.reservation, ticket_id);
    let reply = app.order(&User::new(), &ticket_id).await;
    assert_reply(
        reply,
        StatusCode::BAD_REQUEST,
        errors(&[("Ticket is already reserved.", None)]),
    );
}

#[tokio::test]
async fn unsupported_methods_and_paths_are_404_in_the_error_shape() {
    let app = spawn_app().await;
    let user = User::new();
    let id = new_user_id();
    for (method, path) in [
        (Method::PUT, format!("/api/orders/{id}")),
        (Method::PATCH, "/api/orders".to_owned()),
        (Method::DELETE, "/api/orders".to_owned()),
        (Method::GET, format!("/api/orders/{id}/ticket")),
    ] {
        let reply = app.send(method.clone(), &path, Some(&user), None).await;
        reply.expect_not_found(&format!("{method} {path}"));
    }
}

#[tokio::test]
async fn health_and_readiness_answer_when_the_database_and_bus_are_up() {
    let app = spawn_app().await;
    let reply = app.send(Method::GET, "/healthz", None, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = app.send(Method::GET, "/readyz", None, None).await;
    assert_reply(
        reply,
        StatusCode::OK,
        json!({"status": "ready", "deadLetters": 0}),
    );
}
