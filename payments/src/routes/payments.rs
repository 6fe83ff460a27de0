//! `POST /api/payments`: pay an order with a card token, at most once per order (see `crate::saga`).
//! `GET /api/payments/{orderId}` (an addition): where the order's payment stands, for its owner.
//! `POST /api/payments/intents` (an addition): pay an order with a PaymentMethod from Stripe.js,
//! as a PaymentIntent created and confirmed here; `POST /api/payments/intents/{orderId}/check`
//! asks Stripe again once the page has done the buyer's 3-D Secure.
//!
//! Answers beyond the SPEC's: 202 with [`BEING_CONFIRMED`] in the error shape when Stripe's answer
//! is uncertain (the reconciler settles it), 409 while an attempt is open, 400 [`REFUNDED`] when the
//! order was cancelled during its charge, 502 when Stripe definitely did not charge.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use common::error::parse_id;
use common::error::{ApiError, ApiResult};
use common::events::OrderStatus;
use common::extract::{FromBody, JsonBody, RequireAuth, trimmed_string};
use common::session::UserClaims;
use mongodb::bson::oid::ObjectId;
use serde::Deserialize;
use serde_json::{Value, json};
use validator::Validate;

use crate::app::AppState;
use crate::saga::PayOutcome;
use crate::store::{Order, Payment, PaymentStatus, Via};
use crate::stripe::GENERIC_DECLINE;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/payments", post(create_payment))
        .route("/api/payments/{order_id}", get(payment_of_order))
        .route("/api/payments/intents", post(create_intent))
        .route("/api/payments/intents/{order_id}/check", post(check_intent))
}

pub const INVALID_VALUE: &str = common::extract::INVALID_VALUE;
/// Spelled as in the original (SPEC §4).
pub const CANCELLED_ORDER: &str = "Canncelled order unabled for payment.";
pub const ALREADY_PAID: &str = "Order has already been paid.";
pub const EXPIRED_ORDER: &str = "Order has expired.";
pub const IN_PROGRESS: &str = "A payment for this order is already in progress.";
pub const PROVIDER_UNAVAILABLE: &str = "Payment provider unavailable, please try again.";
/// Stripe's answer is late or was lost: the charge may exist, and is being confirmed with Stripe.
pub const BEING_CONFIRMED: &str = "Your payment is being confirmed. You will not be charged twice; check the order again in a moment.";
/// A PaymentIntent of the order waits for the buyer's 3-D Secure (in another tab, or a page left).
pub const AWAITING_AUTHENTICATION: &str =
    "A payment for this order is waiting for your card's authentication.";
/// The order was cancelled (or expired) while it was being charged.
pub const REFUNDED: &str =
    "The order was cancelled while it was being paid; your payment is refunded.";

#[derive(Debug)]
pub struct NewPayment {
    pub token: String,
    pub order_id: String,
}

/// The body as sent: both fields trimmed and required (`Invalid value`, express-validator's
/// message for a rule without one). A malformed order id is answered 404 by the handler.
#[derive(Debug, Default, Deserialize, Validate)]
#[serde(default)]
pub struct NewPaymentRequest {
    #[serde(deserialize_with = "trimmed_string")]
    #[validate(length(min = 1, message = "Invalid value"))]
    token: String,
    #[serde(rename = "orderId", deserialize_with = "trimmed_string")]
    #[validate(length(min = 1, message = "Invalid value"))]
    order_id: String,
}

/// A payment through the page's checkout: the PaymentMethod Stripe.js made (`pm_...`).
#[derive(Debug)]
pub struct NewIntent {
    pub payment_method: String,
    pub order_id: String,
}

/// The body as sent, checked like the SPEC's: both fields trimmed and required.
#[derive(Debug, Default, Deserialize, Validate)]
#[serde(default)]
pub struct NewIntentRequest {
    #[serde(rename = "paymentMethod", deserialize_with = "trimmed_string")]
    #[validate(length(min = 1, message = "Invalid value"))]
    payment_method: String,
    #[serde(rename = "orderId", deserialize_with = "trimmed_string")]
    #[validate(length(min = 1, message = "Invalid value"))]
    order_id: String,
}

impl FromBody for NewIntent {
    type Raw = NewIntentRequest;
    const FIELDS: &'static [(&'static str, &'static str)] =
        &[("payment_method", "paymentMethod"), ("order_id", "orderId")];

    fn from_raw(raw: NewIntentRequest) -> Option<Self> {
        Some(NewIntent {
            payment_method: raw.payment_method,
            order_id: raw.order_id,
        })
    }
}

impl FromBody for NewPayment {
    type Raw = NewPaymentRequest;
    const FIELDS: &'static [(&'static str, &'static str)] =
        &[("token", "token"), ("order_id", "orderId")];

