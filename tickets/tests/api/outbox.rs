use common::events::{TicketCreated, TicketUpdated};
use common::store::PendingEvent;

use crate::helpers::{infra, new_order_id, sentinel_created, sentinel_updated, spawn_app};
use tickets::store::Ticket;

#[tokio::test]
async fn a_ticket_stored_without_its_event_is_published_once_by_the_relay() {
    let infra = infra().await;
    let mut created = infra.observe::<TicketCreated>().await;
    let ticket = Ticket {
        id: mongodb::bson::oid::ObjectId::new(),
        title: "Concert".into(),
        price_cents: 1999,
        user_id: "owner-1".into(),
        version: 0,
        order_id: None,
    };
    // The service "crashes" right after the commit: nothing is published.
    let event = ticket.created_event();
    infra
        .store
        .tickets()
        .create_unpublished(&ticket, vec![PendingEvent::of(&event).expect("event")])
        .await
        .expect("created");

    assert_eq!(infra.relay().await, 1);
    assert_eq!(created.next().await, event);
    // Marked published: the next pass has nothing to do.
    assert_eq!(infra.relay().await, 0);
    assert_eq!(created.rest_before(sentinel_created()).await, Vec::new());
}

#[tokio::test]
async fn an_event_published_just_before_a_crash_is_relayed_again_and_dropped_as_a_duplicate() {
    let infra = infra().await;
    let mut updated = infra.observe::<TicketUpdated>().await;
    let ticket = infra.insert_ticket("owner-1").await;
    let order_id = new_order_id();
    let reserved = infra.reserve_unpublished(&ticket, order_id).await;
    // Published, but the crash came before the change was marked published.
    infra
        .bus
        .publish(&reserved.updated_event())
        .await
        .expect("published");

    assert_eq!(
        infra.relay().await,
        1,
        "the relay cannot know it was published"
    );
    let event = updated.next().await;
    assert_eq!((event.version, event.order_id), (1, Some(order_id)));
    assert_eq!(
        updated.rest_before(sentinel_updated()).await,
        Vec::new(),
        "the broker kept one copy"
    );
}

#[tokio::test]
async fn the_running_service_relays_a_change_that_was_never_published() {
    let app = spawn_app().await;
    let mut updated = app.infra.observe::<TicketUpdated>().await;
    let (_, id) = app.new_ticket().await;
    let id = id.as_str();
    let order_id = new_order_id();
    let current = app.infra.ticket(id).await;
    app.infra.reserve_unpublished(&current, order_id).await;

    let started = tokio::time::Instant::now();
    let event = updated.next().await;
    println!("relayed after {:?}", started.elapsed());
    assert_eq!(
        (event.id.to_string().as_str(), event.version, event.order_id),
        (id, 1, Some(order_id))
    );
    assert_eq!(updated.rest_before(sentinel_updated()).await, Vec::new());
    assert_eq!(app.get_ticket(id).await.body["version"], 1);
}
