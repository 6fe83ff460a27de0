use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use common::bus::{EventBus, ListenerOptions, Outcome, listen};
use common::events::{
    Id, OrderCancelled, OrderCreated, OrderCreatedTicket, OrderStatus, PaymentCreated, TicketRef,
};
use common::money::Price;
use common::testing::stripe_double::StripeDouble;
use common::testing::{new_user_id, require_infra, session_cookie, test_env};
use mongodb::Database;
use mongodb::bson::doc;
use mongodb::bson::oid::ObjectId;
use payments::listeners::{order_cancelled, order_created};
use payments::saga::{PaymentSaga, ReconcileTiming};
use payments::settings::Settings;
use payments::store::{Order, OrderStore, Payment, PaymentStatus, PaymentStore};
use payments::stripe::StripeGateway;
use reqwest::StatusCode;
use reqwest::header::COOKIE;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The Stripe secret key the test app is configured with.
pub const STRIPE_TEST_KEY: &str = "sk_test_payments_suite";

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    /// Stands in for `https://api.stripe.com`, behind the real async-stripe client.
    pub stripe: MockServer,
    pub settings: Settings,
    pub db: Database,
    pub orders: OrderStore,
    pub payments: PaymentStore,
    /// The saga as the app's listeners use it, for driving `order:cancelled` by hand.
    pub saga: PaymentSaga,
    shutdown: CancellationToken,
    stopped: tokio::sync::Mutex<Option<tokio::task::JoinHandle<std::io::Result<()>>>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts the payments service on a random port with a fresh database and stream, talking to a
/// fresh Stripe double.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Same, with the settings adjusted first (the Stripe double's URI is already in them).
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    require_infra(&["MONGO_URL", "NATS_URL"]);
    if std::env::var("TEST_LOG").is_ok() {
        common::telemetry::init("payments-test");
    }
    let stripe = MockServer::start().await;
    let env = test_env(
        "payments",
        &[
            ("STRIPE_KEY", STRIPE_TEST_KEY),
            ("STRIPE_API_BASE", &stripe.uri()),
        ],
    );
    let mut settings = Settings::from_env(&env).expect("test settings");
    adjust(&mut settings);
    let app = payments::app::build(settings.clone())
        .await
        .expect("the payments app builds");
    let addr = app.addr();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let db = common::store::connect(&settings.mongo, "payments-test")
        .await
        .expect("test database");
    let orders = OrderStore::new(&db);
    let payments = PaymentStore::new(&db);
    let bus = EventBus::connect(&settings.nats, "payments-test-saga")
        .await
        .expect("test bus");
    let gateway = StripeGateway::new(&settings.stripe).expect("Stripe client");
    TestApp {
        addr,
        client: reqwest::Client::new(),
        stripe,
        saga: PaymentSaga::new(payments.clone(), orders.clone(), gateway, bus),
        settings,
        orders,
        payments,
        db,
        shutdown,
        stopped: tokio::sync::Mutex::new(Some(running)),
    }
}

/// The app with a Stripe timeout of `timeout` and a reconciler that looks at open payments soon
/// after it (every 100 ms, once they are `timeout + 300 ms` old).
pub async fn spawn_app_with_stripe_timeout(timeout: Duration) -> TestApp {
    spawn_app_with(|settings| {
        settings.stripe.timeout = timeout;
        settings.reconcile = ReconcileTiming {
            horizon: timeout + Duration::from_millis(300),
            retry_after: Duration::from_millis(200),
            interval: Duration::from_millis(100),
            sweep: Duration::from_secs(1),
            max_backoff: Duration::from_millis(400),
        };
    })
    .await
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    async fn read(response: reqwest::Response) -> Self {
        let status = response.status();
        let text = response.text().await.expect("response body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("JSON body")
        };
        Self { status, body }
    }
}

/// The error envelope with one entry per `(message, field)`.
pub fn errors(messages: &[(&str, Option<&str>)]) -> Value {
    let entries: Vec<Value> = messages
        .iter()
        .map(|(message, field)| match field {
            Some(field) => json!({ "message": message, "field": field }),
            None => json!({ "message": message }),
        })
        .collect();
    json!({ "errors": entries })
}

/// A signed-in user.
pub struct User {
    pub id: String,
    pub cookie: String,
}

impl User {
    pub fn new() -> Self {
        let id = new_user_id();
        let cookie = session_cookie(&id, &format!("{id}@test.com"));
        Self { id, cookie }
    }
}

impl TestApp {
    /// Mounts the ledger-keeping Stripe double (instead of per-test mocks).
    pub async fn stripe_double(&self) -> StripeDouble {
        StripeDouble::mount(&self.stripe).await
    }