    fn from_raw(raw: NewPaymentRequest) -> Option<Self> {
        Some(NewPayment {
            token: raw.token,
            order_id: raw.order_id,
        })
    }
}

/// Where an order's payment stands: `{"orderId", "status", "attempts"}` with the status of its latest
/// attempt (`pending`, `unknown`, `failed`, `succeeded`, `refunding`, `refunded`). Only for the
/// order's owner (401 otherwise, as the SPEC answers another user's order); 404 for an order this
/// service does not know or that has no attempt yet. Why an attempt failed stays in the logs: it may
/// be ours, not the buyer's.
#[tracing::instrument(name = "payment_of_order", skip_all, fields(%order_id))]
async fn payment_of_order(
    State(state): State<AppState>,
    RequireAuth(user): RequireAuth,
    Path(order_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = parse_id(&order_id)?;
    owned_order(&state, &user, id).await?;
    let payment = state
        .saga
        .payments()
        .get(id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(json!({
        "orderId": id.to_hex(),
        "status": payment.status.as_str(),
        "attempts": payment.attempts,
    })))
}

/// The replica of order `id`, if `user` owns it: 404 for an order this service does not know, 401
/// for someone else's (as the SPEC answers).
async fn owned_order(state: &AppState, user: &UserClaims, id: ObjectId) -> ApiResult<Order> {
    owned(state.orders.get(id).await?, user)
}

fn owned(order: Option<Order>, user: &UserClaims) -> ApiResult<Order> {
    let order = order.ok_or(ApiError::NotFound)?;
    if order.user_id != user.id {
        return Err(ApiError::NotAuthorized);
    }
    Ok(order)
}

#[tracing::instrument(name = "create_payment", skip_all, fields(order_id))]
async fn create_payment(
    State(state): State<AppState>,
    RequireAuth(user): RequireAuth,
    JsonBody(body): JsonBody<NewPayment>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    pay(&state, &user, &body.order_id, Via::Charge, &body.token).await
}

/// Like `POST /api/payments`, with a PaymentIntent; besides its answers, 200
/// `{"status": "requires_action", "clientSecret"}` when the buyer must authenticate (3-D Secure).
#[tracing::instrument(name = "create_intent", skip_all, fields(order_id))]
async fn create_intent(
    State(state): State<AppState>,
    RequireAuth(user): RequireAuth,
    JsonBody(body): JsonBody<NewIntent>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    pay(
        &state,
        &user,
        &body.order_id,
        Via::Intent,
        &body.payment_method,
    )
    .await
}

/// After the page's 3-D Secure: where the order's PaymentIntent stands now, answered as
/// `POST /api/payments/intents` answers (201 paid, 200 still `requires_action`, 400 declined ...).
/// 404 before any attempt.
#[tracing::instrument(name = "check_intent", skip_all, fields(%order_id))]
async fn check_intent(
    State(state): State<AppState>,
    RequireAuth(user): RequireAuth,
    Path(order_id): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let id = parse_id(&order_id)?;
    let order = owned_order(&state, &user, id).await?;
    match state.saga.check_intent(&order).await? {
        PayOutcome::Busy(None) => Err(ApiError::NotFound),
        PayOutcome::Busy(Some(payment)) if payment.status == PaymentStatus::Failed => {
            Err(ApiError::bad_request(GENERIC_DECLINE))
        }
        outcome => answer(outcome),
    }
}

/// Starts an attempt to pay the order `order_id` of `user`, by `via`, and answers its outcome.
async fn pay(
    state: &AppState,
    user: &UserClaims,
    order_id: &str,
    via: Via,
    token: &str,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let order_id = parse_id(order_id)?;
    tracing::Span::current().record("order_id", tracing::field::display(order_id));
    // Both reads at once: every answer below needs the order, and most need its payment too. The
    // payment is looked at only once the order is known to be the buyer's. The order as stored is
    // enough here (its buyer, price and window never change): a cancellation it may not show yet
    // is seen by the saga's re-read before any charge (`PaymentSaga::charge`), answered the same.
    let (order, existing) = tokio::join!(
        state.orders.stored(order_id),
        state.saga.payments().get(order_id)
    );
    let order = owned(order?, user)?;
    let existing = existing?;
    match order.status {
        OrderStatus::Cancelled => {
            // A buyer whose payment was being confirmed when the order expired learns of the refund.
            let refunded = existing.is_some_and(|p| {
                matches!(p.status, PaymentStatus::Refunding | PaymentStatus::Refunded)
            });
            return Err(ApiError::bad_request(if refunded {
                REFUNDED
            } else {
                CANCELLED_ORDER
            }));
        }
        OrderStatus::Complete => return Err(ApiError::bad_request(ALREADY_PAID)),
        OrderStatus::Created | OrderStatus::AwaitingPayment => {}
    }
    // A cheap early answer (also for a paid order whose window has since passed: this replica never
    // hears of `complete`); recording the attempt below is what guarantees a single charge.
    if let Some(existing) = existing
        && existing.status != PaymentStatus::Failed
    {
        // The buyer closed the card's authentication and pays again: the same intent is
        // authenticated again, never a second one made.
        if via == Via::Intent
            && existing.via == Via::Intent
            && existing.status == PaymentStatus::RequiresAction
        {
            return answer(state.saga.check_intent(&order).await?);
        }
        return Err(busy(Some(existing)));
    }
    // The expiration service may not have cancelled it yet, but the buyer's window is over: charging
    // now would take money for a reservation that is about to be released.
    if order.expires_at.timestamp_millis() <= mongodb::bson::DateTime::now().timestamp_millis() {
        return Err(ApiError::bad_request(EXPIRED_ORDER));
    }

    answer(state.saga.pay(&order, via, token).await?)
}

/// The HTTP answer to how an attempt ended.
fn answer(outcome: PayOutcome) -> ApiResult<(StatusCode, Json<Value>)> {
    match outcome {
        PayOutcome::Paid(payment) => {
            tracing::info!(payment_id = %payment.payment_id, stripe_id = ?payment.stripe_id, "order paid");
            Ok((
                StatusCode::CREATED,
                Json(json!({ "success": true, "id": payment.payment_id })),
            ))
        }
        PayOutcome::Confirming => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "errors": [{ "message": BEING_CONFIRMED }] })),
        )),
        PayOutcome::Declined(message) => Err(ApiError::BadRequest(message)),
        PayOutcome::Unavailable => Err(ApiError::Upstream {
            status: StatusCode::BAD_GATEWAY,
            message: PROVIDER_UNAVAILABLE.to_owned(),
        }),
        PayOutcome::Misconfigured(cause) => Err(ApiError::Internal(anyhow::anyhow!(
            "Stripe rejected our request: {cause}"
        ))),
        PayOutcome::OrderCancelled => Err(ApiError::bad_request(CANCELLED_ORDER)),
        PayOutcome::Expired => Err(ApiError::bad_request(EXPIRED_ORDER)),
        PayOutcome::Refunded => Err(ApiError::bad_request(REFUNDED)),
        PayOutcome::Busy(current) => Err(busy(current)),
        PayOutcome::ActionRequired { client_secret } => Ok((
            StatusCode::OK,
            Json(json!({ "status": "requires_action", "clientSecret": client_secret })),
        )),
    }
}

