use common::bus::Outcome;
use common::events::TicketCreated;
use common::money::Price;
use common::testing::{as_id, dead_letters_a_malformed_id, new_user_id};
use mongodb::bson::doc;
use orders::listeners::ticket_created::handle;
use orders::store::Ticket;

use crate::helpers::{User, eventually, spawn_app};

fn created(id: &str, title: &str, cents: i64) -> TicketCreated {
    TicketCreated {
        id: as_id(id),
        version: 0,
        title: title.to_owned(),
        price: Price::from_cents(cents),
        user_id: new_user_id(),
    }
}

#[tokio::test]
async fn a_created_ticket_is_replicated_under_its_own_id_with_its_price_in_cents() {
    let app = spawn_app().await;
    let id = new_user_id();
    let outcome = handle(&app.store, created(&id, "Concert", 1999))
        .await
        .expect("handled");
    assert_eq!(outcome, Outcome::Ack);
    let replica = app.replica(&id).await.expect("replica");
    assert_eq!(
        replica,
        Ticket {
            id: replica.id,
            title: "Concert".into(),
            price: 1999,
            version: 0,
        }
    );
    assert_eq!(replica.id.to_hex(), id);
}

#[tokio::test]
async fn a_repeated_ticket_created_is_acknowledged_and_changes_nothing() {
    let app = spawn_app().await;
    let id = new_user_id();
    for title in ["First", "Second"] {
        let outcome = handle(&app.store, created(&id, title, 1000))
            .await
            .expect("handled");
        assert_eq!(outcome, Outcome::Ack);
    }
    assert_eq!(
        app.replica(&id).await.map(|t| t.title),
        Some("First".into())
    );
    assert_eq!(app.count("tickets", doc! {}).await, 1);
}

#[tokio::test]
async fn a_ticket_created_with_a_malformed_id_is_dead_lettered() {
    let app = spawn_app().await;
    let event = created(&new_user_id(), "Gig", 1000);
    dead_letters_a_malformed_id(&app.bus, &event, "orders-service").await;
    assert_eq!(app.count("tickets", doc! {}).await, 0);
}

#[tokio::test]
async fn a_ticket_announced_on_the_bus_becomes_orderable() {
    let app = spawn_app().await;
    let id = new_user_id();
    app.publish(&created(&id, "Concert", 2500)).await;
    let replica = eventually("the replica of the announced ticket", || app.replica(&id)).await;
    assert_eq!((replica.title.as_str(), replica.price), ("Concert", 2500));
    let order = app.order_ok(&User::new(), &id).await;
    assert_eq!(order["ticket"]["price"], 25);
}
