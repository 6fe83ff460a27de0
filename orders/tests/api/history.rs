//! What keeps `GET /api/orders` and the expiry sweeper O(their result) rather than O(every order
//! ever made): the per-user order ids (`user_orders`) and the expiry markers (`order_expiries`),
//! both `_id`-keyed, written before the order, with what a crash or a lost race leaves behind.

use chrono::Utc;
use futures::future::join_all;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Bson, Document, doc};
use orders::store::{ExpiryMarker, UserOrders};
use orders::sweeper::sweep_once;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{User, spawn_app, spawn_app_in, spawn_app_with};
use common::events::OrderStatus;
use common::testing::{id_of, test_env};

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("array")
        .iter()
        .map(|order| order["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn listing_a_users_orders_looks_up_only_by_id_however_many_other_orders_exist() {
    let app = spawn_app().await;
    let me = User::new();
    let (mine, _) = app.pending_order(&me).await;
    for _ in 0..3 {
        app.new_pending_order().await;
    }
    app.forget_queries();

    let reply = app.list_orders(Some(&me)).await;

    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(ids(&reply.body), vec![mine]);
    let queries = app.queries();
    assert!(!queries.is_empty(), "the lookups were recorded");
    for query in queries {
        assert!(query.is_id_lookup(), "{query:?}");
    }
}

#[tokio::test]
async fn orders_placed_at_once_by_one_user_are_all_listed() {
    let app = spawn_app().await;
    let me = User::new();
    let mut tickets = Vec::new();
    for i in 0..8 {
        tickets.push(app.ticket(&format!("T{i}"), 1000).await.id.to_hex());
    }

    let created = join_all(tickets.iter().map(|t| app.order_ok(&me, t))).await;

    let mut expected: Vec<String> = created.iter().map(id_of).collect();
    expected.sort();
    let listed = ids(&app.list_orders(Some(&me)).await.body);
    assert_eq!(listed, expected, "none lost, oldest first");
}

#[tokio::test]
async fn an_order_id_listed_without_its_order_is_skipped() {
    let app = spawn_app().await;
    let me = User::new();
    let (mine, _) = app.pending_order(&me).await;
    // As a create leaves it when it crashes between the user's entry and the order itself.
    app.store
        .user_orders()
        .modify::<common::store::StoreError, _>(
            &app.bus,
            Bson::String(me.id.clone()),
            |current: &UserOrders| {
                let mut next = current.clone();
                next.order_ids.push(ObjectId::new());
                next.version += 1;
                Ok(common::store::Decision::Commit {
                    next,
                    events: Vec::new(),
                })
            },
        )
        .await
        .expect("dangling id");

    let reply = app.list_orders(Some(&me)).await;

    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(ids(&reply.body), vec![mine]);
}

#[tokio::test]
async fn a_buyer_who_loses_the_ticket_keeps_no_order_id_or_expiry_marker() {
    let app = spawn_app().await;
    let (winner, loser) = (User::new(), User::new());
    let ticket = app.ticket("Gig", 1000).await.id.to_hex();
    app.order_ok(&winner, &ticket).await;

    assert_eq!(
        app.order(&loser, &ticket).await.status,
        StatusCode::BAD_REQUEST
    );

    assert_eq!(
        app.count("user_orders", doc! { "_id": &loser.id }).await,
        0,
        "the shortcut answered before anything was written"
    );
    assert_eq!(app.count("order_expiries", doc! {}).await, 1);
}

/// An order as the previous version wrote it: in `orders` only.
fn old_order(user_id: &str, expires_in_ms: i64) -> Document {
    let id = ObjectId::new();
    let ticket = ObjectId::new().to_hex();
    let expires_at =
        mongodb::bson::DateTime::from_millis(Utc::now().timestamp_millis() + expires_in_ms);
    doc! {
        "_id": id, "userId": user_id, "status": "created", "expiresAt": expires_at,
        "version": 0_i64, "ticketId": &ticket, "reservation": &ticket,
    }
}

#[tokio::test]
async fn orders_written_before_the_user_index_are_listed_and_swept_after_a_start() {
    let env = test_env("orders", &[("EXPIRY_SWEEP_GRACE_SECONDS", "0")]);
    // A first start creates the database; its orders collection is then filled as before.
    let first = spawn_app_in(env.clone()).await;
    first.stop();
    let db = first.db.clone();
    db.collection::<Document>("migrations")
        .delete_many(doc! {})
        .await
        .expect("forget the migrations");
    let me = User::new();
    let orders = db.collection::<Document>("orders");
    let overdue = old_order(&me.id, -60_000);
    let open = old_order(&me.id, 600_000);
    let (overdue_id, open_id) = (
        overdue.get_object_id("_id").expect("id"),
        open.get_object_id("_id").expect("id"),
    );
    orders.insert_one(overdue).await.expect("old order");
    orders.insert_one(open).await.expect("old order");
    orders
        .insert_one(old_order(&User::new().id, 600_000))
        .await
        .expect("someone else's");

    let app = spawn_app_in(env).await;

    let mut expected = vec![overdue_id.to_hex(), open_id.to_hex()];
    expected.sort();
    assert_eq!(ids(&app.list_orders(Some(&me)).await.body), expected);
    assert_eq!(
        sweep_once(&app.store, &app.bus, std::time::Duration::ZERO)
            .await
            .expect("a sweep"),
        1
    );
    let swept = app.stored_order(&overdue_id.to_hex()).await;
    assert_eq!(swept.status, OrderStatus::Cancelled);
}

#[tokio::test]
async fn the_sweeper_reads_only_its_markers_and_drops_those_of_settled_or_long_missing_orders() {
    let app = spawn_app_with(&[("EXPIRATION_WINDOW_SECONDS", "1")]).await;
    let user = User::new();
    let (paid, _) = app.pending_order(&user).await;
    app.pay(&paid).await;
    let expiries = app.db.collection::<ExpiryMarker>("order_expiries");
    // Markers whose order a crash never wrote: one just now, one long ago.
    let missing = |ago: i64| ExpiryMarker {
        order_id: ObjectId::new(),
        expires_at: Utc::now() - chrono::Duration::seconds(ago),
    };
    let (recent, old) = (missing(5), missing(3600));
    expiries.insert_one(&recent).await.expect("marker");
    expiries.insert_one(&old).await.expect("marker");
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    app.forget_queries();

    let cancelled = sweep_once(&app.store, &app.bus, std::time::Duration::ZERO)
        .await
        .expect("a sweep");

    assert_eq!(cancelled, 0);
    let left: Vec<ObjectId> = app
        .store
        .overdue(Utc::now(), 100)
        .await
        .expect("markers")
        .into_iter()
        .map(|marker| marker.order_id)
        .collect();
    assert_eq!(
        left,
        vec![recent.order_id],
        "a stalled create may still land"
    );
    for query in app.queries() {
        assert!(
            query.is_id_lookup() || query.collection == "order_expiries",
            "{query:?}"
        );
    }
}
