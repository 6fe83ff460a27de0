//! The whole backend in one process, for tests of flows that cross services: auth, tickets, orders,
//! payments and expiration on ephemeral loopback ports, sharing ONE per-test stream and subject
//! prefix on the real NATS, each service with its own database on the real FerretDB, expiration
//! with its own Redis queue, payments charging a Stripe double. Tests talk to the services only
//! through their HTTP APIs, as the ingress would; the bus is only looked at to know when a
//! service has finished handling an event that has no visible effect.

// Test support: a failed step is a failed test, with the step named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use common::events::Subject;
use common::settings::NatsSettings;
use common::testing::invariants::{MoneyReport, check_money, check_orders_money};
use common::testing::stripe_double::StripeDouble;
use common::testing::{
    POLL_INTERVAL, Running, require_infra, send, session_pair, test_env, unique_suffix,
};
use futures::TryStreamExt as _;
use mongodb::bson::oid::ObjectId;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;
use wiremock::MockServer;

pub use common::testing::{DEADLINE, Reply, User, eventually, id_of};

/// Every user of the suite signs up with this password.
pub const PASSWORD: &str = "password1";
const STRIPE_TEST_KEY: &str = "system-tests-stripe-key";

/// One `POST /v1/charges` that reached the Stripe double.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub amount: i64,
    pub currency: String,
    pub source: String,
}

/// Where a durable consumer of the stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerState {
    /// Deliveries so far (redeliveries included).
    pub delivered: u64,
    /// Delivered and neither acknowledged nor given up yet.
    pub ack_pending: usize,
    /// In the stream and not delivered yet.
    pub pending: u64,
}

impl ConsumerState {
    /// Everything in the stream has been delivered and acknowledged.
    pub fn settled(&self) -> bool {
        self.ack_pending == 0 && self.pending == 0
    }
}

/// The five backend services of one test. Dropping it stops them.
pub struct Stack {
    http: reqwest::Client,
    pub auth: SocketAddr,
    pub tickets: SocketAddr,
    pub orders: SocketAddr,
    pub payments: SocketAddr,
    pub expiration: SocketAddr,
    /// Keeps the server the double answers on alive.
    _stripe: MockServer,
    /// Stands in for Stripe: a ledger of charges and refunds, idempotency keys honoured.
    pub stripe: StripeDouble,
    /// The orders and payments databases, for the money invariant.
    orders_db: mongodb::Database,
    payments_db: mongodb::Database,
    nats: NatsSettings,
    jetstream: async_nats::jetstream::Context,
    /// The orders service's own store, to know when its replica has a ticket (setup only).
    orders_store: orders::store::OrderStore,
    reconcile_horizon: Duration,
    redis_url: String,
    queue: String,
    running: Running,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.running.cancel();
        // Jobs of orders still pending at the end would stay in the shared Redis forever.
        let keys = [
            format!("{}:due", self.queue),
            format!("{}:inflight", self.queue),
        ];
        let deleted = redis::Client::open(self.redis_url.as_str())
            .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(2)))
            .and_then(|mut redis| redis::cmd("DEL").arg(&keys).query::<i64>(&mut redis));
        if let Err(err) = deleted {
            eprintln!("could not delete the test queue {}: {err}", self.queue);
        }
    }
}

