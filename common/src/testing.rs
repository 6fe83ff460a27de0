//! Helpers for integration tests (feature `testing`): real infrastructure from the environment the
//! test command sets up, with a fresh database and fresh NATS stream/subjects per test, and the kit
//! every test crate shares (replies and error bodies, users, observers, waiting, running apps).

// Test support: a failed step is a failed test, with the step named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use secrecy::SecretString;

pub mod events;
pub mod eventually;
pub mod invariants;
pub mod metrics;
pub mod observe;
pub mod reply;
pub mod running;
pub mod stripe_double;
pub mod user;

pub use events::{dead_letters_a_malformed_id, new_order_id, order_cancelled, order_created};
pub use eventually::{DEADLINE, POLL_INTERVAL, eventually, eventually_within};
pub use metrics::{metric_samples, scrape_metrics};
pub use observe::{Observer, drain, observe};
pub use reply::{
    Reply, errors, id_of, not_authorized, not_found, returned_cookie, send, session_pair,
    with_cookie_and_json,
};
pub use running::{Running, Started, start};
pub use user::User;

use crate::session::{COOKIE_NAME, SessionKeys, encode_session};
use crate::settings::Env;

/// The JWT key every test app uses.
pub const TEST_JWT_KEY: &str = "test-only-jwt-key-not-a-secret-anywhere";

/// The variables a backend requires (see `settings::BackendSettings`), with placeholder values:
/// for settings' unit tests, which connect to nothing.
pub const BACKEND_ENV: [(&str, &str); 3] = [
    ("MONGO_URL", "mongodb://x"),
    ("NATS_URL", "nats://y"),
    ("JWT_KEY", TEST_JWT_KEY),
];

fn infra_var(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => panic!(
            "{name} is not set: run the tests through `scripts/test.sh`, which starts FerretDB, NATS, Redis and stripe-mock \
             and exports their URLs"
        ),
    }
}

/// A short unique suffix for names of databases, streams, queues.
pub fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_owned()
}

/// The environment of one test: infrastructure URLs from the test command, a fresh database, a
/// fresh stream with its own subject prefix, the test JWT key, ephemeral ports (HTTP and metrics).
pub fn test_env(database_prefix: &str, extra: &[(&str, &str)]) -> Env {
    let suffix = unique_suffix();
    let mut pairs: Vec<(String, String)> = vec![
        ("HOST".into(), "127.0.0.1".into()),
        ("PORT".into(), "0".into()),
        ("METRICS_PORT".into(), "0".into()),
        ("JWT_KEY".into(), TEST_JWT_KEY.into()),
        ("MONGO_DB".into(), format!("{database_prefix}_{suffix}")),
        ("NATS_STREAM".into(), format!("test_{suffix}")),
        ("NATS_SUBJECT_PREFIX".into(), format!("t{suffix}.")),
    ];
    for name in ["MONGO_URL", "NATS_URL", "REDIS_URL"] {
        if let Ok(value) = std::env::var(name) {
            pairs.push((name.into(), value));
        }
    }
    pairs.extend(extra.iter().map(|(k, v)| ((*k).into(), (*v).into())));
    Env::from_pairs(pairs)
}

/// Logs what the test's apps do when `TEST_LOG` is set; tests stay quiet otherwise.
pub fn init_test_log(name: &'static str) {
    if std::env::var("TEST_LOG").is_ok() {
        crate::telemetry::init(name);
    }
}

/// Panics unless the infrastructure URLs are set (call first in `spawn_app`).
pub fn require_infra(names: &[&str]) {
    for name in names {
        infra_var(name);
    }
}

/// An id the test got as text (from a reply, or made up) as events carry it.
pub fn as_id(text: &str) -> crate::events::Id {
    text.parse()
        .unwrap_or_else(|_| panic!("{text:?} is not an id (24 hex characters)"))
}

/// The `Cookie` header of a signed-in user, as the auth service would have issued it.
pub fn session_cookie(user_id: &str, email: &str) -> String {
    let keys = SessionKeys::new(&SecretString::from(TEST_JWT_KEY.to_owned()));
    let token = keys
        .issue(user_id, email, Duration::from_secs(3600))
        .unwrap_or_else(|err| panic!("cannot sign a test token: {err}"));
    format!("{COOKIE_NAME}={}", encode_session(&token))
}

/// A fresh ObjectId-like user id.
pub fn new_user_id() -> String {
    mongodb::bson::oid::ObjectId::new().to_hex()
}

/// A Charge as Stripe answers `POST /v1/charges`: trimmed from a stripe-mock answer to what a card
/// charge carries (async-stripe requires every non-optional field), with `id`, `amount`, `created`
/// and `payment_method` filled in.
pub fn stripe_charge_json(id: &str, amount: i64, source: &str) -> serde_json::Value {
    let mut charge: serde_json::Value = serde_json::from_str(CHARGE_TEMPLATE)
        .unwrap_or_else(|err| panic!("charge template: {err}"));
    charge["id"] = serde_json::json!(id);
    charge["amount"] = serde_json::json!(amount);
    charge["amount_captured"] = serde_json::json!(amount);
    charge["created"] = serde_json::json!(chrono::Utc::now().timestamp());
    charge["payment_method"] = serde_json::json!(format!("card_{source}"));
    charge
}

