//! `/api/orders`: create (reserve a ticket), list, show, cancel.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use common::error::parse_id;
use common::error::{ApiError, ApiResult};
use common::events::OrderStatus;
use common::extract::{FromBody, JsonBody, RequireAuth};
use common::money::Price;
use common::store::{Decision, VersionedRecord, parse_object_id};
use mongodb::bson::Bson;
use mongodb::bson::oid::ObjectId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use validator::{Validate, ValidationError};

use crate::app::AppState;
use crate::store::{Order, Reservation, Ticket, cancellation};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/orders", post(create).get(list))
        .route("/api/orders/{order_id}", get(show).delete(cancel))
}

/// express-validator's message for a rule declared without one (`not().isEmpty()`).
pub const INVALID_VALUE: &str = common::extract::INVALID_VALUE;
pub const TICKET_ID_REQUIRED: &str = "Ticket ID must be provided.";
pub const TICKET_RESERVED: &str = "Ticket is already reserved.";
pub const CANNOT_CANCEL_PAID: &str = "Cannot cancel an order that has been paid.";

/// The body of `POST /api/orders`.
#[derive(Debug)]
pub struct NewOrder {
    pub ticket_id: ObjectId,
}

/// The body as sent: the id is read as any JSON, so a number or a list fails the id rule instead
/// of failing to parse. As in the original, two rules: not empty (with express-validator's
/// message for a rule without one), then a valid id; the `message`s are the constants above.
#[derive(Debug, Default, Deserialize, Validate)]
#[serde(default)]
pub struct NewOrderRequest {
    #[serde(rename = "ticketId")]
    #[validate(
        custom(function = "not_empty", message = "Invalid value"),
        custom(function = "object_id", message = "Ticket ID must be provided.")
    )]
    ticket_id: Value,
}

impl FromBody for NewOrder {
    type Raw = NewOrderRequest;
    const FIELDS: &'static [(&'static str, &'static str)] = &[("ticket_id", "ticketId")];

    fn from_raw(raw: NewOrderRequest) -> Option<Self> {
        ticket_id(&raw.ticket_id).map(|ticket_id| NewOrder { ticket_id })
    }
}

/// The id in a (trimmed) string of 24 hex characters.
fn ticket_id(value: &Value) -> Option<ObjectId> {
    value.as_str().map(str::trim).and_then(parse_object_id)
}

/// Absent, `null` and blank strings are empty; any other value (even `42`) is not.
fn not_empty(value: &Value) -> Result<(), ValidationError> {
    let empty = match value {
        Value::Null => true,
        Value::String(text) => text.trim().is_empty(),
        _ => false,
    };
    if empty {
        Err(ValidationError::new("not_empty"))
    } else {
        Ok(())
    }
}

fn object_id(value: &Value) -> Result<(), ValidationError> {
    match ticket_id(value) {
        Some(_) => Ok(()),
        None => Err(ValidationError::new("object_id")),
    }
}

/// Order JSON: the stored order with its ticket embedded from the replica (like mongoose's
/// `populate`, `null` if the replica lacks it).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    pub id: String,
    pub user_id: String,
    pub status: OrderStatus,
    #[serde(with = "common::time::iso_millis")]
    pub expires_at: DateTime<Utc>,
    pub version: i64,
    pub ticket: Option<TicketView>,
    /// Only on a cancelled order whose charge was refunded (an addition to the SPEC's shape).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub refunded: bool,
}

#[derive(Debug, Serialize)]
pub struct TicketView {
    pub id: String,
    pub title: String,
    pub price: Price,
    pub version: i64,
}

