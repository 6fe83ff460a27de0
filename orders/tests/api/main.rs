//! Integration tests of the orders service over real HTTP against a real FerretDB and NATS.

mod expiration_complete;
mod helpers;
mod orders;
mod payment_created;
mod payment_updated;
mod reservation;
mod ticket_created;
mod ticket_updated;
