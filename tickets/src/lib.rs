//! The tickets service: `/api/tickets`, and the reservation of tickets from order events.

pub mod app;
pub mod catalog;
pub mod listeners;
pub mod routes;
pub mod settings;
pub mod store;
