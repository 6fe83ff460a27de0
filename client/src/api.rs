//! Calls to the ticketing APIs through `API_BASE_URL`, made exactly as the browser would make them:
//! the browser's `Cookie` header goes along, and the APIs' `Set-Cookie` headers come back so the
//! pages can hand them to the browser.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponseParts, ResponseParts};
use chrono::{DateTime, Utc};
use common::client_address::{CLIENT_ADDRESS_HEADER, CLIENT_ADDRESS_KEY_HEADER};
use common::error::ErrorBody;
use common::events::OrderStatus;
use common::money::Price;
use common::telemetry::TraceContext;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::views::AuthMode;

/// How long to wait for a TCP connection to the ingress.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long any one API call may take, end to end; a page never hangs longer than this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A payment waits for Stripe (payments' Stripe timeout, 8 s, plus its database writes): longer
/// than any other call, so the page never gives up on a charge that is still being made.
pub const PAYMENT_TIMEOUT: Duration = Duration::from_secs(20);
/// Readiness only asks whether something answers, and must answer within the probe's 2 s timeout.
const PING_TIMEOUT: Duration = Duration::from_millis(1500);
/// The largest API response we read; every real one is far smaller.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// How many tickets the home page shows at a time.
pub const TICKETS_PER_PAGE: u16 = 20;
/// The longest title search the tickets API accepts.
pub const MAX_SEARCH_CHARS: usize = 200;

/// A handle on the APIs. Cheap to clone: one connection pool shared by every request.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: Arc<str>,
    /// With it, calls to auth vouch for the browser's address (`common::client_address`).
    client_address_key: Option<Arc<SecretString>>,
}

/// What the browser sent that the APIs must see too: its cookies (the session), the request id
/// (so the services' logs line up with ours) and its address (for auth's rate limits).
#[derive(Debug, Clone, Default)]
pub struct Forwarded {
    cookie: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
    client_address: Option<IpAddr>,
}

impl Forwarded {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        // HTTP/2 browsers may split cookies over several headers; HTTP/1.1 wants them in one. Our
        // own CSRF cookie stays here: the APIs have no use for it.
        let cookies: Vec<&[u8]> = headers
            .get_all(COOKIE)
            .iter()
            .flat_map(|value| value.as_bytes().split(|byte| *byte == b';'))
            .map(<[u8]>::trim_ascii)
            .filter(|pair| !pair.is_empty() && !crate::csrf::is_token_cookie(pair))
            .collect();
        let cookie = match cookies.as_slice() {
            [] => None,
            many => HeaderValue::from_bytes(&many.join(&b"; "[..])).ok(),
        };
        Self {
            cookie,
            request_id: headers.get("x-request-id").cloned(),
            client_address: None,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Forwarded {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            // The browser, as our proxy saw it (or as it reached us directly).
            client_address: common::client_address::sender(parts),
            ..Self::from_headers(&parts.headers)
        })
    }
}

/// `Set-Cookie` headers an API sent, to be passed on to the browser unchanged.
#[derive(Debug, Clone, Default)]
pub struct SetCookies(Vec<HeaderValue>);

impl SetCookies {
    fn from_headers(headers: &HeaderMap) -> Self {
        Self(headers.get_all(SET_COOKIE).iter().cloned().collect())
    }

    pub fn extend(&mut self, other: SetCookies) {
        self.0.extend(other.0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl IntoResponseParts for SetCookies {
    type Error = Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        for value in self.0 {
            res.headers_mut().append(SET_COOKIE, value);
        }
        Ok(res)
    }
}

/// A successful API answer.
#[derive(Debug)]
pub struct Reply<T> {
    pub body: T,
    pub cookies: SetCookies,
    /// The answer is one page of a list and another follows (`Link: <…>; rel="next"`).
    pub more: bool,
}

/// The messages of an API error envelope: all of them in order (for the alert) and grouped by the
/// form field they are about (to show next to that field).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormErrors {
    pub messages: Vec<String>,
    fields: Vec<(String, Vec<String>)>,
}

impl FormErrors {
    pub fn from_body(body: ErrorBody) -> Self {
        let mut errors = Self::default();
        for entry in body.errors {
            if let Some(field) = entry.field {
                match errors.fields.iter_mut().find(|(name, _)| *name == field) {
                    Some((_, messages)) => messages.push(entry.message.clone()),
                    None => errors.fields.push((field, vec![entry.message.clone()])),
                }
            }
            errors.messages.push(entry.message);
        }
        errors
    }

