//! The payments service: `/api/payments`, charging through Stripe at most once per order, and the
//! order replica it checks payments against.

pub mod app;
pub mod listeners;
pub mod routes;
pub mod settings;
pub mod store;
pub mod stripe;
