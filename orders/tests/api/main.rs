//! Integration tests of the orders service over real HTTP against a real FerretDB and NATS.

// A test crate: a failed step is a failed test, with the step named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod expiration_complete;
mod helpers;
mod history;
mod orders;
mod payment_created;
mod payment_updated;
mod reservation;
mod ticket_created;
mod ticket_updated;
