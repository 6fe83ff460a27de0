//! `/tickets/new` (sell a ticket), `/tickets/mine` (the tickets I sell) and `/tickets/{id}` (a
//! ticket, and purchasing it).

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::api::{Forwarded, SetCookies, is_id};
use crate::app::AppState;
use crate::page::{
    FormAnswer, FormVisit, HtmlForm, PageError, PageResult, not_found, signed_in_viewer, viewer,
};
use crate::routes::home::Listing;
use crate::views::{
    MyTicketRow, MyTicketsPage, NewTicketPage, TicketPage, TicketRow, Viewer, render,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tickets/new", get(new_form).post(create))
        .route("/tickets/mine", get(mine))
        .route("/tickets/{id}", get(show).post(purchase))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TicketForm {
    pub title: String,
    pub price: String,
}

async fn new_form(visit: FormVisit) -> PageResult {
    let viewer = signed_in_viewer(&visit.state.api, &visit.fwd).await?;
    Ok(new_ticket_page(
        visit,
        viewer,
        TicketForm::default(),
        FormAnswer::default(),
    ))
}

async fn create(visit: FormVisit, HtmlForm(form): HtmlForm<TicketForm>) -> PageResult {
    let (api, fwd) = (&visit.state.api, &visit.fwd);
    match api.create_ticket(fwd, &form.title, form.price.trim()).await {
        Ok(reply) => Ok((reply.cookies, Redirect::to("/")).into_response()),
        Err(err) => {
            let answer = FormAnswer::refused_to_member(err)?;
            let viewer = viewer(api, fwd).await?;
            Ok(new_ticket_page(visit, viewer, form, answer))
        }
    }
}

/// The form, empty or shown again as typed with what the API said about it.
fn new_ticket_page(
    visit: FormVisit,
    (viewer, more): (Viewer, SetCookies),
    form: TicketForm,
    mut answer: FormAnswer,
) -> Response {
    answer.cookies.extend(more);
    let page = NewTicketPage {
        viewer,
        title: form.title,
        price: form.price,
        errors: answer.errors,
        csrf_token: visit.csrf.field().to_owned(),
    };
    (visit.csrf, answer.cookies, render(answer.status, &page)).into_response()
}

/// The signed-in seller's tickets, a page at a time (`?after=ID`, read leniently like the home
/// page's), each free or "reserved or sold".
async fn mine(
    State(state): State<AppState>,
    fwd: Forwarded,
    RawQuery(query): RawQuery,
) -> PageResult {
    let after = Listing::from_query(query.as_deref().unwrap_or_default()).after;
    let (viewer, mut cookies) = signed_in_viewer(&state.api, &fwd).await?;
    let tickets = state
        .api
        .my_tickets(&fwd, after.as_deref())
        .await
        .map_err(|err| PageError::from_api(err, &viewer))?;
    cookies.extend(tickets.cookies);
    let next_href = tickets
        .body
        .last()
        .filter(|last| tickets.more && is_id(&last.id))
        .map(|last| format!("/tickets/mine?after={}", last.id));
    let page = MyTicketsPage {
        viewer,
        tickets: tickets.body.into_iter().map(MyTicketRow::from).collect(),
        next_href,
        first_href: after.is_some().then(|| "/tickets/mine".to_owned()),
    };
    Ok((cookies, render(StatusCode::OK, &page)).into_response())
}

async fn show(visit: FormVisit, Path(id): Path<String>) -> PageResult {
    ticket_page(visit, &id, FormAnswer::default()).await
}

/// Reserves the ticket (creates an order) and goes to the order's page to pay.
async fn purchase(visit: FormVisit, Path(id): Path<String>) -> PageResult {
    let (api, fwd) = (&visit.state.api, &visit.fwd);
    if !is_id(&id) {
        return Err(not_found(api, fwd).await);
    }
    match api.create_order(fwd, &id).await {
        Ok(reply) if is_id(&reply.body.id) => {
            let location = format!("/orders/{}", reply.body.id);
            Ok((reply.cookies, Redirect::to(&location)).into_response())
        }
        Ok(reply) => {
            tracing::error!(order_id = %reply.body.id, "the orders API returned a malformed order id");
            Err(PageError::BadGateway(Viewer::Unknown))
        }
        Err(err) => ticket_page(visit, &id, FormAnswer::refused_to_member(err)?).await,
    }
}

async fn ticket_page(visit: FormVisit, id: &str, mut answer: FormAnswer) -> PageResult {
    let (api, fwd) = (&visit.state.api, &visit.fwd);
    if !is_id(id) {
        return Err(not_found(api, fwd).await);
    }
    let (viewer, ticket) = tokio::join!(viewer(api, fwd), api.ticket(fwd, id));
    let (viewer, more) = viewer?;
    answer.cookies.extend(more);
    let ticket = ticket.map_err(|err| PageError::from_api(err, &viewer))?;
    answer.cookies.extend(ticket.cookies);
    let holder = ticket.body.order_id.clone().filter(|id| is_id(id));
    // The order API answers only its owner: a 200 means the viewer holds the ticket. Any other
    // answer (someone else's order, the API down) just shows the ticket as taken.
    let own_order = match (&holder, &viewer) {
        (Some(order_id), Viewer::SignedIn(_)) => match api.order(fwd, order_id).await {
            Ok(order) => {
                answer.cookies.extend(order.cookies);
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
        errors: answer.errors,
        csrf_token: visit.csrf.field().to_owned(),
    };
    Ok((visit.csrf, answer.cookies, render(answer.status, &page)).into_response())
}
