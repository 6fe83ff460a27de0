//! The pages' templates (askama, compiled into the binary from `client/templates/`) and the small
//! view models they show.

use askama::Template;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use common::events::OrderStatus;
use common::money::Price;

use crate::api::{FormErrors, Order, Ticket, User};

/// Who is looking, for the header's links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    SignedIn(User),
    SignedOut,
    /// The API could not tell us (it is down): the header shows the brand only.
    Unknown,
}

impl From<Option<User>> for Viewer {
    fn from(user: Option<User>) -> Self {
        user.map_or(Self::SignedOut, Self::SignedIn)
    }
}

impl Viewer {
    pub fn user(&self) -> Option<&User> {
        match self {
            Self::SignedIn(user) => Some(user),
            _ => None,
        }
    }

    pub fn is_signed_out(&self) -> bool {
        matches!(self, Self::SignedOut)
    }
}

/// Renders a page with its status; a template that fails to render is logged and answered with a
/// plain 500 page (it cannot happen with these templates, but a panic is never the answer).
pub fn render<T: Template>(status: StatusCode, page: &T) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "a template failed to render");
            internal_error_page()
        }
    }
}

/// The last-resort page, with no template involved.
pub fn internal_error_page() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(CONTENT_TYPE, "text/html; charset=utf-8")],
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Something went wrong · \
         Ticketing System</title><link rel=\"stylesheet\" href=\"/static/app.css\"></head><body><main \
         class=\"container\"><h1>Something went wrong</h1><p>Please try again. <a href=\"/\">Back to \
         the tickets</a></p></main></body></html>",
    )
        .into_response()
}

/// An amount in euros the way people read it: `€12.50`, `€1,250.00`.
pub fn euros(price: Price) -> String {
    let cents = price.cents();
    let sign = if cents < 0 { "-" } else { "" };
    let cents = cents.unsigned_abs();
    let whole = (cents / 100).to_string();
    let mut grouped = String::with_capacity(whole.len() + whole.len() / 3);
    for (i, digit) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    format!("{sign}€{grouped}.{:02}", cents % 100)
}

pub struct TicketRow {
    pub id: String,
    pub title: String,
    pub price: String,
}

impl From<Ticket> for TicketRow {
    fn from(ticket: Ticket) -> Self {
        Self {
            price: euros(ticket.price),
            id: ticket.id,
            title: ticket.title,
        }
    }
}

#[derive(Template)]
#[template(path = "home.html")]
pub struct HomePage {
    pub viewer: Viewer,
    pub tickets: Vec<TicketRow>,
    /// The title search shown in the search box (empty: none).
    pub search: String,
    /// The next page's address, while there is one.
    pub next_href: Option<String>,
    /// The first page's address, when this is a later page.
    pub first_href: Option<String>,
}

/// One of the seller's own tickets: free, or held by an order. The tickets service cannot tell a
/// reservation from a sale (it learns of orders, not of payments), so a held ticket is "reserved
/// or sold".
pub struct MyTicketRow {
    pub id: String,
    pub title: String,
    pub price: String,
    pub held: bool,
}

impl From<Ticket> for MyTicketRow {
    fn from(ticket: Ticket) -> Self {
        Self {
            held: ticket.order_id.is_some(),
            price: euros(ticket.price),
            id: ticket.id,
            title: ticket.title,
        }
    }
}

#[derive(Template)]
#[template(path = "tickets_mine.html")]
pub struct MyTicketsPage {
    pub viewer: Viewer,
    pub tickets: Vec<MyTicketRow>,
    /// The next page's address, while there is one.
    pub next_href: Option<String>,
    /// The first page's address, when this is a later page.
    pub first_href: Option<String>,
}

/// Sign up and sign in share one form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    SignUp,
    SignIn,
}

#[derive(Template)]
#[template(path = "auth_form.html")]
pub struct AuthPage {
    pub viewer: Viewer,
    pub heading: &'static str,
    pub form_id: &'static str,
    pub action: &'static str,
    pub password_autocomplete: &'static str,
    /// What the user typed, shown again after an error (the password never is).
    pub email: String,
    pub errors: FormErrors,
    /// The hidden field's CSRF token (`csrf::FormToken`).
    pub csrf_token: String,
}

impl AuthPage {
    pub fn new(
        viewer: Viewer,
        mode: AuthMode,
        email: String,
        errors: FormErrors,
        csrf_token: String,
    ) -> Self {
        let (heading, form_id, action, password_autocomplete) = match mode {
            AuthMode::SignUp => ("Sign Up", "signup-form", "/auth/signup", "new-password"),
            AuthMode::SignIn => ("Sign In", "signin-form", "/auth/signin", "current-password"),
        };
        Self {
            viewer,
            heading,
            form_id,
            action,
            password_autocomplete,
            email,
            errors,
            csrf_token,
        }
    }
}

