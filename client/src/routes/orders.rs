//! `/orders` (my orders) and `/orders/{id}` (an order: time left, and paying for it).

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::api::{ApiError, FormErrors, Forwarded, SetCookies, is_id};
use crate::app::AppState;
use crate::csrf::FormToken;
use crate::page::{HtmlForm, PageError, not_found, signed_in_viewer};
use crate::views::{OrderPage, OrdersPage, render};

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

async fn index(State(state): State<AppState>, fwd: Forwarded) -> Result<Response, PageError> {
    let (viewer, mut cookies) = signed_in_viewer(&state.api, &fwd).await?;
    let orders = state
        .api
        .orders(&fwd)
        .await
        .map_err(|err| PageError::from_api(err, &viewer))?;
    cookies.extend(orders.cookies);
    let page = OrdersPage::new(viewer, orders.body);
    Ok((cookies, render(StatusCode::OK, &page)).into_response())
}

async fn show(
    State(state): State<AppState>,
    fwd: Forwarded,
    csrf: FormToken,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    order_page(
        &state,
        &fwd,
        &id,
        StatusCode::OK,
        FormErrors::default(),
        SetCookies::default(),
        csrf,
    )
    .await
}

async fn pay(
    State(state): State<AppState>,
    fwd: Forwarded,
    csrf: FormToken,
    Path(id): Path<String>,
    HtmlForm(form): HtmlForm<PayForm>,
) -> Result<Response, PageError> {
    if !is_id(&id) {
        return Err(not_found(&state.api, &fwd).await);
    }
    let deadline = tokio::time::Instant::now() + PAYMENT_REPLICA_WAIT;
    let result = loop {
        match state.api.pay(&fwd, &id, form.token.trim()).await {
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
            let (viewer, _) = signed_in_viewer(&state.api, &fwd).await?;
            Err(PageError::NotFound(viewer))
        }
        Err(ApiError::Rejected {
            status,
            errors,
            cookies,
        }) => order_page(&state, &fwd, &id, status, errors, cookies, csrf).await,
        Err(err) => Err(err.into()),
    }
}

async fn order_page(
    state: &AppState,
    fwd: &Forwarded,
    id: &str,
    status: StatusCode,
    errors: FormErrors,
    mut cookies: SetCookies,
    csrf: FormToken,
) -> Result<Response, PageError> {
    let (viewer, more) = signed_in_viewer(&state.api, fwd).await?;
    cookies.extend(more);
    if !is_id(id) {
        return Err(PageError::NotFound(viewer));
    }
    let order = match state.api.order(fwd, id).await {
        Ok(order) => order,
        // Signed in, so a 401 means the order is someone else's: as far as we show, it does not exist.
        Err(ApiError::Rejected {
            status: StatusCode::UNAUTHORIZED,
            ..
        }) => return Err(PageError::NotFound(viewer)),
        Err(err) => return Err(PageError::from_api(err, &viewer)),
    };
    cookies.extend(order.cookies);
    let stripe_key = state.stripe_publishable_key.as_deref().map(str::to_owned);
    let page = OrderPage::new(
        viewer,
        order.body,
        chrono::Utc::now(),
        stripe_key,
        errors,
        csrf.field().to_owned(),
    );
    Ok((csrf, cookies, render(status, &page)).into_response())
}
