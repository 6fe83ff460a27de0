//! One module per subscribed subject. Each `handle` is a plain async fn that tests call directly.

pub mod order_created;

/// The queue group of this service's listeners (the original's).
pub const QUEUE_GROUP: &str = "expiration-service";
