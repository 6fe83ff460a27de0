//! How many documents the app's databases hold: FerretDB's SQLite backend answers every query other
//! than `{_id: …}` by reading the whole collection, so these sizes drive many of the figures, and
//! they grow with every run (the benchmark adds its users, tickets and orders to the app's data).

use anyhow::Context as _;
use futures::TryStreamExt as _;
use mongodb::bson::{Bson, Document, doc};
use mongodb::{Client, Collection, Database};
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
                .collection::<Document>(&collection)
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

/// The benchmark's users (`…@bench.test`, see `auth::email`) and their email claims (keyed by
/// the email, holding the password hash): removed before a run, so that every run signs up and
/// signs in against the same number of users, and after it, so that the local app is not left with
/// a thousand of them. Nothing else refers to them. Returns how many users were removed.
pub async fn remove_bench_users(auth: &Database) -> anyhow::Result<u64> {
    let users = delete_matching(
        &auth.collection::<Document>("users"),
        doc! { "email": { "$regex": BENCH_EMAIL } },
    )
    .await
    .context("removing the benchmark's users")?;
    delete_matching(
        &auth.collection::<Document>("emails"),
        doc! { "_id": { "$regex": BENCH_EMAIL } },
    )
    .await
    .context("removing the benchmark's email claims")?;
    Ok(users)
}

/// The emails of the benchmark's users.
const BENCH_EMAIL: &str = "@bench\\.test$";

/// The most `_id`s one delete names: FerretDB/SQLite deletes by `_id: {$in}` through its index (our
/// patch, up to 500), while a `delete_many` by any other filter binds every matching id as one SQL
/// variable each and fails past SQLite's limit (32,766; a few dozen short runs leave more users
/// than that).
const DELETE_CHUNK: usize = 500;

/// Deletes the documents of `collection` that match `filter`: their ids read once, then deleted a
/// chunk at a time. The number deleted.
pub async fn delete_matching(
    collection: &Collection<Document>,
    filter: Document,
) -> anyhow::Result<u64> {
    let documents: Vec<Document> = collection
        .find(filter)
        .projection(doc! { "_id": 1 })
        .await?
        .try_collect()
        .await?;
    let ids: Vec<Bson> = documents
        .into_iter()
        .filter_map(|document| document.get("_id").cloned())
        .collect();
    let mut removed = 0;
    for chunk in ids.chunks(DELETE_CHUNK) {
        removed += collection
            .delete_many(doc! { "_id": { "$in": chunk.to_vec() } })
            .await?
            .deleted_count;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::oid::ObjectId;

    #[tokio::test]
    async fn the_benchmarks_users_and_their_email_claims_are_removed_and_nobody_else()
    -> anyhow::Result<()> {
        common::testing::require_infra(&["MONGO_URL"]);
        let client = Client::with_uri_str(&std::env::var("MONGO_URL")?).await?;
        let auth = client.database(&format!("bench_test_{}", ObjectId::new()));
        let (users, emails) = (
            auth.collection::<Document>("users"),
            auth.collection::<Document>("emails"),
        );
        for email in [
            "a@bench.test",
            "b@bench.test",
            "someone@example.com",
            "x@bench.test.org",
        ] {
            users.insert_one(doc! { "email": email }).await?;
            emails.insert_one(doc! { "_id": email }).await?;
        }

        let removed = remove_bench_users(&auth).await?;

        let left = |collection: Collection<Document>, field: &'static str| async move {
            let mut left: Vec<String> = collection
                .find(doc! {})
                .await?
                .try_collect::<Vec<Document>>()
                .await?
                .iter()
                .filter_map(|document| document.get_str(field).ok().map(str::to_owned))
                .collect();
            left.sort();
            anyhow::Ok(left)
        };
        let expected = vec![
            "someone@example.com".to_owned(),
            "x@bench.test.org".to_owned(),
        ];
        assert_eq!(removed, 2);
        assert_eq!(left(users, "email").await?, expected);
        assert_eq!(left(emails, "_id").await?, expected);
        auth.drop().await?;
        Ok(())
    }
}
