//! Integration tests of the expiration service against a real Redis and a real NATS JetStream.

// A test crate: a failed step is a failed test, with the step named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod health;
mod helpers;
mod metrics;
mod order_created;
mod scheduling;
mod trace;
