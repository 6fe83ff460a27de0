//! The orders service: `/api/orders`, the ticket replica and the order lifecycle (expiry, with a
//! sweeper behind the expiration service; payment; refunds).
//! At most one live order per ticket, decided by a unique key at insert time.

pub mod app;
pub mod listeners;
pub mod recent;
pub mod routes;
pub mod settings;
pub mod store;
pub mod sweeper;
