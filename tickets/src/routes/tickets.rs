//! `/api/tickets`: create, list the free ones, show one, edit your own while it is not reserved.

use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use common::error::parse_id;
use common::error::{ApiError, ApiResult, ErrorEntry};
use common::extract::{CurrentUser, FromBody, JsonBody, RequireAuth, number, trimmed_string};
use common::money::{MAX_PRICE_CENTS, Price};
use common::store::parse_object_id;
use common::store::{Decision, PendingEvent};
use mongodb::bson::oid::ObjectId;
use serde::Deserialize;
use serde_json::Value;
use validator::{Validate, ValidationError};

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

/// A ticket as sent. The price may be a number or a numeric string (the original accepts
/// `"12.50"`), so it is read as any JSON and judged by the rules. The `message`s are the constants
/// above (the derive only takes literals; the API tests compare the answers with the constants).
#[derive(Debug, Default, Deserialize, Validate)]
#[serde(default)]
pub struct TicketRequest {
    #[serde(deserialize_with = "trimmed_string")]
    #[validate(
        length(min = 1, message = "Title is required."),
        custom(
            function = "title_fits",
            message = "Title must be at most 200 characters."
        )
    )]
    title: String,
    #[validate(
        custom(function = "price_positive", message = "Price must be larger than 0."),
        custom(function = "price_within_limit")
    )]
    price: Value,
}

impl FromBody for TicketInput {
    type Raw = TicketRequest;
    const FIELDS: &'static [(&'static str, &'static str)] =
        &[("title", "title"), ("price", "price")];

    fn from_raw(raw: TicketRequest) -> Option<Self> {
        Some(TicketInput {
            title: raw.title,
            price: number(&raw.price).and_then(Price::from_euros)?,
        })
    }
}

/// `Title must be at most 200 characters.` A second `length` rule is not possible on one field.
fn title_fits(title: &str) -> Result<(), ValidationError> {
    if title.chars().count() <= MAX_TITLE_CHARS {
        Ok(())
    } else {
        Err(ValidationError::new("title_length"))
    }
}

/// A positive amount, and its price in cents (`None` for an amount too large to count in cents:
/// still positive, just too high).
fn positive_amount(price: &Value) -> Option<Option<Price>> {
    number(price)
        .filter(|amount| *amount > 0.0)
        .map(Price::from_euros)
}

/// `Price must be larger than 0.`: also refuses amounts that round to 0 cents.
fn price_positive(price: &Value) -> Result<(), ValidationError> {
    match positive_amount(price) {
        Some(price) if price.is_none_or(|p| p.cents() > 0) => Ok(()),
        _ => Err(ValidationError::new("price_positive")),
    }
}

