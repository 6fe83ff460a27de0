//! The expiration service: schedules each order's expiry in Redis (from `order:created`) and
//! publishes `expiration:complete` when it is due. No API; `/healthz` and `/readyz` only.

pub mod app;
pub mod listeners;
pub mod poller;
pub mod scheduler;
pub mod settings;