/// A PaymentIntent as Stripe answers `/v1/payment_intents`: trimmed from a stripe-mock answer (every
/// field async-stripe requires), with `id`, `amount`, `status`, `payment_method`, `client_secret`
/// and `metadata` filled in; `next_action` and `last_payment_error` are the caller's.
pub fn stripe_intent_json(
    id: &str,
    amount: i64,
    status: &str,
    payment_method: &str,
    metadata: serde_json::Value,
) -> serde_json::Value {
    let mut intent: serde_json::Value = serde_json::from_str(INTENT_TEMPLATE)
        .unwrap_or_else(|err| panic!("intent template: {err}"));
    intent["id"] = serde_json::json!(id);
    intent["amount"] = serde_json::json!(amount);
    intent["status"] = serde_json::json!(status);
    intent["payment_method"] = serde_json::json!(payment_method);
    intent["client_secret"] = serde_json::json!(format!("{id}_secret_double"));
    intent["created"] = serde_json::json!(chrono::Utc::now().timestamp());
    intent["metadata"] = metadata;
    if status == "succeeded" {
        intent["amount_received"] = serde_json::json!(amount);
    }
    intent
}

const INTENT_TEMPLATE: &str = r#"{
  "allowed_payment_method_types": null, "amount": 0, "amount_capturable": 0,
  "amount_details": null, "amount_received": 0, "application": null,
  "application_fee_amount": null, "automatic_payment_methods": {"enabled": true, "allow_redirects": "never"},
  "canceled_at": null, "cancellation_reason": null, "capture_method": "automatic",
  "client_secret": "", "confirmation_method": "automatic", "created": 0, "currency": "eur",
  "customer": null, "customer_account": null, "description": null,
  "excluded_payment_method_types": null, "id": "", "last_payment_error": null,
  "latest_charge": null, "livemode": false, "managed_payments": null, "metadata": {},
  "next_action": null, "object": "payment_intent", "on_behalf_of": null, "payment_method": null,
  "payment_method_configuration_details": null, "payment_method_options": {},
  "payment_method_types": ["card"], "processing": null, "receipt_email": null, "review": null,
  "setup_future_usage": null, "shipping": null, "statement_descriptor": null,
  "statement_descriptor_suffix": null, "status": "", "transfer_data": null, "transfer_group": null
}"#;

const CHARGE_TEMPLATE: &str = r#"{
  "id": "", "object": "charge", "amount": 0, "amount_captured": 0, "amount_refunded": 0,
  "application": null, "application_fee": null, "application_fee_amount": null,
  "balance_transaction": "txn_1PgaxNB7WZ01zgkWEV3TLf40",
  "billing_details": {
    "address": {"city": null, "country": null, "line1": null, "line2": null,
                "postal_code": null, "state": null},
    "email": null, "name": null, "phone": null, "tax_id": null
  },
  "calculated_statement_descriptor": "TICKETING", "captured": true, "created": 0,
  "currency": "eur", "customer": null, "description": null, "disputed": false,
  "failure_balance_transaction": null, "failure_code": null, "failure_message": null,
  "fraud_details": {}, "livemode": false, "metadata": {}, "on_behalf_of": null,
  "outcome": {
    "advice_code": null, "network_advice_code": null, "network_decline_code": null,
    "network_status": "approved_by_network", "reason": null, "risk_level": "normal",
    "seller_message": "Payment complete.", "type": "authorized"
  },
  "paid": true, "payment_intent": null, "payment_method": "", "payment_method_details": null,
  "receipt_email": null, "receipt_number": null, "receipt_url": null, "refunded": false,
  "refunds": null, "review": null, "shipping": null, "source_transfer": null,
  "statement_descriptor": null, "statement_descriptor_suffix": null, "status": "succeeded",
  "transfer_data": null, "transfer_group": null
}"#;

/// A request body (a JSON object; anything else counts as `{}`) checked as `T`'s: `T`, or the
/// rule failures as `field:message` lines in the order the API answers them. For the request
/// types' unit tests.
pub fn validate_json<T: crate::extract::FromBody>(
    body: serde_json::Value,
) -> Result<T, Vec<String>> {
    let object = match body {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    crate::extract::validate_body::<T>(object).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| format!("{}:{}", e.field.unwrap_or_default(), e.message))
            .collect()
    })
}

/// The rule failures of [`validate_json`] (none when the body is valid).
pub fn rule_failures<T: crate::extract::FromBody>(body: serde_json::Value) -> Vec<String> {
    validate_json::<T>(body).err().unwrap_or_default()
}