impl OrderView {
    pub fn new(order: &Order, ticket: Option<&Ticket>) -> Self {
        if ticket.is_none() {
            tracing::warn!(order_id = %order.id, ticket_id = %order.ticket_id,
                "the ticket of an order is missing from the replica");
        }
        Self {
            id: order.id.to_hex(),
            user_id: order.user_id.clone(),
            status: order.status,
            expires_at: order.expires_at,
            version: order.version,
            ticket: ticket.map(|ticket| TicketView {
                id: ticket.id.to_hex(),
                title: ticket.title.clone(),
                price: ticket.price(),
                version: ticket.version,
            }),
            refunded: order.refund.is_some(),
        }
    }
}

#[tracing::instrument(name = "create_order", skip_all, fields(user_id = %user.id))]
async fn create(
    State(state): State<AppState>,
    RequireAuth(user): RequireAuth,
    JsonBody(body): JsonBody<NewOrder>,
) -> ApiResult<Response> {
    let reserved = state
        .store
        .reserve_ticket(
            &state.bus,
            &user.id,
            body.ticket_id,
            state.expiration_window,
        )
        .await?;
    let (order, ticket) = match reserved {
        Reservation::Created { order, ticket } => (order, ticket),
        Reservation::Taken => return Err(ApiError::bad_request(TICKET_RESERVED)),
        Reservation::UnknownTicket => return Err(ApiError::NotFound),
    };
    tracing::info!(order_id = %order.id, ticket_id = %order.ticket_id, "order created");
    Ok((
        StatusCode::CREATED,
        Json(OrderView::new(&order, Some(&ticket))),
    )
        .into_response())
}

async fn list(
    State(state): State<AppState>,
    RequireAuth(user): RequireAuth,
) -> ApiResult<Json<Vec<OrderView>>> {
    let orders = state.store.orders_of_user(&user.id).await?;
    let tickets = state.store.tickets_of(&orders).await?;
    Ok(Json(
        orders
            .iter()
            .map(|order| OrderView::new(order, tickets.get(&order.ticket_id)))
            .collect(),
    ))
}

async fn show(
    State(state): State<AppState>,
    RequireAuth(user): RequireAuth,
    Path(order_id): Path<String>,
) -> ApiResult<Json<OrderView>> {
    let id = parse_id(&order_id)?;
    let orders = state.store.orders();
    // Neither the buyer nor the ticket of an order ever changes: an order this process created,
    // changed or showed lately says who may see it and names the ticket without a read.
    let (base, remembered) = match state.store.recent_order(id) {
        Some(seen) => (seen, true),
        None => {
            let stored = orders.stored(Bson::ObjectId(id)).await?;
            (stored.ok_or(ApiError::NotFound)?, false)
        }
    };
    if base.user_id != user.id {
        return Err(ApiError::NotAuthorized);
    }
    let ticket_id = base.ticket_id.oid();
    let (order, ticket) = if base.is_final() {
        // A paid order never changes again (a cancelled one still records its refund), and once
        // this process has applied its ticket's reservation, neither does its ticket: a buyer's
        // page polls this right after paying.
        let ticket = match state.store.final_ticket_of(&base) {
            Some(ticket) => Some(ticket),
            None => state.store.find_ticket(ticket_id).await?,
        };
        (base, ticket)
    } else {
        // Otherwise the order only needs to know that no change came after the copy remembered
        // (one lookup), or to catch up from the stored record; the ticket is read meanwhile.
        let order = async {
            if remembered {
                orders.newest_from(base).await
            } else {
                orders.catch_up(base).await
            }
        };
        let (order, ticket) = tokio::join!(order, state.store.find_ticket(ticket_id));
        (order?, ticket?)
    };
    state.store.remember(&order);
    Ok(Json(OrderView::new(&order, ticket.as_ref())))
}

