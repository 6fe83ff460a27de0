//! Shared building blocks of the ticketing services. Nothing here knows about any particular service.

pub mod backend;
pub mod bus;
pub mod client_address;
pub mod error;
pub mod events;
pub mod extract;
pub mod metrics;
pub mod money;
pub mod server;
pub mod session;
pub mod settings;
pub mod store;
pub mod telemetry;
#[cfg(test)]
mod test_support;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