/// The answer when the order's payment is not open for a new attempt.
fn busy(existing: Option<Payment>) -> ApiError {
    match existing.map(|p| p.status) {
        Some(PaymentStatus::Succeeded) => ApiError::bad_request(ALREADY_PAID),
        Some(PaymentStatus::Refunding | PaymentStatus::Refunded) => ApiError::bad_request(REFUNDED),
        Some(PaymentStatus::Unknown) => ApiError::Conflict(BEING_CONFIRMED.to_owned()),
        Some(PaymentStatus::RequiresAction) => {
            ApiError::Conflict(AWAITING_AUTHENTICATION.to_owned())
        }
        // Pending, or an attempt whose record is being written right now. (`Failed` never gets
        // here: a new attempt starts from it.)
        Some(PaymentStatus::Pending | PaymentStatus::Failed) | None => {
            ApiError::Conflict(IN_PROGRESS.to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::testing::validate_json;

    fn fields(body: Value) -> Vec<String> {
        common::testing::rule_failures::<NewPayment>(body)
    }

    #[test]
    fn token_then_order_id_each_required_whatever_their_json_type() {
        let both = [
            format!("token:{INVALID_VALUE}"),
            format!("orderId:{INVALID_VALUE}"),
        ];
        for body in [
            json!({}),
            json!({ "orderId": [], "token": {} }),
            json!({ "orderId": 7, "token": "   " }),
        ] {
            assert_eq!(fields(body.clone()), both, "{body}");
        }
        assert_eq!(
            fields(json!({ "token": "t", "order_id": "x" })),
            [format!("orderId:{INVALID_VALUE}")]
        );
    }

    #[test]
    fn both_fields_reach_the_handler_trimmed() {
        let body =
            validate_json::<NewPayment>(json!({ "token": " tok_visa ", "orderId": " abc " }));
        assert_eq!(
            body.ok().map(|b| (b.token, b.order_id)),
            Some(("tok_visa".to_owned(), "abc".to_owned()))
        );
    }
}
