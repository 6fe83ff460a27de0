//! `/`: the tickets for sale.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::api::Forwarded;
use crate::app::AppState;
use crate::page::{PageError, viewer};
use crate::views::{HomePage, TicketRow, render};

pub fn router() -> Router<AppState> {
    Router::new().route("/", get(index))
}

async fn index(State(state): State<AppState>, fwd: Forwarded) -> Result<Response, PageError> {
    let (viewer, tickets) = tokio::join!(viewer(&state.api, &fwd), state.api.tickets(&fwd));
    let (viewer, mut cookies) = viewer?;
    let tickets = tickets.map_err(|err| PageError::from_api(err, &viewer))?;
    cookies.extend(tickets.cookies);
    let page = HomePage {
        viewer,
        tickets: tickets.body.into_iter().map(TicketRow::from).collect(),
    };
    Ok((cookies, render(StatusCode::OK, &page)).into_response())
}
