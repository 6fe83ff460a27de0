//! The scripted purchase flow, as real clients would drive it: every call is retried on connection
//! errors, 5xx and eventual-consistency 404s, and an operation counts as acknowledged once the
//! service has confirmed it (directly, or as found on a later read after a lost response).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::stack::Stack;

#[derive(Default)]
pub struct Stats {
    pub attempted: AtomicUsize,
    pub acknowledged: AtomicUsize,
}

/// What the flow did, for the convergence check.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// (ticket id, seller cookie)
    pub tickets: Vec<String>,
    /// Buyers' cookies, one per ticket.
    pub buyers: Vec<String>,
    /// Orders that were paid (201 or "already paid" after a retry).
    pub paid_orders: Vec<String>,
    /// Orders left to expire.
    pub expiring_orders: Vec<String>,
    /// Orders cancelled by their buyer.
    pub cancelled_orders: Vec<String>,
}

const RETRY_FOR: Duration = Duration::from_secs(45);

pub struct Flow<'a> {
    pub stack: &'a Stack,
    pub stats: Stats,
}

struct Reply {
    status: StatusCode,
    body: Value,
    cookie: Option<String>,
}

impl<'a> Flow<'a> {
    pub fn new(stack: &'a Stack) -> Self {
        Self {
            stack,
            stats: Stats::default(),
        }
    }

