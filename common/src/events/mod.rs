//! The events services exchange: subjects, payloads with the SPEC's JSON field names, order status.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

mod id;
mod payloads;

pub use id::{Id, MalformedId};
pub use payloads::*;

/// The six subjects of the SPEC, and `payment:updated` (every state of a payment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    TicketCreated,
    TicketUpdated,
    OrderCreated,
    OrderCancelled,
    ExpirationComplete,
    PaymentCreated,
    PaymentUpdated,
}

impl Subject {
    pub const ALL: [Subject; 7] = [
        Subject::TicketCreated,
        Subject::TicketUpdated,
        Subject::OrderCreated,
        Subject::OrderCancelled,
        Subject::ExpirationComplete,
        Subject::PaymentCreated,
        Subject::PaymentUpdated,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Subject::TicketCreated => "ticket:created",
            Subject::TicketUpdated => "ticket:updated",
            Subject::OrderCreated => "order:created",
            Subject::OrderCancelled => "order:cancelled",
            Subject::ExpirationComplete => "expiration:complete",
            Subject::PaymentCreated => "payment:created",
            Subject::PaymentUpdated => "payment:updated",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A typed event: its subject and a stable message id, so that a republished event is recognised
/// as a duplicate by JetStream (`Nats-Msg-Id`).
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    const SUBJECT: Subject;

    fn message_id(&self) -> String;
}

/// Order statuses, spelled as in the original.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OrderStatus {
    #[serde(rename = "created")]
    Created,
    #[serde(rename = "cancelled")]
    Cancelled,
    #[serde(rename = "awaiting:payment")]
    AwaitingPayment,
    #[serde(rename = "complete")]
    Complete,
}

impl OrderStatus {
    /// Whether an order in this status holds its ticket.
    pub const fn reserves_ticket(self) -> bool {
        !matches!(self, OrderStatus::Cancelled)
    }

    /// Whether the order still waits for its payment (it can be paid, cancelled or expire).
    pub const fn is_open(self) -> bool {
        matches!(self, OrderStatus::Created | OrderStatus::AwaitingPayment)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Created => "created",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::AwaitingPayment => "awaiting:payment",
            OrderStatus::Complete => "complete",
        }
    }
}