    pub fn general(message: impl Into<String>) -> Self {
        Self {
            messages: vec![message.into()],
            fields: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Back in the APIs' shape, `{"errors": [{"message", "field"?}]}`, for a page's script.
    pub fn to_json(&self) -> serde_json::Value {
        let entries: Vec<serde_json::Value> = self
            .messages
            .iter()
            .map(|message| {
                let field = self
                    .fields
                    .iter()
                    .find(|(_, messages)| messages.contains(message))
                    .map(|(field, _)| field);
                match field {
                    Some(field) => json!({ "message": message, "field": field }),
                    None => json!({ "message": message }),
                }
            })
            .collect();
        json!({ "errors": entries })
    }

    /// The messages about one form field.
    pub fn field(&self, name: &str) -> &[String] {
        self.fields
            .iter()
            .find(|(field, _)| field == name)
            .map_or(&[], |(_, messages)| messages.as_slice())
    }

    pub fn has_field(&self, name: &str) -> bool {
        !self.field(name).is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API refused the request (4xx); `errors` is what to tell the user.
    #[error("the API refused the request with {status}")]
    Rejected {
        status: StatusCode,
        errors: FormErrors,
        cookies: SetCookies,
    },
    /// Nothing answered in time, or the API said it is temporarily unavailable (503).
    #[error("the API is unavailable: {0}")]
    Unavailable(String),
    /// The API failed (5xx) or answered something we cannot read.
    #[error("the API answered badly: {0}")]
    BadGateway(String),
}

impl ApiError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The signed-in user, as `GET /api/users/currentuser` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct User {
    pub id: String,
    pub email: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ticket {
    pub id: String,
    pub title: String,
    pub price: Price,
    #[serde(default)]
    pub order_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OrderTicket {
    pub id: String,
    pub title: String,
    pub price: Price,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub id: String,
    pub status: OrderStatus,
    pub expires_at: DateTime<Utc>,
    pub ticket: OrderTicket,
    /// A cancelled order whose charge was refunded (the orders API says so only then).
    #[serde(default)]
    pub refunded: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CurrentUserBody {
    current_user: Option<User>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Payment {
    pub id: String,
}

/// The payments API's answer to a PaymentIntent: paid (`{"success": true, "id"}`), or waiting for
/// the buyer's 3-D Secure (`{"status": "requires_action", "clientSecret"}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IntentReply {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default, rename = "clientSecret")]
    pub client_secret: Option<String>,
}

/// The payments API's `GET /api/payments/{orderId}`: the state of the order's latest attempt.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PaymentState {
    pub status: String,
}

impl Api {
    pub fn new(base: &str, client_address_key: Option<SecretString>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(60))
            // The APIs never redirect; following one would send the session cookie elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ticketing-client/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base: Arc::from(base.trim_end_matches('/')),
            client_address_key: client_address_key.map(Arc::new),
        })
    }

    /// `None` when the visitor is anonymous.
    pub async fn current_user(&self, fwd: &Forwarded) -> Result<Reply<Option<User>>, ApiError> {
        let reply: Reply<CurrentUserBody> = self.get("/api/users/currentuser", fwd).await?;
        Ok(Reply {
            body: reply.body.current_user,
            cookies: reply.cookies,
            more: false,
        })
    }

    /// Signs up or signs in, as `mode` says; the reply's cookies hold the new session.
    pub async fn authenticate(
        &self,
        fwd: &Forwarded,
        mode: AuthMode,
        email: &str,
        password: &str,
    ) -> Result<Reply<Value>, ApiError> {
        let path = match mode {
            AuthMode::SignUp => "/api/users/signup",
            AuthMode::SignIn => "/api/users/signin",
        };
        let body = json!({ "email": email, "password": password });
        self.post(path, fwd, body).await
    }

    pub async fn signout(&self, fwd: &Forwarded) -> Result<Reply<Value>, ApiError> {
        self.post("/api/users/signout", fwd, json!({})).await
    }

    /// One page of the free tickets ([`TICKETS_PER_PAGE`]), after `after` (a valid id, see
    /// [`is_id`]) and with `search` in the title when given; `more` says whether another follows.
    pub async fn tickets(
        &self,
        fwd: &Forwarded,
        search: Option<&str>,
        after: Option<&str>,
    ) -> Result<Reply<Vec<Ticket>>, ApiError> {
        // Built in a block of its own: the serializer is not `Send` and must not live across the await.
        let path = {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query.append_pair("limit", &TICKETS_PER_PAGE.to_string());
            if let Some(after) = after {
                query.append_pair("after", after);
            }
            if let Some(search) = search {
                query.append_pair("q", search);
            }
            format!("/api/tickets?{}", query.finish())
        };
        self.get(&path, fwd).await
    }

    /// One page of the signed-in user's own tickets, free or held by an order
    /// ([`TICKETS_PER_PAGE`], after `after`, a valid id, see [`is_id`]); `more` says whether another
    /// follows. A 401 when nobody is signed in.
    pub async fn my_tickets(
        &self,
        fwd: &Forwarded,
        after: Option<&str>,
    ) -> Result<Reply<Vec<Ticket>>, ApiError> {
        let path = {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query.append_pair("mine", "true");
            query.append_pair("limit", &TICKETS_PER_PAGE.to_string());
            if let Some(after) = after {
                query.append_pair("after", after);
            }
            format!("/api/tickets?{}", query.finish())
        };
        self.get(&path, fwd).await
    }

    /// `id` must already be a valid id (see [`is_id`]): it becomes part of the URL.
    pub async fn ticket(&self, fwd: &Forwarded, id: &str) -> Result<Reply<Ticket>, ApiError> {
        self.get(&format!("/api/tickets/{id}"), fwd).await
    }

    /// The price goes as the string the user typed (the API accepts numeric strings), so the API's
    /// validation judges exactly what was entered.
    pub async fn create_ticket(
        &self,
        fwd: &Forwarded,
        title: &str,
        price: &str,
    ) -> Result<Reply<Ticket>, ApiError> {
        let body = json!({ "title": title, "price": price });
        self.post("/api/tickets", fwd, body).await
    }

    pub async fn create_order(
        &self,
        fwd: &Forwarded,
        ticket_id: &str,
    ) -> Result<Reply<Order>, ApiError> {
        self.post("/api/orders", fwd, json!({ "ticketId": ticket_id }))
            .await
    }

    pub async fn orders(&self, fwd: &Forwarded) -> Result<Reply<Vec<Order>>, ApiError> {
        self.get("/api/orders", fwd).await
    }

    /// `id` must already be a valid id (see [`is_id`]): it becomes part of the URL.
    pub async fn order(&self, fwd: &Forwarded, id: &str) -> Result<Reply<Order>, ApiError> {
        self.get(&format!("/api/orders/{id}"), fwd).await
    }

    /// Where the order's payment stands (`None` before its first attempt). `id` must already be a
    /// valid id (see [`is_id`]).
    pub async fn payment_state(
        &self,
        fwd: &Forwarded,
        id: &str,
    ) -> Result<Option<PaymentState>, ApiError> {
        match self
            .get::<PaymentState>(&format!("/api/payments/{id}"), fwd)
            .await
        {
            Ok(reply) => Ok(Some(reply.body)),
            Err(ApiError::Rejected {
                status: StatusCode::NOT_FOUND,
                ..
            }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    pub async fn pay(
        &self,
        fwd: &Forwarded,
        order_id: &str,
        token: &str,
    ) -> Result<Reply<Payment>, ApiError> {
        let body = json!({ "orderId": order_id, "token": token });
        self.send(
            Method::POST,
            "/api/payments",
            fwd,
            Some(body),
            PAYMENT_TIMEOUT,
        )
        .await
    }

    /// `POST /api/payments/intents`: pays with the PaymentMethod Stripe.js made in the page.
    pub async fn pay_intent(
        &self,
        fwd: &Forwarded,
        order_id: &str,
        payment_method: &str,
    ) -> Result<Reply<IntentReply>, ApiError> {
        let body = json!({ "orderId": order_id, "paymentMethod": payment_method });
        self.send(
            Method::POST,
            "/api/payments/intents",
            fwd,
            Some(body),
            PAYMENT_TIMEOUT,
        )
        .await
    }

    /// `POST /api/payments/intents/{orderId}/check`: after the buyer's 3-D Secure in the page.
    pub async fn check_intent(
        &self,
        fwd: &Forwarded,
        order_id: &str,
    ) -> Result<Reply<IntentReply>, ApiError> {
        // Callers pass a checked id (`is_id`), so it needs no escaping.
        let path = format!("/api/payments/intents/{order_id}/check");
        self.send(Method::POST, &path, fwd, None, PAYMENT_TIMEOUT)
            .await
    }

    /// Whether anything answers at the API base: any HTTP status counts (the ingress answering 503
    /// for a backend that is down is still the ingress being there).
    pub async fn ping(&self) -> bool {
        self.http
            .get(format!("{}/api/users/currentuser", self.base))
            .timeout(PING_TIMEOUT)
            .send()
            .await
            .is_ok()
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        fwd: &Forwarded,
    ) -> Result<Reply<T>, ApiError> {
        self.send(Method::GET, path, fwd, None, REQUEST_TIMEOUT)
            .await
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        fwd: &Forwarded,
        body: Value,
    ) -> Result<Reply<T>, ApiError> {
        self.send(Method::POST, path, fwd, Some(body), REQUEST_TIMEOUT)
            .await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        fwd: &Forwarded,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<Reply<T>, ApiError> {
        // In the trace of the page's request (the browser's, or one begun by the client).
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .headers(TraceContext::current().http_headers())
            .timeout(timeout);
        if let Some(cookie) = &fwd.cookie {
            request = request.header(COOKIE, cookie.clone());
        }
        if let Some(id) = &fwd.request_id {
            request = request.header("x-request-id", id.clone());
        }
        // Only auth needs the browser's address; the key goes nowhere else.
        if path.starts_with("/api/users/")
            && let (Some(key), Some(address)) = (&self.client_address_key, fwd.client_address)
        {
            request = request
                .header(CLIENT_ADDRESS_HEADER, address.to_string())
                .header(CLIENT_ADDRESS_KEY_HEADER, key.expose_secret());
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|err| {
            tracing::warn!(%method, path, error = %err, "API unreachable");
            ApiError::Unavailable(format!("{method} {path}: {err}"))
        })?;
        let status = response.status();
        let cookies = SetCookies::from_headers(response.headers());
        let more = has_next_page(response.headers());
        let bytes = read_limited(response).await.map_err(|err| {
            tracing::warn!(%method, path, %status, error = %err, "API response unreadable");
            ApiError::Unavailable(format!("{method} {path}: {err}"))
        })?;
        // Accepted but not done (a payment being confirmed): said in the error shape.
        if status == StatusCode::ACCEPTED
            && let Ok(body) = serde_json::from_slice::<ErrorBody>(&bytes)
            && !body.errors.is_empty()
        {
            return Err(ApiError::Rejected {
                status,
                errors: FormErrors::from_body(body),
                cookies,
            });
        }
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map(|body| Reply {
                    body,
                    cookies,
                    more,
                })
                .map_err(|err| {
                    tracing::error!(%method, path, %status, error = %err, "API answered an unexpected body");
                    ApiError::BadGateway(format!("{method} {path}: {err}"))
                });
        }
        if status.is_client_error() {
            let errors = serde_json::from_slice::<ErrorBody>(&bytes)
                .ok()
                .filter(|body| !body.errors.is_empty())
                .map_or_else(
                    || FormErrors::general(fallback_message(status)),
                    FormErrors::from_body,
                );
            return Err(ApiError::Rejected {
                status,
                errors,
                cookies,
            });
        }
        tracing::warn!(%method, path, %status, "API failed");
        if status == StatusCode::SERVICE_UNAVAILABLE {
            Err(ApiError::Unavailable(format!("{method} {path}: {status}")))
        } else {
            Err(ApiError::BadGateway(format!("{method} {path}: {status}")))
        }
    }
}

/// Whether a `Link` header names a next page.
fn has_next_page(headers: &reqwest::header::HeaderMap) -> bool {
    headers
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|link| link.split(';').skip(1).any(|p| p.trim() == "rel=\"next\""))
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(format!("response larger than {MAX_RESPONSE_BYTES} bytes"));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// What to say when a 4xx comes without our error envelope (e.g. from the ingress itself).
fn fallback_message(status: StatusCode) -> String {
    match status {
        StatusCode::UNAUTHORIZED => common::error::NOT_AUTHORIZED.to_owned(),
        StatusCode::NOT_FOUND => common::error::NOT_FOUND.to_owned(),
        StatusCode::PAYLOAD_TOO_LARGE => "The request was too large.".to_owned(),
        StatusCode::TOO_MANY_REQUESTS => {
            "Too many attempts, please wait a minute and try again.".to_owned()
        }
        other => format!("The request was refused ({other})."),
    }
}

/// Whether a path segment is an id the APIs could know (24 lowercase hex characters). Anything
/// else is answered 404 without asking the API, and never spliced into an API URL.
pub fn is_id(text: &str) -> bool {
    text.len() == 24
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use common::error::ErrorEntry;

    use super::*;

    #[test]
    fn field_messages_are_grouped_and_all_messages_kept_in_order() {
        let errors = FormErrors::from_body(ErrorBody {
            errors: vec![
                ErrorEntry::for_field("ticketId", "Invalid value"),
                ErrorEntry::new("Ticket is already reserved."),
                ErrorEntry::for_field("ticketId", "Ticket ID must be provided."),
            ],
        });
        assert_eq!(
            errors.messages,
            [
                "Invalid value",
                "Ticket is already reserved.",
                "Ticket ID must be provided."
            ]
        );
        assert_eq!(
            errors.field("ticketId"),
            ["Invalid value", "Ticket ID must be provided."]
        );
        assert!(errors.field("price").is_empty());
    }

    #[test]
    fn only_object_id_shaped_segments_are_ids() {
        assert!(is_id("64b7f0c2a1b2c3d4e5f60718"));
        for bad in [
            "",
            "64b7f0c2a1b2c3d4e5f6071",
            "64B7F0C2A1B2C3D4E5F60718",
            "..%2F..%2Fusers%2Fsignout",
            "64b7f0c2a1b2c3d4e5f6071g",
        ] {
            assert!(!is_id(bad), "{bad}");
        }
    }

    #[test]
    fn split_cookie_headers_are_forwarded_as_one() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1"));
        headers.append(COOKIE, HeaderValue::from_static("express:sess=abc="));
        let fwd = Forwarded::from_headers(&headers);
        assert_eq!(
            fwd.cookie.as_ref().and_then(|v| v.to_str().ok()),
            Some("a=1; express:sess=abc=")
        );
    }
}
