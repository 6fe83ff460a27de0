use common::bus::Outcome;
use common::events::TicketUpdated;
use tickets::listeners::RETRY_DELAY;

use crate::helpers::{
    UNKNOWN_TICKET, infra, inserted_ticket_updated, new_order_id, order_cancelled,
    readable_with_a_malformed_ticket_id, sentinel_updated,
};

#[tokio::test]
async fn cancelling_the_holding_order_frees_the_ticket_and_announces_it_without_order_id() {
    let infra = infra().await;
    let mut updated = infra.observe::<TicketUpdated>().await;
    let (id, order_id) = (infra.new_ticket_id().await, new_order_id());
    infra.reserve(&id, order_id).await;

    assert_eq!(infra.release(&id, order_id).await, Outcome::Ack);
    assert_eq!(infra.hold(&id).await, (None, 2));

    let mut events = [updated.next().await, updated.next().await];
    events.sort_by_key(|e| e.version);
    assert_eq!(events[1], inserted_ticket_updated(&id, 2, None));
    // A redelivered cancellation changes nothing and publishes nothing.
    assert_eq!(infra.release(&id, order_id).await, Outcome::Ack);
    assert_eq!(infra.ticket(&id).await.version, 2);
    assert_eq!(updated.rest_before(sentinel_updated()).await, Vec::new());
}

#[tokio::test]
async fn a_stale_cancellation_of_another_order_does_not_release_the_ticket() {
    let infra = infra().await;
    let (id, old, current) = (infra.new_ticket_id().await, new_order_id(), new_order_id());
    infra.reserve(&id, old).await;
    infra.release(&id, old).await;
    infra.reserve(&id, current).await;

    // The old order's cancellation again (e.g. a re-published expiration): it must not free `current`'s hold.
    assert_eq!(infra.release(&id, old).await, Outcome::Ack);
    assert_eq!(infra.hold(&id).await, (Some(current), 3));
}

#[tokio::test]
async fn a_cancellation_arriving_before_its_order_keeps_the_late_order_from_reserving() {
    let infra = infra().await;
    let mut updated = infra.observe::<TicketUpdated>().await;
    let (id, order_id) = (infra.new_ticket_id().await, new_order_id());

    assert_eq!(infra.release(&id, order_id).await, Outcome::Ack);
    for _ in 0..2 {
        assert_eq!(infra.reserve(&id, order_id).await, Outcome::Ack);
    }
    assert_eq!(infra.hold(&id).await, (None, 0));
    assert_eq!(updated.rest_before(sentinel_updated()).await, Vec::new());

    // Another order can still reserve it.
    let other = new_order_id();
    infra.reserve(&id, other).await;
    assert_eq!(infra.ticket(&id).await.order_id, Some(other));
}

#[tokio::test]
async fn an_order_redelivered_after_its_cancellation_does_not_reserve_again() {
    let infra = infra().await;
    let (id, order_id) = (infra.new_ticket_id().await, new_order_id());
    infra.reserve(&id, order_id).await;
    infra.release(&id, order_id).await;

    assert_eq!(infra.reserve(&id, order_id).await, Outcome::Ack);
    assert_eq!(infra.hold(&id).await, (None, 2));
}

#[tokio::test]
async fn a_cancellation_racing_its_own_order_never_leaves_the_ticket_held() {
    let infra = infra().await;
    for _ in 0..10 {
        let (id, order_id) = (infra.new_ticket_id().await, new_order_id());
        let (reserve, release) =
            tokio::join!(infra.reserve(&id, order_id), infra.release(&id, order_id),);
        assert_eq!((reserve, release), (Outcome::Ack, Outcome::Ack));
        let stored = infra.ticket(&id).await;
        assert_eq!(stored.order_id, None, "a cancelled order holds no ticket");
        // Either nothing happened, or a reservation and its release.
        assert!(
            matches!(stored.version, 0 | 2),
            "version {}",
            stored.version
        );
    }
}

#[tokio::test]
async fn a_cancellation_for_an_unknown_ticket_is_retried_and_one_with_a_malformed_id_cannot_be_read()
 {
    let infra = infra().await;
    let outcome = infra.release(UNKNOWN_TICKET, new_order_id()).await;
    assert_eq!(outcome, Outcome::Retry(RETRY_DELAY));
    // The bus moves a payload it cannot read to the dead-letter stream before any handler runs.
    let event = order_cancelled(UNKNOWN_TICKET, new_order_id());
    assert!(!readable_with_a_malformed_ticket_id(&event));
}
