//! The filters this process sent to the database, per database (feature `testing`): lets a test
//! show that a path is O(its result) without timing it. FerretDB's SQLite backend turns only a
//! filter of `_id` alone into an indexed lookup; any other filter decodes the whole collection.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use mongodb::bson::{Bson, Document};
use mongodb::event::EventHandler;
use mongodb::event::command::CommandEvent;

static ENABLED: AtomicBool = AtomicBool::new(false);
static LOG: Mutex<Vec<Query>> = Mutex::new(Vec::new());
static INSERTS: Mutex<Vec<Insert>> = Mutex::new(Vec::new());

/// One `insert` command: how many documents it carried into which collection.
#[derive(Debug, Clone, PartialEq)]
pub struct Insert {
    pub database: String,
    pub collection: String,
    pub documents: usize,
}

/// One filtering command: a read (`find`, `count`, `aggregate`) or a write's selector.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub database: String,
    pub collection: String,
    pub command: String,
    /// The filter, selector or first `$match` (`{}` when the command has none).
    pub filter: Document,
}

impl Query {
    /// Whether the filter is `_id` alone, compared for equality with one value or with a list
    /// (`$in`; of at most 500): what FerretDB looks up by index (the list with our patch
    /// `scripts/ferretdb/id-in-lookup.patch`).
    pub fn is_id_lookup(&self) -> bool {
        let mut keys = self.filter.iter();
        match (keys.next(), keys.next()) {
            (Some((key, Bson::Document(operator))), None) => key == "_id" && is_id_list(operator),
            (Some((key, _)), None) => key == "_id",
            _ => false,
        }
    }
}

/// `{$in: [ids]}` with 1 to 500 strings or ObjectIds, nothing else.
fn is_id_list(operator: &Document) -> bool {
    let mut keys = operator.iter();
    match (keys.next(), keys.next()) {
        (Some((key, Bson::Array(ids))), None) => {
            key == "$in"
                && (1..=500).contains(&ids.len())
                && ids
                    .iter()
                    .all(|id| matches!(id, Bson::String(_) | Bson::ObjectId(_)))
        }
        _ => false,
    }
}

/// Starts recording (every client connected from now on records; recording costs nothing before).
pub fn enable() {
    ENABLED.store(true, Ordering::Release);
}

/// The commands sent to `database` so far that select documents by a filter.
pub fn queries_in(database: &str) -> Vec<Query> {
    lock()
        .iter()
        .filter(|query| query.database == database)
        .cloned()
        .collect()
}

/// The `insert` commands sent to `database` so far.
pub fn inserts_in(database: &str) -> Vec<Insert> {
    lock_inserts()
        .iter()
        .filter(|insert| insert.database == database)
        .cloned()
        .collect()
}

/// Forgets what was sent to `database` (to look at one request's queries alone).
pub fn clear(database: &str) {
    lock().retain(|query| query.database != database);
    lock_inserts().retain(|insert| insert.database != database);
}

fn lock() -> std::sync::MutexGuard<'static, Vec<Query>> {
    // A Vec of plain values is never left half-written: a poisoned lock still holds a valid one.
    LOG.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock_inserts() -> std::sync::MutexGuard<'static, Vec<Insert>> {
    INSERTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(super) fn handler() -> Option<EventHandler<CommandEvent>> {
    if !ENABLED.load(Ordering::Acquire) {
        return None;
    }
    Some(EventHandler::callback(|event: CommandEvent| {
        let CommandEvent::Started(started) = event else {
            return;
        };
        let command = &started.command;
        if started.command_name == "insert" {
            lock_inserts().push(Insert {
                database: started.db.clone(),
                collection: command.get_str("insert").unwrap_or_default().to_owned(),
                documents: command.get_array("documents").map_or(0, Vec::len),
            });
            return;
        }
        let field = |name: &str| command.get_document(name).ok().cloned();
        let first = |list: &str, name: &str| {
            command
                .get_array(list)
                .ok()
                .and_then(|items| items.first())
                .and_then(Bson::as_document)
                .and_then(|item| item.get_document(name).ok().cloned())
        };
        let filter = match started.command_name.as_str() {
            "find" => field("filter"),
            "count" => field("query"),
            "findAndModify" => field("query"),
            "update" => first("updates", "q"),
            "delete" => first("deletes", "q"),
            "aggregate" => first("pipeline", "$match"),
            _ => return,
        };
        let collection = command
            .get_str(&started.command_name)
            .unwrap_or_default()
            .to_owned();
        lock().push(Query {
            database: started.db.clone(),
            collection,
            command: started.command_name.clone(),
            filter: filter.unwrap_or_default(),
        });
    }))
}

#[cfg(test)]
mod tests {
    use mongodb::bson::doc;
    use mongodb::bson::oid::ObjectId;

    use super::*;

    fn query(filter: Document) -> Query {
        Query {
            database: "db".to_owned(),
            collection: "c".to_owned(),
            command: "find".to_owned(),
            filter,
        }
    }

    #[test]
    fn an_id_or_a_short_list_of_ids_is_a_lookup_and_anything_else_is_not() {
        assert!(query(doc! { "_id": "a" }).is_id_lookup());
        assert!(query(doc! { "_id": { "$in": ["a", ObjectId::new()] } }).is_id_lookup());
        assert!(!query(doc! { "_id": { "$in": [] } }).is_id_lookup());
        assert!(!query(doc! { "_id": { "$in": ["a", 1] } }).is_id_lookup());
        assert!(!query(doc! { "_id": { "$gt": "a" } }).is_id_lookup());
        assert!(!query(doc! { "_id": "a", "version": 1 }).is_id_lookup());
        let long: Vec<Bson> = (0..501).map(|i| Bson::String(i.to_string())).collect();
        assert!(!query(doc! { "_id": { "$in": long } }).is_id_lookup());
    }
}
