//! Integration tests of the tickets service over real HTTP against a real FerretDB and NATS.

// A test crate: a failed step is a failed test, with the step named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;
mod metrics;
mod order_cancelled;
mod order_created;
mod outbox;
mod read_model;
mod tickets;
