//! The payments service: `/api/payments`, paying an order through Stripe as a saga (at most one
//! charge per attempt, one open attempt per order, uncertain answers reconciled, charges of
//! cancelled orders refunded), and the order replica it checks payments against.

pub mod app;
pub mod listeners;
pub mod routes;
pub mod saga;
pub mod settings;
pub mod store;
pub mod stripe;
