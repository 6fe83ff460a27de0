//! `/tickets/new` (sell a ticket) and `/tickets/{id}` (a ticket, and purchasing it).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::api::{ApiError, FormErrors, Forwarded, SetCookies, is_id};
use crate::app::AppState;
use crate::csrf::FormToken;
use crate::page::{HtmlForm, PageError, not_found, signed_in_viewer, viewer};
use crate::views::{NewTicketPage, TicketPage, TicketRow, Viewer, render};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tickets/new", get(new_form).post(create))
        .route("/tickets/{id}", get(show).post(purchase))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TicketForm {
    pub title: String,
    pub price: String,
}

async fn new_form(
    State(state): State<AppState>,
    fwd: Forwarded,
    csrf: FormToken,
) -> Result<Response, PageError> {
    let (viewer, cookies) = signed_in_viewer(&state.api, &fwd).await?;
    let page = NewTicketPage {
        viewer,
        title: String::new(),
        price: String::new(),
        errors: FormErrors::default(),
        csrf_token: csrf.field().to_owned(),
    };
    Ok((csrf, cookies, render(StatusCode::OK, &page)).into_response())
}

async fn create(
    State(state): State<AppState>,
    fwd: Forwarded,
    csrf: FormToken,
    HtmlForm(form): HtmlForm<TicketForm>,
) -> Result<Response, PageError> {
    match state
        .api
        .create_ticket(&fwd, &form.title, form.price.trim())
        .await
    {
        Ok(reply) => Ok((reply.cookies, Redirect::to("/")).into_response()),
        Err(ApiError::Rejected {
            status: StatusCode::UNAUTHORIZED,
            ..
        }) => Err(PageError::SignInRequired),
        Err(ApiError::Rejected {
            status,
            errors,
            mut cookies,
        }) => {
            let (viewer, more) = viewer(&state.api, &fwd).await?;
            cookies.extend(more);
            let page = NewTicketPage {
                viewer,
                title: form.title,
                price: form.price,
                errors,
                csrf_token: csrf.field().to_owned(),
            };
            Ok((csrf, cookies, render(status, &page)).into_response())
        }
        Err(err) => Err(err.into()),
    }
}

async fn show(
    State(state): State<AppState>,
    fwd: Forwarded,
    csrf: FormToken,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    ticket_page(
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

/// Reserves the ticket (creates an order) and goes to the order's page to pay.
async fn purchase(
    State(state): State<AppState>,
    fwd: Forwarded,
    csrf: FormToken,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    if !is_id(&id) {
        return Err(not_found(&state.api, &fwd).await);
    }
    match state.api.create_order(&fwd, &id).await {
        Ok(reply) if is_id(&reply.body.id) => {
            let location = format!("/orders/{}", reply.body.id);
            Ok((reply.cookies, Redirect::to(&location)).into_response())
        }
        Ok(reply) => {
            tracing::error!(order_id = %reply.body.id, "the orders API returned a malformed order id");
            Err(PageError::BadGateway(Viewer::Unknown))
        }
        Err(ApiError::Rejected {
            status: StatusCode::UNAUTHORIZED,
            ..
        }) => Err(PageError::SignInRequired),
        Err(ApiError::Rejected {
            status,
            errors,
            cookies,
        }) => ticket_page(&state, &fwd, &id, status, errors, cookies, csrf).await,
        Err(err) => Err(err.into()),
    }
}

async fn ticket_page(
    state: &AppState,
    fwd: &Forwarded,
    id: &str,
    status: StatusCode,
    errors: FormErrors,
    mut cookies: SetCookies,
    csrf: FormToken,
) -> Result<Response, PageError> {
    if !is_id(id) {
        return Err(not_found(&state.api, fwd).await);
    }
    let (viewer, ticket) = tokio::join!(viewer(&state.api, fwd), state.api.ticket(fwd, id));
    let (viewer, more) = viewer?;
    cookies.extend(more);
    let ticket = ticket.map_err(|err| PageError::from_api(err, &viewer))?;
    cookies.extend(ticket.cookies);
    let holder = ticket.body.order_id.clone().filter(|id| is_id(id));
    // The order API answers only its owner: a 200 means the viewer holds the ticket. Any other
    // answer (someone else's order, the API down) just shows the ticket as taken.
    let own_order = match (&holder, &viewer) {
        (Some(order_id), Viewer::SignedIn(_)) => match state.api.order(fwd, order_id).await {
            Ok(order) => {
                cookies.extend(order.cookies);
                Some(order_id.clone())
            }
            Err(_) => None,
        },
        _ => None,
    };
    let page = TicketPage {
        viewer,
        taken: ticket.body.order_id.is_some(),
        own_order,
        ticket: TicketRow::from(ticket.body),
        errors,
        csrf_token: csrf.field().to_owned(),
    };
    Ok((csrf, cookies, render(status, &page)).into_response())
}