#[tracing::instrument(name = "cancel_order", skip_all, fields(user_id = %user.id, %order_id))]
async fn cancel(
    State(state): State<AppState>,
    RequireAuth(user): RequireAuth,
    Path(order_id): Path<String>,
) -> ApiResult<StatusCode> {
    let key = Bson::ObjectId(parse_id(&order_id)?);
    let (order, committed) = state
        .store
        .orders()
        .modify(&state.bus, key, |current: &Order| {
            if current.user_id != user.id {
                return Err(ApiError::NotAuthorized);
            }
            match current.status {
                // A paid order keeps its ticket (SPEC §8.3).
                OrderStatus::Complete => Err(ApiError::bad_request(CANNOT_CANCEL_PAID)),
                // Cancelling again changes nothing and announces nothing.
                OrderStatus::Cancelled => Ok(Decision::Unchanged),
                OrderStatus::Created | OrderStatus::AwaitingPayment => {
                    cancellation(current).map_err(ApiError::from)
                }
            }
        })
        .await?;
    if committed.is_some() {
        tracing::info!(version = order.version(), "order cancelled by its owner");
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::error::ErrorEntry;
    use common::extract::validate_body;
    use serde_json::json;

    fn validate(body: Value) -> Result<NewOrder, Vec<ErrorEntry>> {
        match body {
            Value::Object(map) => validate_body(map),
            _ => Err(Vec::new()),
        }
    }

    fn messages(body: Value) -> Vec<String> {
        common::testing::rule_failures::<NewOrder>(body)
    }

    #[test]
    fn an_empty_ticket_id_breaks_both_rules() {
        for body in [
            json!({}),
            json!({ "ticketId": "" }),
            json!({ "ticketId": "   " }),
            json!({ "ticketId": null }),
        ] {
            assert_eq!(
                messages(body.clone()),
                [
                    "ticketId:Invalid value",
                    "ticketId:Ticket ID must be provided."
                ],
                "{body}"
            );
        }
    }

    #[test]
    fn a_malformed_ticket_id_breaks_only_the_id_rule() {
        for body in [
            json!({ "ticketId": "abc" }),
            json!({ "ticketId": "12-char-str!" }),
            json!({ "ticketId": "zzzzzzzzzzzzzzzzzzzzzzzz" }),
            json!({ "ticketId": 42 }),
            json!({ "ticketId": ["64b7f0c2a1b2c3d4e5f60718"] }),
            json!({ "ticketId": { "$oid": "64b7f0c2a1b2c3d4e5f60718" } }),
            json!({ "ticketId": false }),
            json!({ "ticketId": "64b7f0c2a1b2c3d4e5f6071" }),
            json!({ "ticketId": "64b7f0c2a1b2c3d4e5f607180" }),
        ] {
            assert_eq!(
                messages(body.clone()),
                ["ticketId:Ticket ID must be provided."],
                "{body}"
            );
        }
    }

    #[test]
    fn a_24_hex_ticket_id_is_accepted() {
        let parsed = validate(json!({ "ticketId": " 64b7f0c2a1b2c3d4e5f60718 " }));
        assert_eq!(
            parsed.ok().map(|body| body.ticket_id.to_hex()),
            Some("64b7f0c2a1b2c3d4e5f60718".to_owned())
        );
    }

    #[test]
    fn order_json_has_the_spec_shape() -> anyhow::Result<()> {
        let ticket = Ticket {
            id: ObjectId::parse_str("64b7f0c2a1b2c3d4e5f60718")?,
            title: "Concert".into(),
            price: 1250,
            version: 3,
        };
        let expires_at = DateTime::from_timestamp_millis(1_700_000_000_123)
            .ok_or_else(|| anyhow::anyhow!("date"))?;
        let order = Order::new("u1", &ticket, expires_at);
        let json = serde_json::to_value(OrderView::new(&order, Some(&ticket)))?;
        assert_eq!(
            json,
            json!({
                "id": order.id.to_hex(),
                "userId": "u1",
                "status": "created",
                "expiresAt": "2023-11-14T22:13:20.123Z",
                "version": 0,
                "ticket": {"id": "64b7f0c2a1b2c3d4e5f60718", "title": "Concert", "price": 12.5, "version": 3}
            })
        );
        Ok(())
    }
}