    /// Stops the app as SIGTERM would, and waits until it has stopped.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        if let Some(running) = self.stopped.lock().await.take() {
            running
                .await
                .expect("the app task")
                .expect("the app stops cleanly");
        }
    }

    /// The order's payment as stored, once `done` says it is settled (10 s at most).
    pub async fn payment_when(
        &self,
        order_id: impl Display,
        done: impl Fn(PaymentStatus) -> bool,
    ) -> Payment {
        let id = ObjectId::parse_str(order_id.to_string()).expect("order id");
        eventually("the payment to settle", || async {
            self.payments
                .get(id)
                .await
                .expect("reading the payment")
                .filter(|p| done(p.status))
        })
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn post_payment(&self, cookie: Option<&str>, body: &Value) -> Reply {
        let mut request = self.client.post(self.url("/api/payments")).json(body);
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        Reply::read(request.send().await.expect("request")).await
    }

    /// A second instance of the service on the same database, stream and Stripe double (a replica
    /// behind the same Kubernetes Service). It stops when the returned token is dropped.
    pub async fn spawn_replica(&self) -> (SocketAddr, tokio_util::sync::DropGuard) {
        let app = payments::app::build(self.settings.clone())
            .await
            .expect("the replica builds");
        let addr = app.addr();
        let shutdown = CancellationToken::new();
        tokio::spawn(app.run_until_stopped(shutdown.clone()));
        (addr, shutdown.drop_guard())
    }

    /// Pays through the instance at `addr` (this one or a replica).
    pub async fn pay_at(
        &self,
        addr: SocketAddr,
        user: &User,
        order_id: impl Display,
        token: &str,
    ) -> Reply {
        let response = self
            .client
            .post(format!("http://{addr}/api/payments"))
            .header(COOKIE, &user.cookie)
            .json(&json!({ "orderId": order_id.to_string(), "token": token }))
            .send()
            .await
            .expect("request");
        Reply::read(response).await
    }

    pub async fn pay(&self, user: &User, order_id: impl Display, token: &str) -> Reply {
        self.post_payment(
            Some(&user.cookie),
            &json!({ "orderId": order_id.to_string(), "token": token }),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Reply {
        Reply::read(
            self.client
                .get(self.url(path))
                .send()
                .await
                .expect("request"),
        )
        .await
    }

    /// Puts an order of `user` into the replica the way `order:created` does.
    pub async fn order_for(&self, user: &User, price: Price) -> OrderCreated {
        let event = order_created_event(&user.id, price);
        let outcome = order_created::handle(&self.orders, event.clone())
            .await
            .expect("order:created applies");
        assert_eq!(outcome, Outcome::Ack);
        event
    }

    /// Cancels a replica order the way `order:cancelled` does.
    pub async fn cancel(&self, order: &OrderCreated) {
        let outcome =
            order_cancelled::handle(&self.orders, &self.saga, order_cancelled_event(order, 1))
                .await
                .expect("order:cancelled applies");
        assert_eq!(outcome, Outcome::Ack);
    }

    pub async fn replica(&self, order_id: impl Display) -> Option<Order> {
        self.orders
            .get(ObjectId::parse_str(order_id.to_string()).expect("order id"))
            .await
            .expect("reading the replica")
    }

    /// Every payment document of the order as stored (no read repair).
    pub async fn payment_records(&self, order_id: impl Display) -> Vec<Payment> {
        let id = ObjectId::parse_str(order_id.to_string()).expect("order id");
        let mut cursor = self
            .payments
            .records()
            .find(doc! { "_id": id })
            .await
            .expect("query payments");
        let mut found = Vec::new();
        while cursor.advance().await.expect("cursor") {
            found.push(cursor.deserialize_current().expect("a payment"));
        }
        found
    }

    /// Asserts that the order is not paid: no payment, or only a failed attempt with no charge, and
    /// that the card token is not kept.
    pub async fn assert_not_paid(&self, order_id: impl Display) {
        for payment in self.payment_records(order_id).await {
            assert_eq!(payment.status, PaymentStatus::Failed, "{payment:?}");
            assert_eq!(payment.stripe_id, None, "{payment:?}");
            assert_eq!(
                payment.source, None,
                "the token is dropped once the attempt fails"
            );
        }
    }

    /// A bus on the app's stream, as another service would connect.
    pub async fn bus(&self) -> EventBus {
        EventBus::connect(&self.settings.nats, "payments-test")
            .await
            .expect("test bus")
    }

    /// Forwards every `payment:created` the app publishes into a channel.
    pub async fn observe_payments(&self) -> mpsc::UnboundedReceiver<PaymentCreated> {
        let (sender, receiver) = mpsc::unbounded_channel();
        listen::<PaymentCreated, _, _>(
            &self.bus().await,
            ListenerOptions::new("test-observer"),
            self.shutdown.clone(),
            move |event, _| {
                let sender = sender.clone();
                async move {
                    let _ = sender.send(event);
                    Ok(Outcome::Ack)
                }
            },
        )
        .await
        .expect("observer listens");
        receiver
    }

    /// Every request the Stripe double has received.
    pub async fn stripe_requests(&self) -> Vec<wiremock::Request> {
        self.stripe
            .received_requests()
            .await
            .expect("request recording is on")
    }
}

pub fn order_created_event(user_id: &str, price: Price) -> OrderCreated {
    OrderCreated {
        id: Id::new(),
        version: 0,
        status: OrderStatus::Created,
        user_id: user_id.to_owned(),
        expires_at: Utc::now() + TimeDelta::seconds(60),
        ticket: OrderCreatedTicket {
            id: Id::new(),
            price,
        },
    }
}

pub fn order_cancelled_event(order: &OrderCreated, version: i64) -> OrderCancelled {
    OrderCancelled {
        id: order.id,
        version,
        ticket: TicketRef {
            id: order.ticket.id,
        },
    }
}

pub use common::testing::stripe_charge_json as charge_json;

/// Stripe charges every card successfully, answering after `delay`.
pub async fn stripe_charges_succeed(app: &TestApp, charge_id: &str, amount: i64, delay: Duration) {
    Mock::given(method("POST"))
        .and(path("/v1/charges"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(charge_json(charge_id, amount, "tok"))
                .set_delay(delay),
        )
        .mount(&app.stripe)
        .await;
}

/// Stripe answers every charge with `status` and `body`.
pub async fn stripe_answers(app: &TestApp, status: u16, body: Value) {
    Mock::given(method("POST"))
        .and(path("/v1/charges"))
        .respond_with(ResponseTemplate::new(status).set_body_json(body))
        .mount(&app.stripe)
        .await;
}

pub use common::testing::stripe_double::form;

/// Polls `check` until it returns `Some`, for up to 10 s.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