/// [`price_too_high`]: its message is built from [`MAX_PRICE_CENTS`], so the rule sets it.
fn price_within_limit(price: &Value) -> Result<(), ValidationError> {
    match positive_amount(price) {
        Some(price) if price.is_none_or(|p| p.cents() > MAX_PRICE_CENTS) => {
            Err(ValidationError::new("price_max").with_message(price_too_high().into()))
        }
        _ => Ok(()),
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
    state.store.create(&state.bus, &ticket, events).await?;
    tracing::info!(ticket_id = %ticket.id, "ticket created");
    Ok((StatusCode::CREATED, Json(ticket.view())))
}

/// The free tickets, oldest first: all of them (the SPEC's answer), or one page when the query
/// asks for it (`limit`, `after`, or a title search `q`), with the next page's address in a
/// `Link: <…>; rel="next"` header while there is one. The body is the same array either way.
///
/// With `mine=true` (an addition): the signed-in user's own tickets instead, free or held by an
/// order, always a page at a time by the same rules (401 when signed out).
async fn list(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let query = query.as_deref().unwrap_or_default();
    let reader = user.as_ref().map(|user| user.id.as_str());
    // Who asks comes first: a signed-out `mine=true` learns nothing about its other parameters.
    let owner = match mine(query) {
        Ok(false) => None,
        Ok(true) => Some(reader.ok_or(ApiError::NotAuthorized)?),
        Err(entry) => {
            let mut errors = vec![entry];
            if let Err(ApiError::Validation(more)) = Page::from_query(query) {
                errors.extend(more);
            }
            return Err(ApiError::Validation(errors));
        }
    };
    let page = match (Page::from_query(query)?, &owner) {
        (Some(page), _) => page,
        (None, Some(_)) => Page::first(),
        (None, None) => {
            if let Some(json) = state.store.free_listing_json(reader).await? {
                let json_type = header::HeaderValue::from_static("application/json");
                return Ok(([(header::CONTENT_TYPE, json_type)], json).into_response());
            }
            let tickets = state.store.list_available(reader, None, None, None).await?;
            let views: Vec<TicketView> = tickets.iter().map(Ticket::view).collect();
            return Ok(Json(views).into_response());
        }
    };
    let fetch = Some(i64::from(page.limit) + 1);
    let title = page.title.as_deref();
    let mut tickets = match &owner {
        Some(owner) => {
            state
                .store
                .list_owned(owner, page.after, title, fetch)
                .await?
        }
        None => {
            state
                .store
                .list_available(reader, page.after, title, fetch)
                .await?
        }
    };
    let more = tickets.len() > usize::from(page.limit);
    tickets.truncate(usize::from(page.limit));
    let views: Vec<TicketView> = tickets.iter().map(Ticket::view).collect();
    let next = tickets.last().filter(|_| more).map(|last| {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if owner.is_some() {
            query.append_pair("mine", "true");
        }
        query.append_pair("limit", &page.limit.to_string());
        query.append_pair("after", &last.id.to_hex());
        if let Some(title) = &page.title {
            query.append_pair("q", title);
        }
        format!("</api/tickets?{}>; rel=\"next\"", query.finish())
    });
    let mut response = match next {
        Some(link) => ([(header::LINK, link)], Json(views)).into_response(),
        None => Json(views).into_response(),
    };
    if owner.is_some() {
        // One user's answer: no shared cache may keep it.
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("private, no-store"),
        );
    }
    Ok(response)
}

pub const MINE_INVALID: &str = "Mine must be true or false.";

/// Whether the query asks for the caller's own tickets: `mine=true`; `false`, blank or absent is
/// the public listing; anything else is refused.
fn mine(query: &str) -> Result<bool, ErrorEntry> {
    let mut mine = false;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if key == "mine" {
            mine = match value.trim() {
                "true" => true,
                "false" | "" => false,
                _ => return Err(ErrorEntry::for_field("mine", MINE_INVALID)),
            };
        }
    }
    Ok(mine)
}

/// The largest page `GET /api/tickets` answers.
pub const MAX_PAGE: u16 = 100;
/// The page size when only `after` is given.
pub const DEFAULT_PAGE: u16 = 20;
pub const LIMIT_INVALID: &str = "Limit must be a whole number from 1 to 100.";
pub const AFTER_INVALID: &str = "After must be the id of a ticket.";
pub const SEARCH_TOO_LONG: &str = "A search must be at most 200 characters.";

/// Which page of the listing a query asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub limit: u16,
    pub after: Option<ObjectId>,
    /// Only tickets whose title contains this, in any case.
    pub title: Option<String>,
}

impl Page {
    /// The first page of the default size, of every title.
    pub fn first() -> Self {
        Self {
            limit: DEFAULT_PAGE,
            after: None,
            title: None,
        }
    }

