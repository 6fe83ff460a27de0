//! `ticket:updated`: move the replica from version `v - 1` to `v`, and only that (pattern 5 of
//! `shared/CONSISTENCY.md`). The update is not atomic on FerretDB, but every replica of this service
//! applying the same event writes the same values, so a race between them is harmless.

use common::bus::Outcome;
use common::events::TicketUpdated;
use common::store::parse_object_id;
use mongodb::bson::doc;

use super::RETRY_DELAY;
use crate::store::OrderStore;

pub async fn handle(store: &OrderStore, event: TicketUpdated) -> anyhow::Result<Outcome> {
    let Some(id) = parse_object_id(&event.id) else {
        return Ok(Outcome::Poison("the id is not an ObjectId"));
    };
    let Some(stored) = store.find_ticket(id).await? else {
        // Its ticket:created has not been applied yet.
        return Ok(Outcome::Retry(RETRY_DELAY));
    };
    if stored.version >= event.version {
        // A redelivery, or an event older than what we have.
        return Ok(Outcome::Ack);
    }
    if stored.version != event.version - 1 {
        // An earlier update is still on its way: apply that one first.
        return Ok(Outcome::Retry(RETRY_DELAY));
    }
    let result = store
        .tickets()
        .update_one(
            doc! { "_id": id, "version": stored.version },
            doc! { "$set": {
                "title": &event.title,
                "price": event.price.cents(),
                "version": event.version,
            } },
        )
        .await?;
    if result.matched_count == 0 {
        // Changed since we read it; the next delivery sees where it stands now.
        return Ok(Outcome::Retry(RETRY_DELAY));
    }
    Ok(Outcome::Ack)
}
