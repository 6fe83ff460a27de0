//! `/orders` (my orders) and `/orders/{id}` (an order: time left, and paying for it).
//!
//! With a Stripe publishable key the order page pays through Stripe.js: its script posts the
//! PaymentMethod to `POST /orders/{id}/intent` (CSRF-checked like every form) and, after a 3-D
//! Secure, `POST /orders/{id}/intent/check`; both answer JSON for that script: `{"status":
//! "paid"}`, `{"status": "requires_action", "clientSecret"}`, or the API's `{"errors": [...]}`
//! with its status.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{ApiError, FormErrors, Forwarded, IntentReply, Reply, is_id};
use crate::app::AppState;
use crate::page::{
    FormAnswer, FormVisit, HtmlForm, PageError, PageResult, not_found, signed_in_viewer,
};
use crate::views::{Checkout, OrderPage, OrdersPage, PaymentNote, render};

/// The payments service learns about an order from an event, so right after the order is created
/// it may not know it yet (404). Paying is retried for about this long before the 404 is shown.
const PAYMENT_REPLICA_WAIT: Duration = Duration::from_secs(3);
const PAYMENT_RETRY_INTERVAL: Duration = Duration::from_millis(250);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orders", get(index))
        .route("/orders/{id}", get(show).post(pay))
        .route("/orders/{id}/intent", post(pay_intent))
        .route("/orders/{id}/intent/check", post(check_intent))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct IntentForm {
    pub payment_method: String,
}

/// What the page's script is told.
type ScriptAnswer = (StatusCode, Json<Value>);

async fn pay_intent(
    State(state): State<AppState>,
    fwd: Forwarded,
    Path(id): Path<String>,
    HtmlForm(form): HtmlForm<IntentForm>,
) -> ScriptAnswer {
    if !is_id(&id) {
        return not_an_order();
    }
    let payment_method = form.payment_method.trim();
    let deadline = tokio::time::Instant::now() + PAYMENT_REPLICA_WAIT;
    let result = loop {
        match state.api.pay_intent(&fwd, &id, payment_method).await {
            Err(ApiError::Rejected {
                status: StatusCode::NOT_FOUND,
                ..
            }) if tokio::time::Instant::now() + PAYMENT_RETRY_INTERVAL < deadline => {
                tokio::time::sleep(PAYMENT_RETRY_INTERVAL).await;
            }
            other => break other,
        }
    };
    script_answer(result)
}

async fn check_intent(
    State(state): State<AppState>,
    fwd: Forwarded,
    Path(id): Path<String>,
) -> ScriptAnswer {
    if !is_id(&id) {
        return not_an_order();
    }
    script_answer(state.api.check_intent(&fwd, &id).await)
}

fn not_an_order() -> ScriptAnswer {
    errors_answer(StatusCode::NOT_FOUND, &FormErrors::general("Not Found"))
}

/// The payments API's answer in the shape the order page's script reads.
fn script_answer(result: Result<Reply<IntentReply>, ApiError>) -> ScriptAnswer {
    match result {
        Ok(Reply { body, .. }) => match (body.status.as_deref(), body.client_secret) {
            (Some("requires_action"), Some(secret)) => (
                StatusCode::OK,
                Json(json!({ "status": "requires_action", "clientSecret": secret })),
            ),
            _ => (StatusCode::OK, Json(json!({ "status": "paid" }))),
        },
        Err(ApiError::Rejected { status, errors, .. }) => errors_answer(status, &errors),
        Err(ApiError::Unavailable(cause)) => {
            tracing::warn!(%cause, "payments unavailable for the page's checkout");
            errors_answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &FormErrors::general(
                    "The ticketing service is not answering right now. Please try again in a moment.",
                ),
            )
        }
        Err(ApiError::BadGateway(cause)) => {
            tracing::error!(%cause, "payments failed for the page's checkout");
            errors_answer(
                StatusCode::BAD_GATEWAY,
                &FormErrors::general(
                    "The ticketing service had a problem with this request. Please try again in a moment.",
                ),
            )
        }
    }
}

