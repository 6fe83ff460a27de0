//! `POST /api/payments`: pay an order with a card token, at most once per order.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use common::error::{ApiError, ApiResult, ErrorEntry};
use common::events::OrderStatus;
use common::extract::{FromJson, JsonBody, JsonObject, RequireAuth, Validator};
use common::store::parse_id;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::store::{Claim, Payment, PaymentStatus};
use crate::stripe::{ChargeError, ChargeRequest, idempotency_key, token_hash};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/payments", post(create_payment))
}

pub const INVALID_VALUE: &str = "Invalid value";
/// Spelled as in the original (SPEC §4).
pub const CANCELLED_ORDER: &str = "Canncelled order unabled for payment.";
pub const ALREADY_PAID: &str = "Order has already been paid.";
pub const EXPIRED_ORDER: &str = "Order has expired.";
pub const IN_PROGRESS: &str = "A payment for this order is already in progress.";
pub const PROVIDER_UNAVAILABLE: &str = "Payment provider unavailable, please try again.";

#[derive(Debug)]
pub struct NewPayment {
    pub token: String,
    pub order_id: String,
}

impl FromJson for NewPayment {
    fn from_json(body: &JsonObject) -> Result<Self, Vec<ErrorEntry>> {
        let token = body.trimmed_str("token").unwrap_or_default();
        let order_id = body.trimmed_str("orderId").unwrap_or_default();
        let mut v = Validator::default();
        v.check(!token.is_empty(), "token", INVALID_VALUE);
        v.check(!order_id.is_empty(), "orderId", INVALID_VALUE);
        v.finish(|| {
            Some(NewPayment {
                token: token.to_owned(),
                order_id: order_id.to_owned(),
            })
        })
    }
}

#[tracing::instrument(name = "create_payment", skip_all, fields(order_id))]
async fn create_payment(
    State(state): State<AppState>,
    RequireAuth(user): RequireAuth,
    JsonBody(body): JsonBody<NewPayment>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let order_id = parse_id(&body.order_id)?;
    tracing::Span::current().record("order_id", tracing::field::display(order_id));
    let order = state
        .orders
        .get(order_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if order.user_id != user.id {
        return Err(ApiError::NotAuthorized);
    }
    match order.status {
        OrderStatus::Cancelled => return Err(ApiError::bad_request(CANCELLED_ORDER)),
        OrderStatus::Complete => return Err(ApiError::bad_request(ALREADY_PAID)),
        OrderStatus::Created | OrderStatus::AwaitingPayment => {}
    }
    // A cheap early answer (also for a paid order whose window has since passed: this replica never
    // hears of `complete`); the claim below is what guarantees a single charge.
    if let Some(existing) = state.payments.get(order_id).await? {
        return Err(taken(Some(existing)));
    }
    // The expiration service may not have cancelled it yet, but the buyer's window is over: charging
    // now would take money for a reservation that is about to be released.
    if order.expires_at.timestamp_millis() <= mongodb::bson::DateTime::now().timestamp_millis() {
        return Err(ApiError::bad_request(EXPIRED_ORDER));
    }

    let token_hash = token_hash(&body.token);
    let claim = match state
        .payments
        .claim(&state.bus, order_id, token_hash.clone())
        .await?
    {
        Claim::Won(claim) => claim,
        Claim::Taken(existing) => return Err(taken(existing)),
    };

    let request = ChargeRequest {
        amount_cents: order.price_cents,
        source: &body.token,
        idempotency_key: idempotency_key(&order_id.to_hex(), &token_hash),
    };
    let stripe_id = match state.stripe.charge(&request).await {
        Ok(stripe_id) => stripe_id,
        Err(err) => {
            // Nothing was charged: free the order for another attempt.
            if let Err(release) = state.payments.release(&claim).await {
                tracing::error!(error = %release, "could not release the payment claim after a failed charge");
            }
            return Err(charge_failed(err));
        }
    };

    let (payment, committed) = state
        .payments
        .succeed(&claim, stripe_id.clone())
        .await
        .map_err(|err| {
            // The card is charged but the payment is not recorded: the claim stays (the order
            // cannot be charged twice) and this line is what reconciliation starts from.
            tracing::error!(%stripe_id, error = %err, "a succeeded charge could not be recorded");
            ApiError::from(err)
        })?;
    state
        .payments
        .versions()
        .publish(&state.bus, &committed)
        .await;
    tracing::info!(payment_id = %payment.payment_id, %stripe_id, "order paid");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "success": true, "id": payment.payment_id })),
    ))
}

/// The answer when the order's payment belongs to someone else (or an earlier request).
fn taken(existing: Option<Payment>) -> ApiError {
    match existing.map(|p| p.status) {
        Some(PaymentStatus::Succeeded) => ApiError::bad_request(ALREADY_PAID),
        // Pending, or a claim whose record is being written or deleted right now.
        Some(PaymentStatus::Pending) | None => ApiError::Conflict(IN_PROGRESS.to_owned()),
    }
}

fn charge_failed(err: ChargeError) -> ApiError {
    match err {
        ChargeError::Refused(message) => ApiError::BadRequest(message),
        ChargeError::Unavailable(cause) => {
            tracing::warn!(%cause, "Stripe unavailable");
            ApiError::Upstream {
                status: StatusCode::BAD_GATEWAY,
                message: PROVIDER_UNAVAILABLE.to_owned(),
            }
        }
        misconfigured @ ChargeError::Misconfigured(_) => ApiError::Internal(misconfigured.into()),
    }
}
