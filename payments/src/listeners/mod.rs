//! Event listeners of the payments service (queue group `payments-service`): one file per subject.
//! They keep the order replica the payment route reads.

use std::time::Duration;

pub mod order_cancelled;
pub mod order_created;

/// The queue group of the original.
pub const QUEUE_GROUP: &str = "payments-service";

/// How long to wait before an event whose predecessor has not been applied yet is delivered again.
pub const RETRY_DELAY: Duration = Duration::from_millis(500);