    /// `None` when the query asks for no page (no `limit`, `after` or non-blank `q`): the whole
    /// listing. Other parameters are ignored, as before paging existed.
    pub fn from_query(query: &str) -> Result<Option<Self>, ApiError> {
        let (mut limit, mut after, mut title) = (None, None, None);
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "limit" => limit = Some(value.trim().to_owned()),
                "after" => after = Some(value.trim().to_owned()),
                "q" => title = Some(value.trim().to_owned()).filter(|q| !q.is_empty()),
                _ => {}
            }
        }
        if limit.is_none() && after.is_none() && title.is_none() {
            return Ok(None);
        }
        let mut errors = Vec::new();
        let limit = match limit.as_deref().map(str::parse::<u16>) {
            None => Some(DEFAULT_PAGE),
            Some(Ok(limit)) if (1..=MAX_PAGE).contains(&limit) => Some(limit),
            Some(_) => {
                errors.push(ErrorEntry::for_field("limit", LIMIT_INVALID));
                None
            }
        };
        let after = match after.as_deref().map(parse_object_id) {
            None => Some(None),
            Some(Some(id)) => Some(Some(id)),
            Some(None) => {
                errors.push(ErrorEntry::for_field("after", AFTER_INVALID));
                None
            }
        };
        if title.as_ref().is_some_and(|q| q.chars().count() > 200) {
            errors.push(ErrorEntry::for_field("q", SEARCH_TOO_LONG));
        }
        match (limit, after) {
            (Some(limit), Some(after)) if errors.is_empty() => Ok(Some(Self {
                limit,
                after,
                title,
            })),
            _ => Err(ApiError::Validation(errors)),
        }
    }
}

async fn show(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Json<TicketView>> {
    let reader = user.as_ref().map(|user| user.id.as_str());
    let ticket = state
        .store
        .get(parse_id(&id)?, reader)
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
    let id = parse_id(&id)?;
    // The checks run on the latest state inside the commit loop: a reservation can land between a
    // first read and our write, and must win over the edit.
    let (ticket, _) = state
        .store
        .modify(&state.bus, id, Some(&user.id), |ticket| {
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
    Ok(Json(ticket.view()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::testing::validate_json;
    use serde_json::json;

    fn check(body: Value) -> Result<(String, i64), Vec<String>> {
        validate_json::<TicketInput>(body).map(|input| (input.title, input.price.cents()))
    }

    #[test]
    fn every_failed_rule_is_reported_title_first_with_the_published_messages() {
        let title = |message: &str| format!("title:{message}");
        let price = |message: &str| format!("price:{message}");
        let long = "é".repeat(MAX_TITLE_CHARS + 1);
        for (body, expected) in [
            (
                json!({}),
                vec![title(TITLE_REQUIRED), price(PRICE_NOT_POSITIVE)],
            ),
            (
                json!({ "title": { "x": 1 }, "price": { "x": 1 } }),
                vec![title(TITLE_REQUIRED), price(PRICE_NOT_POSITIVE)],
            ),
            (
                json!({ "title": true, "price": false }),
                vec![title(TITLE_REQUIRED), price(PRICE_NOT_POSITIVE)],
            ),
            (
                json!({ "title": long, "price": "1e7" }),
                vec![title(TITLE_TOO_LONG), price(&price_too_high())],
            ),
            (
                json!({ "title": "x", "price": 1e300 }),
                vec![price(&price_too_high())],
            ),
            (
                json!({ "title": "x", "price": 0.004 }),
                vec![price(PRICE_NOT_POSITIVE)],
            ),
            (
                json!({ "title": "x", "price": "-1" }),
                vec![price(PRICE_NOT_POSITIVE)],
            ),
            (
                json!({ "title": "x", "price": "Infinity" }),
                vec![price(PRICE_NOT_POSITIVE)],
            ),
        ] {
            assert_eq!(check(body.clone()), Err(expected), "{body}");
        }
    }

    #[test]
    fn titles_are_trimmed_and_prices_rounded_to_the_cent() {
        let at_limit = "é".repeat(MAX_TITLE_CHARS);
        assert_eq!(
            check(json!({ "title": format!(" {at_limit} "), "price": 1_000_000 })),
            Ok((at_limit, MAX_PRICE_CENTS))
        );
        assert_eq!(
            check(json!({ "title": " Gig ", "price": " 12.345 " })),
            Ok(("Gig".to_owned(), 1235))
        );
        assert_eq!(
            check(json!({ "title": "Gig", "price": 0.005 })),
            Ok(("Gig".to_owned(), 1))
        );
    }
}