impl Stack {
    /// Starts the five services; orders gives every order `expiration_window_seconds` to be paid.
    pub async fn start(expiration_window_seconds: u64) -> Self {
        require_infra(&["MONGO_URL", "NATS_URL", "REDIS_URL"]);
        common::testing::init_test_log("system-tests");
        let stripe = MockServer::start().await;
        let double = StripeDouble::mount(&stripe).await;

        let window = expiration_window_seconds.to_string();
        let queue = format!("test:system:{}", unique_suffix());
        // One call: one stream and subject prefix that every service shares.
        let env = test_env(
            "system",
            &[
                ("EXPIRATION_WINDOW_SECONDS", window.as_str()),
                ("EXPIRATION_QUEUE", queue.as_str()),
                ("STRIPE_KEY", STRIPE_TEST_KEY),
                ("STRIPE_API_BASE", stripe.uri().as_str()),
                // A test signs up many users from one address; auth's own tests cover the limiter.
                ("AUTH_RATE_LIMIT_PER_MINUTE", "0"),
                // Expiry waits this long after the services' start (an outage, as far as orders
                // knows) and the sweeper this long past a window.
                ("EXPIRY_SWEEP_GRACE_SECONDS", "1"),
            ],
        );
        let base_db = env.optional("MONGO_DB").expect("test_env sets MONGO_DB");
        // Each service owns its database, as in production.
        let database = |service: &str| format!("{base_db}_{service}");
        let redis_url = env.require("REDIS_URL").expect("REDIS_URL is set");

        let mut auth_settings = auth::settings::Settings::from_env(&env).expect("auth settings");
        auth_settings.mongo.database = database("auth");
        let mut tickets_settings =
            tickets::settings::Settings::from_env(&env).expect("tickets settings");
        tickets_settings.backend.mongo.database = database("tickets");
        let mut orders_settings =
            orders::settings::Settings::from_env(&env).expect("orders settings");
        orders_settings.backend.mongo.database = database("orders");
        let mut payments_settings =
            payments::settings::Settings::from_env(&env).expect("payments settings");
        payments_settings.backend.mongo.database = database("payments");
        let expiration_settings =
            expiration::settings::Settings::from_env(&env).expect("expiration settings");

        let nats = orders_settings.backend.nats.clone();
        let orders_db = common::store::connect(&orders_settings.backend.mongo, "system-tests")
            .await
            .expect("the test connects to the orders database");
        let payments_db = common::store::connect(&payments_settings.backend.mongo, "system-tests")
            .await
            .expect("the test connects to the payments database");
        let reconcile_horizon = payments_settings.reconcile.horizon;
        let nats_client = async_nats::connect(nats.url.as_str())
            .await
            .expect("the test connects to NATS");

        let (auth_app, tickets_app, orders_app, payments_app, expiration_app) = tokio::try_join!(
            auth::app::build(auth_settings),
            tickets::app::build(tickets_settings),
            orders::app::build(orders_settings),
            payments::app::build(payments_settings),
            expiration::app::build(expiration_settings),
        )
        .expect("every service builds");

        let running = Running::new();
        let stack = Self {
            http: reqwest::Client::new(),
            auth: auth_app.addr(),
            tickets: tickets_app.addr(),
            orders: orders_app.addr(),
            payments: payments_app.addr(),
            expiration: expiration_app.addr(),
            _stripe: stripe,
            stripe: double,
            orders_store: orders::store::OrderStore::new(&orders_db),
            orders_db,
            payments_db,
            reconcile_horizon,
            nats,
            jetstream: async_nats::jetstream::new(nats_client),
            redis_url,
            queue,
            running,
        };
        let running = &stack.running;
        running.also(|shutdown| auth_app.run_until_stopped(shutdown));
        running.also(|shutdown| tickets_app.run_until_stopped(shutdown));
        running.also(|shutdown| orders_app.run_until_stopped(shutdown));
        running.also(|shutdown| payments_app.run_until_stopped(shutdown));
        running.also(|shutdown| expiration_app.run_until_stopped(shutdown));
        stack.wait_until_ready().await;
        stack
    }

    /// Every service answers `/readyz` with 200 (database, bus, Redis connected).
    async fn wait_until_ready(&self) {
        for (name, addr) in [
            ("auth", self.auth),
            ("tickets", self.tickets),
            ("orders", self.orders),
            ("payments", self.payments),
            ("expiration", self.expiration),
        ] {
            eventually(&format!("{name} is ready"), async || {
                let reply = self.send(Method::GET, addr, "/readyz", None, None).await;
                match reply.status {
                    StatusCode::OK => Ok(()),
                    _ => Err(format!("{} {}", reply.status, reply.body)),
                }
            })
            .await;
        }
    }

    async fn send(
        &self,
        method: Method,
        addr: SocketAddr,
        path: &str,
        user: Option<&User>,
        body: Option<Value>,
    ) -> Reply {
        let url = format!("http://{addr}{path}");
        let cookie = user.map(|user| user.cookie.as_str());
        send(&self.http, method, &url, cookie, body.as_ref()).await
    }

    // ---------------------------------------------------------------- auth

    /// Signs up a fresh user through auth and keeps the session cookie it sets.
    pub async fn sign_up(&self) -> User {
        let email = format!("user-{}@test.com", unique_suffix());
        let reply = self
            .send(
                Method::POST,
                self.auth,
                "/api/users/signup",
                None,
                Some(json!({ "email": email, "password": PASSWORD })),
            )
            .await;
        let cookie = reply.set_cookie.as_deref().and_then(session_pair);
        let body = reply.expect(StatusCode::CREATED, "signup");
        User {
            id: id_of(&body),
            email,
            cookie: cookie.expect("signup sets the session cookie"),
        }
    }

    // ---------------------------------------------------------------- tickets

    pub async fn create_ticket(&self, owner: &User, title: &str, price: f64) -> Reply {
        self.send(
            Method::POST,
            self.tickets,
            "/api/tickets",
            Some(owner),
            Some(json!({ "title": title, "price": price })),
        )
        .await
    }

    pub async fn update_ticket(&self, user: &User, id: &str, title: &str, price: f64) -> Reply {
        self.send(
            Method::PUT,
            self.tickets,
            &format!("/api/tickets/{id}"),
            Some(user),
            Some(json!({ "title": title, "price": price })),
        )
        .await
    }

    pub async fn ticket(&self, id: &str) -> Reply {
        self.send(
            Method::GET,
            self.tickets,
            &format!("/api/tickets/{id}"),
            None,
            None,
        )
        .await
    }

    /// `GET /api/tickets`: the tickets nobody has reserved.
    pub async fn available_tickets(&self) -> Reply {
        self.send(Method::GET, self.tickets, "/api/tickets", None, None)
            .await
    }

    /// Whether `GET /api/tickets` lists the ticket.
    pub async fn is_available(&self, id: &str) -> bool {
        let list = self
            .available_tickets()
            .await
            .expect(StatusCode::OK, "listing tickets");
        list.as_array()
            .expect("an array of tickets")
            .iter()
            .any(|ticket| ticket["id"] == id)
    }

