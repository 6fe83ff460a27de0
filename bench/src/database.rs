//! How many documents the app's databases hold: FerretDB's SQLite backend answers every query other
//! than `{_id: …}` by reading the whole collection, so these sizes drive many of the figures, and
//! they grow with every run (the benchmark adds its users, tickets and orders to the app's data).

use mongodb::Client;
use serde::Serialize;

pub const DATABASES: [&str; 4] = ["auth", "tickets", "orders", "payments"];

#[derive(Debug, Clone, Serialize, Default)]
pub struct CollectionSize {
    pub database: String,
    pub collection: String,
    pub documents: u64,
}

pub async fn sizes(client: &Client) -> anyhow::Result<Vec<CollectionSize>> {
    let mut sizes = Vec::new();
    for database in DATABASES {
        let db = client.database(database);
        let mut names = db.list_collection_names().await?;
        names.sort();
        for collection in names {
            let documents = db
                .collection::<mongodb::bson::Document>(&collection)
                .estimated_document_count()
                .await?;
            sizes.push(CollectionSize {
                database: database.to_owned(),
                collection,
                documents,
            });
        }
    }
    Ok(sizes)
}

/// The benchmark's users (`…@bench.test`, see `auth::email`): removed before a run, so that every
/// run signs up and signs in against the same number of users, and after it, so that the local app
/// is not left with a thousand of them. Nothing else refers to a user's document.
pub async fn remove_bench_users(client: &Client) -> anyhow::Result<u64> {
    let deleted = client
        .database("auth")
        .collection::<mongodb::bson::Document>("users")
        .delete_many(mongodb::bson::doc! { "email": { "$regex": "@bench\\.test$" } })
        .await?;
    Ok(deleted.deleted_count)
}
