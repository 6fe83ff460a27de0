//! Integration tests of the tickets service over real HTTP against a real FerretDB and NATS.

mod helpers;
mod order_cancelled;
mod order_created;
mod outbox;
mod tickets;