#[derive(Template)]
#[template(path = "signout.html")]
pub struct SignoutPage {
    pub viewer: Viewer,
    /// The hidden field's CSRF token (`csrf::FormToken`).
    pub csrf_token: String,
}

#[derive(Template)]
#[template(path = "ticket_new.html")]
pub struct NewTicketPage {
    pub viewer: Viewer,
    pub title: String,
    pub price: String,
    pub errors: FormErrors,
    /// The hidden field's CSRF token (`csrf::FormToken`).
    pub csrf_token: String,
}

#[derive(Template)]
#[template(path = "ticket_show.html")]
pub struct TicketPage {
    pub viewer: Viewer,
    pub ticket: TicketRow,
    /// Whether an order holds the ticket (reserved or sold): no "Purchase" then.
    pub taken: bool,
    /// The viewer's own order holding it, to link to.
    pub own_order: Option<String>,
    pub errors: FormErrors,
    /// The hidden field's CSRF token (`csrf::FormToken`).
    pub csrf_token: String,
}

/// One row of "My orders": the ticket, what it costs, where the order stands in words a buyer
/// understands, and, while it can be paid, the time to pay by.
pub struct OrderRow {
    pub id: String,
    pub title: String,
    pub price: String,
    /// The orders API's status, for scripts and tests (`data-status`).
    pub status_code: &'static str,
    /// The state as a CSS class name.
    pub state_class: &'static str,
    /// The state in words.
    pub state: &'static str,
    /// While the order awaits payment: when the window closes.
    pub pay_by: Option<PayBy>,
}

/// A moment shown as `HH:MM UTC` in a `<time datetime=…>`.
pub struct PayBy {
    /// ISO 8601, UTC, to the second (the `datetime` attribute).
    pub datetime: String,
    /// `13:05 UTC`.
    pub text: String,
}

impl PayBy {
    pub fn at(moment: DateTime<Utc>) -> Self {
        Self {
            datetime: moment.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            text: moment.format("%H:%M UTC").to_string(),
        }
    }
}

impl OrderRow {
    pub fn new(order: Order, now: DateTime<Utc>) -> Self {
        let state = OrderState::of(&order, now);
        Self {
            pay_by: matches!(state, OrderState::Payable(_)).then(|| PayBy::at(order.expires_at)),
            price: euros(order.ticket.price),
            status_code: order.status.as_str(),
            state_class: state.class(),
            state: state.words(),
            id: order.id,
            title: order.ticket.title,
        }
    }
}

#[derive(Template)]
#[template(path = "orders_index.html")]
pub struct OrdersPage {
    pub viewer: Viewer,
    pub orders: Vec<OrderRow>,
}

impl OrdersPage {
    pub fn new(viewer: Viewer, orders: Vec<Order>, now: DateTime<Utc>) -> Self {
        let orders = orders
            .into_iter()
            .map(|order| OrderRow::new(order, now))
            .collect();
        Self { viewer, orders }
    }
}

/// What the order's latest payment attempt tells the buyer beyond the order's own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentNote {
    /// No attempt, or nothing to add (paid and known as paid, refunded and shown as such).
    Nothing,
    /// Charged or being confirmed with Stripe: paying again would only be refused (409).
    InProgress,
    /// The last attempt did not go through: the buyer may pay again while the window is open.
    Failed,
    /// The order was cancelled while it was charged and the refund is on its way.
    Refunding,
}

impl PaymentNote {
    /// From the payments API's status of the latest attempt.
    pub fn of(status: &str) -> Self {
        match status {
            "pending" | "unknown" | "succeeded" => Self::InProgress,
            "failed" => Self::Failed,
            "refunding" => Self::Refunding,
            _ => Self::Nothing,
        }
    }
}

/// Where an order stands, as the order page tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderState {
    /// Still payable for this many seconds.
    Payable(i64),
    Expired,
    Cancelled,
    /// Cancelled (by its owner or by expiry) while it was being paid; the charge went back.
    Refunded,
    Paid,
}

impl OrderState {
    /// Seconds left are rounded like the original page did (`Math.round`), and a negative value
    /// means expired, whatever the status says (the expiration service may not have run yet).
    pub fn of(order: &Order, now: DateTime<Utc>) -> Self {
        let millis = (order.expires_at - now).num_milliseconds();
        let seconds = (millis as f64 / 1000.0).round() as i64;
        match order.status {
            OrderStatus::Complete => Self::Paid,
            OrderStatus::Cancelled if order.refunded => Self::Refunded,
            _ if seconds < 0 => Self::Expired,
            OrderStatus::Cancelled => Self::Cancelled,
            OrderStatus::Created | OrderStatus::AwaitingPayment => Self::Payable(seconds),
        }
    }

