//! `/orders` (my orders) and `/orders/{id}` (an order: time left, and paying for it).

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use serde::Deserialize;

use crate::api::{ApiError, Forwarded, is_id};
use crate::app::AppState;
use crate::page::{
    FormAnswer, FormVisit, HtmlForm, PageError, PageResult, not_found, signed_in_viewer,
};
use crate::views::{OrderPage, OrdersPage, PaymentNote, render};

/// The payments service learns about an order from an event, so right after the order is created
/// it may not know it yet (404). Paying is retried for about this long before the 404 is shown.
const PAYMENT_REPLICA_WAIT: Duration = Duration::from_secs(3);
const PAYMENT_RETRY_INTERVAL: Duration = Duration::from_millis(250);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orders", get(index))
        .route("/orders/{id}", get(show).post(pay))
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
    let stripe_key = state.stripe_publishable_key.as_deref().map(str::to_owned);
    let page = OrderPage::new(
        viewer,
        order.body,
        payment.map(|p| PaymentNote::of(&p.status)),
        chrono::Utc::now(),
        stripe_key,
        answer.errors,
        visit.csrf.field().to_owned(),
    );
    Ok((visit.csrf, answer.cookies, render(answer.status, &page)).into_response())
}
