//! The shared readiness checks against the real database and event bus.

use std::time::Duration;

use common::server::database_and_bus_readiness;
use common::settings::MongoSettings;
use secrecy::SecretString;

use crate::helpers::{bus, fresh_database, fresh_nats_settings};

#[tokio::test]
async fn database_and_bus_readiness_reports_both_up_when_they_answer() {
    let check =
        database_and_bus_readiness(fresh_database().await, bus(&fresh_nats_settings()).await);

    assert_eq!(check().await, vec![("database", true), ("event bus", true)]);
}

#[tokio::test]
async fn database_and_bus_readiness_names_the_database_when_it_does_not_answer() {
    // Nothing listens on port 1; the client only finds out when it is used.
    let unreachable = MongoSettings {
        url: SecretString::from("mongodb://127.0.0.1:1/?directConnection=true"),
        database: "unreachable".to_owned(),
        operation_timeout: Duration::from_millis(common::store::DEFAULT_OPERATION_TIMEOUT_MS),
        request_concurrency: common::store::DEFAULT_REQUEST_CONCURRENCY,
    };
    let db = common::store::connect(&unreachable, "common-tests")
        .await
        .expect("mongo client");
    let check = database_and_bus_readiness(db, bus(&fresh_nats_settings()).await);

    assert_eq!(
        check().await,
        vec![("database", false), ("event bus", true)]
    );
}