    // ---------------------------------------------------------------- orders

    pub async fn order(&self, buyer: &User, ticket_id: &str) -> Reply {
        self.send(
            Method::POST,
            self.orders,
            "/api/orders",
            Some(buyer),
            Some(json!({ "ticketId": ticket_id })),
        )
        .await
    }

    /// Orders the ticket as soon as orders knows it: its replica is filled from `ticket:created`,
    /// so right after the ticket is created the answer can be 404 for a moment. Returns the first
    /// other answer (or the last 404 after the deadline).
    pub async fn order_once_known(&self, buyer: &User, ticket_id: &str) -> Reply {
        self.retry_while_not_found(async || self.order(buyer, ticket_id).await)
            .await
    }

    pub async fn order_of(&self, buyer: &User, order_id: &str) -> Reply {
        self.send(
            Method::GET,
            self.orders,
            &format!("/api/orders/{order_id}"),
            Some(buyer),
            None,
        )
        .await
    }

    pub async fn orders_of(&self, buyer: &User) -> Reply {
        self.send(Method::GET, self.orders, "/api/orders", Some(buyer), None)
            .await
    }

    pub async fn cancel_order(&self, buyer: &User, order_id: &str) -> Reply {
        self.send(
            Method::DELETE,
            self.orders,
            &format!("/api/orders/{order_id}"),
            Some(buyer),
            None,
        )
        .await
    }

    /// Waits until the orders service's replica holds the ticket (from `ticket:created`), so that a
    /// burst of orders is decided by the reservation and not by replication lag.
    pub async fn wait_until_orders_knows_ticket(&self, ticket_id: &str) {
        let id = ObjectId::parse_str(ticket_id).expect("an ObjectId-like ticket id");
        eventually(
            "the orders replica receives the ticket",
            async || match self.orders_store.find_ticket(id).await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err("not in the replica".to_owned()),
                Err(err) => Err(format!("reading the replica: {err}")),
            },
        )
        .await;
    }

    // ---------------------------------------------------------------- payments

    pub async fn pay(&self, buyer: &User, order_id: &str, token: &str) -> Reply {
        self.send(
            Method::POST,
            self.payments,
            "/api/payments",
            Some(buyer),
            Some(json!({ "orderId": order_id, "token": token })),
        )
        .await
    }

    /// Pays as soon as payments knows the order (its replica is filled from `order:created`).
    pub async fn pay_once_known(&self, buyer: &User, order_id: &str, token: &str) -> Reply {
        self.retry_while_not_found(async || self.pay(buyer, order_id, token).await)
            .await
    }

    /// The charges that reached the Stripe double, in order.
    pub async fn charges(&self) -> Vec<Charge> {
        self.stripe
            .charges()
            .into_iter()
            .map(|charge| Charge {
                amount: charge.amount,
                currency: charge.currency,
                source: charge.source,
            })
            .collect()
    }

    /// The money invariant for `order_ids` from the databases alone (what the benchmark checks
    /// against stripe-mock, which keeps no ledger).
    pub async fn money_of_orders(&self, order_ids: &[String]) -> MoneyReport {
        check_orders_money(
            order_ids,
            &self.orders_db,
            &self.payments_db,
            self.reconcile_horizon,
        )
        .await
        .expect("reading the orders and payments databases")
    }

    /// The money invariant over the Stripe double's ledger and the orders and payments databases.
    pub async fn money(&self) -> MoneyReport {
        check_money(
            &self.stripe.charges(),
            &self.orders_db,
            &self.payments_db,
            self.reconcile_horizon,
        )
        .await
        .expect("reading the orders and payments databases")
    }

    // ---------------------------------------------------------------- the bus

    /// Where the durable consumer of `queue_group` (a service) for `subject` stands.
    pub async fn consumer(
        &self,
        queue_group: &str,
        subject: Subject,
    ) -> Result<ConsumerState, String> {
        let stream = self
            .jetstream
            .get_stream(&self.nats.stream)
            .await
            .map_err(|err| format!("looking up the stream: {err}"))?;
        let filter = format!("{}{}", self.nats.subject_prefix, subject.as_str());
        let infos: Vec<_> = stream
            .consumers()
            .try_collect()
            .await
            .map_err(|err| format!("listing consumers: {err}"))?;
        let info = infos
            .into_iter()
            .find(|info| info.config.filter_subject == filter && info.name.starts_with(queue_group))
            .ok_or_else(|| format!("no consumer of {queue_group} for {filter}"))?;
        Ok(ConsumerState {
            delivered: info.delivered.consumer_sequence,
            ack_pending: info.num_ack_pending,
            pending: info.num_pending,
        })
    }

    // ---------------------------------------------------------------- helpers

    async fn retry_while_not_found(&self, mut attempt: impl AsyncFnMut() -> Reply) -> Reply {
        let started = Instant::now();
        loop {
            let reply = attempt().await;
            if reply.status != StatusCode::NOT_FOUND || started.elapsed() >= DEADLINE {
                return reply;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}