    async fn send(
        &self,
        method: Method,
        service: &str,
        path: &str,
        cookie: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<Reply> {
        let mut request = self
            .stack
            .http
            .request(method, self.stack.url(service, path)?);
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status();
        let cookie = response
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::to_owned);
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Reply {
            status,
            body,
            cookie,
        })
    }

    /// Sends until `done` accepts the reply (Some) or the retry window ends; transient answers
    /// (connection errors, 5xx, and the statuses in `transient`) are retried.
    async fn until<T>(
        &self,
        what: &str,
        transient: &[StatusCode],
        mut attempt: impl AsyncFnMut() -> anyhow::Result<Reply>,
        mut done: impl FnMut(&Reply) -> Option<T>,
    ) -> anyhow::Result<T> {
        self.stats.attempted.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + RETRY_FOR;
        let mut last = String::new();
        while Instant::now() < deadline {
            match attempt().await {
                Ok(reply) => {
                    if let Some(value) = done(&reply) {
                        self.stats.acknowledged.fetch_add(1, Ordering::Relaxed);
                        return Ok(value);
                    }
                    if !(reply.status.is_server_error() || transient.contains(&reply.status)) {
                        bail!("{what}: unexpected {} {}", reply.status, reply.body);
                    }
                    last = format!("{} {}", reply.status, reply.body);
                }
                Err(err) => last = format!("{err:#}"),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!("{what}: gave up after {RETRY_FOR:?}; last answer: {last}")
    }

    pub async fn signup(&self, email: &str) -> anyhow::Result<String> {
        let body = json!({ "email": email, "password": "password" });
        let signin = json!({ "email": email, "password": "password" });
        self.until(
            "signup",
            &[StatusCode::BAD_REQUEST],
            async || {
                let reply = self
                    .send(Method::POST, "auth", "/api/users/signup", None, Some(&body))
                    .await?;
                // A lost 201 makes the retry answer "Email in use": sign in instead.
                if reply.status == StatusCode::BAD_REQUEST {
                    return self
                        .send(
                            Method::POST,
                            "auth",
                            "/api/users/signin",
                            None,
                            Some(&signin),
                        )
                        .await;
                }
                Ok(reply)
            },
            |reply| {
                reply
                    .status
                    .is_success()
                    .then(|| reply.cookie.clone())
                    .flatten()
            },
        )
        .await
    }

    pub async fn create_ticket(
        &self,
        seller: &str,
        title: &str,
        price: f64,
    ) -> anyhow::Result<String> {
        let body = json!({ "title": title, "price": price });
        self.until(
            "create ticket",
            &[],
            async || {
                self.send(
                    Method::POST,
                    "tickets",
                    "/api/tickets",
                    Some(seller),
                    Some(&body),
                )
                .await
            },
            |reply| {
                (reply.status == StatusCode::CREATED)
                    .then(|| reply.body["id"].as_str().map(str::to_owned))
                    .flatten()
            },
        )
        .await
    }

    /// The buyer's live order for a ticket, if any (to recover from a lost 201).
    async fn live_order(&self, buyer: &str, ticket: &str) -> anyhow::Result<Option<String>> {
        let reply = self
            .send(Method::GET, "orders", "/api/orders", Some(buyer), None)
            .await?;
        Ok(reply
            .body
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|order| {
                let live = matches!(order["status"].as_str(), Some("created" | "complete"));
                (live && order["ticket"]["id"] == ticket)
                    .then(|| order["id"].as_str().map(str::to_owned))
                    .flatten()
            }))
    }

    pub async fn order(&self, buyer: &str, ticket: &str) -> anyhow::Result<String> {
        let body = json!({ "ticketId": ticket });
        self.until(
            "order",
            &[StatusCode::NOT_FOUND, StatusCode::BAD_REQUEST],
            async || {
                let reply = self
                    .send(
                        Method::POST,
                        "orders",
                        "/api/orders",
                        Some(buyer),
                        Some(&body),
                    )
                    .await?;
                if reply.status == StatusCode::BAD_REQUEST
                    && let Some(id) = self.live_order(buyer, ticket).await?
                {
                    return Ok(Reply {
                        status: StatusCode::CREATED,
                        body: json!({ "id": id }),
                        cookie: None,
                    });
                }
                Ok(reply)
            },
            |reply| {
                (reply.status == StatusCode::CREATED)
                    .then(|| reply.body["id"].as_str().map(str::to_owned))
                    .flatten()
            },
        )
        .await
    }

    pub async fn cancel(&self, buyer: &str, order: &str) -> anyhow::Result<()> {
        let path = format!("/api/orders/{order}");
        self.until(
            "cancel",
            &[],
            async || {
                self.send(Method::DELETE, "orders", &path, Some(buyer), None)
                    .await
            },
            |reply| (reply.status == StatusCode::NO_CONTENT).then_some(()),
        )
        .await
    }

    pub async fn pay(&self, buyer: &str, order: &str) -> anyhow::Result<()> {
        let body = json!({ "orderId": order, "token": "tok_visa" });
        self.until(
            "pay",
            &[
                StatusCode::NOT_FOUND,
                StatusCode::CONFLICT,
                StatusCode::BAD_REQUEST,
            ],
            async || {
                self.send(
                    Method::POST,
                    "payments",
                    "/api/payments",
                    Some(buyer),
                    Some(&body),
                )
                .await
            },
            |reply| {
                let already_paid = reply.status == StatusCode::BAD_REQUEST
                    && reply.body.to_string().contains("already been paid");
                (reply.status == StatusCode::CREATED || already_paid).then_some(())
            },
        )
        .await
    }

    /// The scripted flow for `n` tickets (a multiple of 3): a third cancelled and re-bought and paid,
    /// a third paid, a third left to expire.
    pub async fn run(&self, run: &str, n: usize) -> anyhow::Result<Outcome> {
        let seller = self.signup(&format!("seller-{run}@test.com")).await?;
        let titles: Vec<String> = (0..n).map(|i| format!("Show {i}")).collect();
        let emails: Vec<String> = (0..n).map(|i| format!("buyer{i}-{run}@test.com")).collect();
        let tickets: Vec<String> = join_all(
            titles
                .iter()
                .enumerate()
                .map(|(i, title)| self.create_ticket(&seller, title, 10.0 + i as f64)),
        )
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
        let buyers: Vec<String> = join_all(emails.iter().map(|email| self.signup(email)))
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
        let orders: Vec<String> =
            join_all(buyers.iter().zip(&tickets).map(|(b, t)| self.order(b, t)))
                .await
                .into_iter()
                .collect::<anyhow::Result<_>>()?;
        let third = n / 3;
        let mut outcome = Outcome {
            tickets: tickets.clone(),
            buyers: buyers.clone(),
            ..Outcome::default()
        };

        let cancels = join_all((0..third).map(|i| self.cancel(&buyers[i], &orders[i])));
        let pays = join_all((third..2 * third).map(|i| self.pay(&buyers[i], &orders[i])));
        let (cancelled, paid) = tokio::join!(cancels, pays);
        cancelled.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        paid.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        outcome.cancelled_orders = orders[..third].to_vec();
        outcome.paid_orders = orders[third..2 * third].to_vec();
        outcome.expiring_orders = orders[2 * third..].to_vec();

        // The cancelled tickets are bought again (the buyer's cancellation released them) and paid.
        let rebought: Vec<String> =
            join_all((0..third).map(|i| self.order(&buyers[i], &tickets[i])))
                .await
                .into_iter()
                .collect::<anyhow::Result<_>>()
                .context("re-buying released tickets")?;
        join_all(
            rebought
                .iter()
                .enumerate()
                .map(|(i, order)| self.pay(&buyers[i], order)),
        )
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
        outcome.paid_orders.extend(rebought);
        Ok(outcome)
    }
}