fn errors_answer(status: StatusCode, errors: &FormErrors) -> ScriptAnswer {
    (status, Json(errors.to_json()))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PayForm {
    pub token: String,
}

async fn index(State(state): State<AppState>, fwd: Forwarded) -> PageResult {
    let (viewer, mut cookies) = signed_in_viewer(&state.api, &fwd).await?;
    let orders = state
        .api
        .orders(&fwd)
        .await
        .map_err(|err| PageError::from_api(err, &viewer))?;
    cookies.extend(orders.cookies);
    let page = OrdersPage::new(viewer, orders.body, chrono::Utc::now());
    Ok((cookies, render(StatusCode::OK, &page)).into_response())
}

async fn show(visit: FormVisit, Path(id): Path<String>) -> PageResult {
    order_page(visit, &id, FormAnswer::default()).await
}

async fn pay(
    visit: FormVisit,
    Path(id): Path<String>,
    HtmlForm(form): HtmlForm<PayForm>,
) -> PageResult {
    let (api, fwd) = (&visit.state.api, &visit.fwd);
    if !is_id(&id) {
        return Err(not_found(api, fwd).await);
    }
    let deadline = tokio::time::Instant::now() + PAYMENT_REPLICA_WAIT;
    let result = loop {
        match api.pay(fwd, &id, form.token.trim()).await {
            Err(ApiError::Rejected {
                status: StatusCode::NOT_FOUND,
                ..
            }) if tokio::time::Instant::now() + PAYMENT_RETRY_INTERVAL < deadline => {
                tokio::time::sleep(PAYMENT_RETRY_INTERVAL).await;
            }
            other => break other,
        }
    };
    match result {
        Ok(reply) => Ok((reply.cookies, Redirect::to("/orders")).into_response()),
        Err(ApiError::Rejected {
            status: StatusCode::UNAUTHORIZED,
            ..
        }) => {
            // Either the session is gone (sign in again) or the order is someone else's.
            let (viewer, _) = signed_in_viewer(api, fwd).await?;
            Err(PageError::NotFound(viewer))
        }
        Err(err) => order_page(visit, &id, FormAnswer::refused(err)?).await,
    }
}

async fn order_page(visit: FormVisit, id: &str, mut answer: FormAnswer) -> PageResult {
    let (state, fwd) = (&visit.state, &visit.fwd);
    let api = &state.api;
    let (viewer, more) = signed_in_viewer(api, fwd).await?;
    answer.cookies.extend(more);
    if !is_id(id) {
        return Err(PageError::NotFound(viewer));
    }
    let (order, payment) = tokio::join!(api.order(fwd, id), api.payment_state(fwd, id));
    let order = match order {
        Ok(order) => order,
        // Signed in, so a 401 means the order is someone else's: as far as we show, it does not exist.
        Err(ApiError::Rejected {
            status: StatusCode::UNAUTHORIZED,
            ..
        }) => return Err(PageError::NotFound(viewer)),
        Err(err) => return Err(PageError::from_api(err, &viewer)),
    };
    answer.cookies.extend(order.cookies);
    // The payment's state only adds a line to the page: without it the page still works.
    let payment = payment.unwrap_or_else(|err| {
        tracing::warn!(order_id = %id, error = ?err, "payment state unavailable; the order page shows the order alone");
        None
    });
    let checkout = state.stripe_publishable_key.as_deref().map(|key| Checkout {
        key: key.to_owned(),
        script_url: state.stripe_js_url.to_string(),
    });
    let page = OrderPage::new(
        viewer,
        order.body,
        payment.map(|p| PaymentNote::of(&p.status)),
        chrono::Utc::now(),
        checkout,
        answer.errors,
        visit.csrf.field().to_owned(),
    );
    Ok((visit.csrf, answer.cookies, render(answer.status, &page)).into_response())
}
