//! `ticket:updated`: move the replica from version `v - 1` to `v`, and only that (pattern 5 of
//! `shared/CONSISTENCY.md`), with the version claimed by an insert so that a slow duplicate of `v`
//! cannot roll back `v + 1` on FerretDB, where conditional updates are read-then-write.

use common::bus::Outcome;
use common::events::TicketUpdated;
use common::store::ReplicaUpdate;
use mongodb::bson::Bson;

use super::RETRY_DELAY;
use crate::store::{OrderStore, Ticket};

pub async fn handle(store: &OrderStore, event: TicketUpdated) -> anyhow::Result<Outcome> {
    let id = event.id.oid();
    let applied = Ticket {
        id,
        title: event.title.clone(),
        price: event.price.cents(),
        version: event.version,
    };
    let update = store
        .tickets()
        .apply_replica_version(Bson::ObjectId(id), event.version, |_| applied.clone())
        .await?;
    Ok(match update {
        // Which order holds the ticket at this version is only said here: remembered, it lets a
        // paid order's page show its ticket without a read (`OrderStore::final_ticket_of`).
        ReplicaUpdate::Applied | ReplicaUpdate::AlreadyApplied => {
            store.remember_ticket(&applied, event.order_id.map(|order| order.oid()));
            Outcome::Ack
        }
        // Its ticket:created, or an earlier update, has not been applied yet.
        ReplicaUpdate::NotYet => Outcome::Retry(RETRY_DELAY),
    })
}
