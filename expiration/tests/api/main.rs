//! Integration tests of the expiration service against a real Redis and a real NATS JetStream.

mod health;
mod helpers;
mod order_created;
mod scheduling;
