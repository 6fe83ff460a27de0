//! `/api/tickets`: create, list the free ones, show one, edit your own while it is not reserved.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use common::error::{ApiError, ApiResult, ErrorEntry};
use common::extract::{FromJson, JsonBody, JsonObject, RequireAuth, Validator};
use common::money::{MAX_PRICE_CENTS, Price};
use common::store::{Decision, PendingEvent, parse_id};
use mongodb::bson::Bson;
use mongodb::bson::oid::ObjectId;

use crate::app::AppState;
use crate::store::{Ticket, TicketView};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/tickets", get(list).post(create))
        .route("/api/tickets/{id}", get(show).put(update))
}

pub const TITLE_REQUIRED: &str = "Title is required.";
pub const TITLE_TOO_LONG: &str = "Title must be at most 200 characters.";
pub const PRICE_NOT_POSITIVE: &str = "Price must be larger than 0.";
pub const TICKET_RESERVED: &str = "Ticket is already reserved and unable to edit.";
pub const MAX_TITLE_CHARS: usize = 200;

/// `Price must be at most 1000000.`, from [`MAX_PRICE_CENTS`].
pub fn price_too_high() -> String {
    format!("Price must be at most {}.", MAX_PRICE_CENTS / 100)
}

/// Title (trimmed) and price (rounded to the cent) of a new or edited ticket.
#[derive(Debug)]
pub struct TicketInput {
    pub title: String,
    pub price: Price,
}

impl FromJson for TicketInput {
    fn from_json(body: &JsonObject) -> Result<Self, Vec<ErrorEntry>> {
        let title = body.trimmed_str("title").unwrap_or_default();
        let amount = body.number("price");
        // `None` for an amount too large to count in cents: it is still positive, just too high.
        let price = amount.and_then(Price::from_euros);
        let positive = amount.is_some_and(|a| a > 0.0) && price.is_none_or(|p| p.cents() > 0);
        let too_high =
            amount.is_some_and(|a| a > 0.0) && price.is_none_or(|p| p.cents() > MAX_PRICE_CENTS);

        let mut v = Validator::default();
        v.check(!title.is_empty(), "title", TITLE_REQUIRED);
        v.check(
            title.chars().count() <= MAX_TITLE_CHARS,
            "title",
            TITLE_TOO_LONG,
        );
        v.check(positive, "price", PRICE_NOT_POSITIVE);
        v.check(!too_high, "price", &price_too_high());
        v.finish(|| {
            Some(TicketInput {
                title: title.to_owned(),
                price: price?,
            })
        })
    }
}

#[tracing::instrument(name = "create_ticket", skip_all)]
async fn create(
    State(state): State<AppState>,
    RequireAuth(user): RequireAuth,
    JsonBody(input): JsonBody<TicketInput>,
) -> ApiResult<(StatusCode, Json<TicketView>)> {
    let ticket = Ticket {
        id: ObjectId::new(),
        title: input.title,
        price_cents: input.price.cents(),
        user_id: user.id,
        version: 0,
        order_id: None,
    };
    let events = vec![PendingEvent::of(&ticket.created_event())?];
    let committed = state.store.tickets.create(&ticket, events).await?;
    state.store.tickets.publish(&state.bus, &committed).await;
    tracing::info!(ticket_id = %ticket.id, "ticket created");
    Ok((StatusCode::CREATED, Json(ticket.view())))
}

async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<TicketView>>> {
    let tickets = state.store.list_available().await?;
    Ok(Json(tickets.iter().map(Ticket::view).collect()))
}

async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<TicketView>> {
    let ticket = state
        .store
        .get(parse_id(&id)?)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(ticket.view()))
}

#[tracing::instrument(name = "update_ticket", skip_all, fields(ticket_id = %id))]
async fn update(
    State(state): State<AppState>,
    RequireAuth(user): RequireAuth,
    Path(id): Path<String>,
    JsonBody(input): JsonBody<TicketInput>,
) -> ApiResult<Json<TicketView>> {
    let key = Bson::ObjectId(parse_id(&id)?);
    // The checks run on the latest state inside the commit loop: a reservation can land between a
    // first read and our write, and must win over the edit.
    let (ticket, committed) = state
        .store
        .tickets
        .modify(key, |ticket| {
            if ticket.order_id.is_some() {
                return Err(ApiError::bad_request(TICKET_RESERVED));
            }
            if ticket.user_id != user.id {
                return Err(ApiError::NotAuthorized);
            }
            let next = Ticket {
                title: input.title.clone(),
                price_cents: input.price.cents(),
                version: ticket.version + 1,
                ..ticket.clone()
            };
            let events = vec![PendingEvent::of(&next.updated_event())?];
            Ok(Decision::Commit { next, events })
        })
        .await?;
    if let Some(committed) = committed {
        state.store.tickets.publish(&state.bus, &committed).await;
    }
    Ok(Json(ticket.view()))
}
