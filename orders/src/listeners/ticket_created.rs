//! `ticket:created`: add the ticket to the replica under the same id.

use common::bus::Outcome;
use common::events::TicketCreated;

use crate::store::{OrderStore, Ticket};

pub async fn handle(store: &OrderStore, event: TicketCreated) -> anyhow::Result<Outcome> {
    let id = event.id.oid();
    let ticket = Ticket {
        id,
        title: event.title,
        price: event.price.cents(),
        version: event.version,
    };
    // Inserted now, or already (a redelivery, or another replica of this service got there first).
    store.tickets().create_replica(&ticket).await?;
    Ok(Outcome::Ack)
}
