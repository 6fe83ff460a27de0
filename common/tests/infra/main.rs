//! `common` against the real FerretDB and NATS started by the test command.

mod bus;
mod helpers;
mod readiness;
mod versioned_store;
