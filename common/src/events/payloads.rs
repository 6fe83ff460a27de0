//! One struct per subject. Field names follow the SPEC (camelCase JSON).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Event, Id, OrderStatus, Subject};
use crate::money::Price;

/// `impl Event`: the subject of the same name, and the message id (what the bus deduplicates on)
/// made of the subject and the fields named, joined by `:`.
macro_rules! event {
    ($event:ident: $($field:ident),+) => {
        impl Event for $event {
            const SUBJECT: Subject = Subject::$event;
            fn message_id(&self) -> String {
                [Self::SUBJECT.to_string() $(, self.$field.to_string())+].join(":")
            }
        }
    };
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketCreated {
    pub id: Id,
    pub version: i64,
    pub title: String,
    pub price: Price,
    pub user_id: String,
}

event!(TicketCreated: id, version);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketUpdated {
    pub id: Id,
    pub version: i64,
    pub title: String,
    pub price: Price,
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<Id>,
}

event!(TicketUpdated: id, version);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderCreatedTicket {
    pub id: Id,
    pub price: Price,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreated {
    pub id: Id,
    pub version: i64,
    pub status: OrderStatus,
    pub user_id: String,
    #[serde(with = "crate::time::iso_millis")]
    pub expires_at: DateTime<Utc>,
    pub ticket: OrderCreatedTicket,
}

event!(OrderCreated: id, version);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketRef {
    pub id: Id,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub id: Id,
    pub version: i64,
    pub ticket: TicketRef,
}

event!(OrderCancelled: id, version);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExpirationComplete {
    pub order_id: Id,
}

// An order expires once, so its id alone identifies the event.
event!(ExpirationComplete: order_id);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentCreated {
    pub id: String,
    pub order_id: Id,
    pub stripe_id: String,
}

// An order is paid at most once.
event!(PaymentCreated: order_id);

/// Every change of an order's payment (an addition to the SPEC's six subjects): `status` is one of
/// `pending`, `unknown`, `failed`, `succeeded`, `refunding`, `refunded`. `payment:created` is still
/// published, in its SPEC shape, when a payment succeeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentUpdated {
    /// The payment attempt's id (the `id` of `payment:created` and of the API's answer).
    pub id: String,
    pub order_id: Id,
    /// The version of the order's payment record: one event per version.
    pub version: i64,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<String>,
}

event!(PaymentUpdated: order_id, version);

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    const T1: &str = "64b7f0c2a1b2c3d4e5f60071";
    const O1: &str = "64b7f0c2a1b2c3d4e5f60001";

    fn round_trip<E: Event + PartialEq + std::fmt::Debug>(event: &E, expected: serde_json::Value) {
        let value = serde_json::to_value(event).unwrap_or_default();
        assert_eq!(value, expected);
        let back: Option<E> = serde_json::from_value(value).ok();
        assert_eq!(back.as_ref(), Some(event));
    }

    #[test]
    fn ticket_events_use_the_spec_field_names() {
        round_trip(
            &TicketCreated {
                id: T1.parse().unwrap_or_default(),
                version: 0,
                title: "Gig".into(),
                price: Price::from_cents(2050),
                user_id: "u1".into(),
            },
            json!({"id": T1, "version": 0, "title": "Gig", "price": 20.5, "userId": "u1"}),
        );
        round_trip(
            &TicketUpdated {
                id: T1.parse().unwrap_or_default(),
                version: 2,
                title: "Gig".into(),
                price: Price::from_cents(2000),
                user_id: "u1".into(),
                order_id: O1.parse().ok(),
            },
            json!({"id": T1, "version": 2, "title": "Gig", "price": 20, "userId": "u1", "orderId": O1}),
        );
        round_trip(
            &TicketUpdated {
                id: T1.parse().unwrap_or_default(),
                version: 3,
                title: "Gig".into(),
                price: Price::from_cents(2000),
                user_id: "u1".into(),
                order_id: None,
            },
            json!({"id": T1, "version": 3, "title": "Gig", "price": 20, "userId": "u1"}),
        );
    }

    #[test]
    fn order_events_use_the_spec_field_names() {
        let expires_at = Utc
            .timestamp_millis_opt(1_700_000_000_000)
            .single()
            .unwrap_or_default();
        round_trip(
            &OrderCreated {
                id: O1.parse().unwrap_or_default(),
                version: 0,
                status: OrderStatus::Created,
                user_id: "u1".into(),
                expires_at,
                ticket: OrderCreatedTicket {
                    id: T1.parse().unwrap_or_default(),
                    price: Price::from_cents(1000),
                },
            },
            json!({"id": O1, "version": 0, "status": "created", "userId": "u1",
                   "expiresAt": "2023-11-14T22:13:20.000Z", "ticket": {"id": T1, "price": 10}}),
        );
        round_trip(
            &OrderCancelled {
                id: O1.parse().unwrap_or_default(),
                version: 1,
                ticket: TicketRef {
                    id: T1.parse().unwrap_or_default(),
                },
            },
            json!({"id": O1, "version": 1, "ticket": {"id": T1}}),
        );
        round_trip(
            &ExpirationComplete {
                order_id: O1.parse().unwrap_or_default(),
            },
            json!({"orderId": O1}),
        );
        round_trip(
            &PaymentCreated {
                id: "p1".into(),
                order_id: O1.parse().unwrap_or_default(),
                stripe_id: "ch_1".into(),
            },
            json!({"id": "p1", "orderId": O1, "stripeId": "ch_1"}),
        );
    }

    #[test]
    fn order_statuses_are_spelled_as_in_the_original() {
        let all = [
            OrderStatus::Created,
            OrderStatus::Cancelled,
            OrderStatus::AwaitingPayment,
            OrderStatus::Complete,
        ];
        let texts: Vec<String> = all
            .iter()
            .filter_map(|s| serde_json::to_value(s).ok())
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        assert_eq!(
            texts,
            ["created", "cancelled", "awaiting:payment", "complete"]
        );
        assert!(all.iter().all(|s| {
            serde_json::to_value(s)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .as_deref()
                == Some(s.as_str())
        }));
    }

    #[test]
    fn message_ids_are_stable_per_subject_record_and_version() {
        let event = OrderCancelled {
            id: O1.parse().unwrap_or_default(),
            version: 1,
            ticket: TicketRef {
                id: T1.parse().unwrap_or_default(),
            },
        };
        assert_eq!(event.message_id(), format!("order:cancelled:{O1}:1"));
        assert_eq!(
            ExpirationComplete {
                order_id: O1.parse().unwrap_or_default()
            }
            .message_id(),
            format!("expiration:complete:{O1}")
        );
    }
}
