//! `common` against the real FerretDB and NATS started by the test command.

// A test crate: a failed step is a failed test, with the step named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bus;
mod helpers;
mod readiness;
mod trace_context;
mod versioned_store;
