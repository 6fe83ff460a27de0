//! Users found by email through `emails` (keyed by the normalised address): backfill of users
//! written before it, a crash between its two writes, and lookups FerretDB serves by index.

use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Document, doc};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{database, fresh_settings, spawn_app, spawn_app_on};
use common::testing::errors;

/// A `users` record as the previous version wrote it (no `emails` claim).
async fn old_user(email: &str, password: &str) -> Document {
    let hash = auth::password::hash(password.to_owned())
        .await
        .expect("hashing");
    doc! { "_id": ObjectId::new(), "email": email, "password_hash": hash }
}

#[tokio::test]
async fn users_written_before_the_emails_collection_sign_in_and_keep_their_address_after_a_start() {
    let settings = fresh_settings();
    let db = database(&settings).await;
    let old = old_user("old@test.com", "password").await;
    let id = old.get_object_id("_id").unwrap().to_hex();
    db.collection::<Document>("users")
        .insert_one(old)
        .await
        .unwrap();

    let app = spawn_app_on(settings).await;

    let reply = app.signin("old@test.com", "password").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body, json!({ "email": "old@test.com", "id": id }));
    let reply = app.signup("OLD@test.com", "password2").await;
    assert_eq!(
        (reply.status, reply.body),
        (StatusCode::BAD_REQUEST, errors(&[("Email in use", None)]))
    );
}

#[tokio::test]
async fn the_backfill_runs_once_and_a_second_start_copies_nothing_twice() {
    let settings = fresh_settings();
    let db = database(&settings).await;
    db.collection::<Document>("users")
        .insert_one(old_user("twice@test.com", "password").await)
        .await
        .unwrap();
    let store = auth::store::UserStore::new(&db);

    assert_eq!(store.backfill_emails().await.unwrap(), 1);
    assert_eq!(store.backfill_emails().await.unwrap(), 0);
    let claims = db
        .collection::<Document>("emails")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(claims, 1);
}

#[tokio::test]
async fn a_backfill_cut_short_finishes_on_the_next_start_without_duplicating_claims() {
    let settings = fresh_settings();
    let db = database(&settings).await;
    let users = db.collection::<Document>("users");
    let first = old_user("first@test.com", "password").await;
    // The interrupted start had copied the first user and not marked the backfill done.
    let claim = doc! {
        "_id": "first@test.com",
        "userId": first.get_object_id("_id").unwrap(),
        "password_hash": first.get_str("password_hash").unwrap(),
    };
    users.insert_one(first).await.unwrap();
    users
        .insert_one(old_user("second@test.com", "password").await)
        .await
        .unwrap();
    db.collection::<Document>("emails")
        .insert_one(claim)
        .await
        .unwrap();

    let app = spawn_app_on(settings).await;

    for email in ["first@test.com", "second@test.com"] {
        assert_eq!(app.signin(email, "password").await.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn an_account_whose_users_record_a_crash_never_wrote_still_signs_in_and_keeps_its_address() {
    let settings = fresh_settings();
    let db = database(&settings).await;
    let app = spawn_app_on(settings).await;
    let id = app.signup("crash@test.com", "password").await.body["id"].clone();
    // As if the process died between the claim and the users record.
    db.collection::<Document>("users")
        .delete_many(doc! {})
        .await
        .unwrap();

    let reply = app.signin("crash@test.com", "password").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["id"], id);
    assert_eq!(
        app.signup("crash@test.com", "password").await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn signup_and_signin_look_users_up_by_id_alone_whatever_the_number_of_users() {
    let app = spawn_app().await;
    app.signup("someone@test.com", "password").await;
    common::store::query_log::clear(&app.database);

    assert_eq!(
        app.signup("me@test.com", "password").await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        app.signin("me@test.com", "password").await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.signin("nobody@test.com", "password").await.status,
        StatusCode::BAD_REQUEST
    );

    let queries = app.queries();
    assert!(!queries.is_empty(), "the lookups were recorded");
    for query in queries {
        assert!(query.is_id_lookup(), "{query:?}");
    }
}