    /// The state in a buyer's words.
    pub fn words(self) -> &'static str {
        match self {
            Self::Payable(_) => "Awaiting payment",
            Self::Expired => "Expired",
            Self::Cancelled => "Cancelled",
            Self::Refunded => "Cancelled, payment refunded",
            Self::Paid => "Paid",
        }
    }

    /// The state as a CSS class name (`badge-<class>`).
    pub fn class(self) -> &'static str {
        match self {
            Self::Payable(_) => "payable",
            Self::Expired => "expired",
            Self::Cancelled | Self::Refunded => "cancelled",
            Self::Paid => "paid",
        }
    }
}

/// The card form through Stripe.js, when a publishable key is configured (without one the pay
/// form posts Stripe's test token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    /// Stripe's publishable key.
    pub key: String,
    /// Where Stripe.js is loaded from.
    pub script_url: String,
}

#[derive(Template)]
#[template(path = "order_show.html")]
pub struct OrderPage {
    pub viewer: Viewer,
    pub id: String,
    pub title: String,
    pub price: String,
    pub status: &'static str,
    pub state: OrderState,
    /// What the order's payment adds to the state, if anything.
    pub payment: PaymentNote,
    pub checkout: Option<Checkout>,
    pub errors: FormErrors,
    /// The hidden field's CSRF token (`csrf::FormToken`).
    pub csrf_token: String,
}

impl OrderPage {
    pub fn new(
        viewer: Viewer,
        order: Order,
        payment: Option<PaymentNote>,
        now: DateTime<Utc>,
        checkout: Option<Checkout>,
        errors: FormErrors,
        csrf_token: String,
    ) -> Self {
        Self {
            state: OrderState::of(&order, now),
            payment: payment.unwrap_or(PaymentNote::Nothing),
            status: order.status.as_str(),
            price: euros(order.ticket.price),
            checkout,
            id: order.id,
            title: order.ticket.title,
            viewer,
            errors,
            csrf_token,
        }
    }
}

#[derive(Template)]
#[template(path = "not_found.html")]
pub struct NotFoundPage {
    pub viewer: Viewer,
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub viewer: Viewer,
    pub heading: String,
    pub message: String,
    pub errors: FormErrors,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::OrderTicket;
    use chrono::Duration;

    #[test]
    fn euros_have_two_decimals_and_grouped_thousands() {
        assert_eq!(euros(Price::from_cents(1250)), "€12.50");
        assert_eq!(euros(Price::from_cents(5)), "€0.05");
        assert_eq!(euros(Price::from_cents(100_000)), "€1,000.00");
        assert_eq!(euros(Price::from_cents(123_456_789)), "€1,234,567.89");
        assert_eq!(euros(Price::from_cents(-250)), "-€2.50");
    }

    fn order(status: OrderStatus, expires_in_ms: i64, now: DateTime<Utc>) -> Order {
        Order {
            id: "64b7f0c2a1b2c3d4e5f60718".into(),
            status,
            expires_at: now + Duration::milliseconds(expires_in_ms),
            ticket: OrderTicket {
                id: "64b7f0c2a1b2c3d4e5f60719".into(),
                title: "Concert".into(),
                price: Price::from_cents(1000),
            },
            refunded: false,
        }
    }

    #[test]
    fn an_order_is_payable_until_its_time_runs_out() {
        let now = Utc::now();
        let state = |status, ms| OrderState::of(&order(status, ms, now), now);
        assert_eq!(state(OrderStatus::Created, 41_600), OrderState::Payable(42));
        assert_eq!(state(OrderStatus::Created, 0), OrderState::Payable(0));
        assert_eq!(state(OrderStatus::Created, -600), OrderState::Expired);
        assert_eq!(state(OrderStatus::Cancelled, -5_000), OrderState::Expired);
        assert_eq!(state(OrderStatus::Cancelled, 5_000), OrderState::Cancelled);
        assert_eq!(state(OrderStatus::Complete, -5_000), OrderState::Paid);
    }

    #[test]
    fn a_cancelled_order_whose_charge_went_back_says_refunded_even_after_its_window() {
        let now = Utc::now();
        for ms in [5_000, -5_000] {
            let refunded = Order {
                refunded: true,
                ..order(OrderStatus::Cancelled, ms, now)
            };
            assert_eq!(OrderState::of(&refunded, now), OrderState::Refunded);
        }
    }
}
