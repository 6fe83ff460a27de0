use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

use common::bus::{EventBus, Outcome};
use common::events::{OrderCancelled, OrderCreated, PaymentCreated};
use common::money::Price;
use common::testing::invariants::check_money;
use common::testing::stripe_double::StripeDouble;
use common::testing::{
    Observer, Running, Started, new_order_id, observe, order_cancelled, order_created,
    require_infra, send, start, test_env,
};
use mongodb::Database;
use mongodb::bson::doc;
use mongodb::bson::oid::ObjectId;
use payments::listeners::{order_cancelled, order_created};
use payments::routes::payments::{ALREADY_PAID, IN_PROGRESS};
use payments::saga::{PaymentSaga, ReconcileTiming};
use payments::settings::Settings;
use payments::store::{Order, OrderStore, Payment, PaymentStatus, PaymentStore};
use payments::stripe::StripeGateway;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub use common::testing::{Reply, User, errors, eventually};

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
    running: Running,
}

/// Starts the payments service on a random port with a fresh database and stream, talking to a
/// fresh Stripe double.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Same, with the settings adjusted first (the Stripe double's URI is already in them).
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    require_infra(&["MONGO_URL", "NATS_URL"]);
    common::testing::init_test_log("payments-test");
    common::store::query_log::enable();
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
    let Started { addr, running, .. } =
        start("payments", payments::app::build(settings.clone())).await;
    let (db, bus) = common::backend::connect(&settings.backend, "payments-test")
        .await
        .expect("test database and bus");
    let orders = OrderStore::new(&db);
    let payments = PaymentStore::new(&db);
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
        running,
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

impl TestApp {
    /// Mounts the ledger-keeping Stripe double (instead of per-test mocks).
    pub async fn stripe_double(&self) -> StripeDouble {
        StripeDouble::mount(&self.stripe).await
    }

    /// Stops the app as SIGTERM would, and waits until it has stopped.
    pub async fn stop(&self) {
        self.running.stop().await;
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
        let url = self.url("/api/payments");
        send(&self.client, Method::POST, &url, cookie, Some(body)).await
    }

    /// A second instance of the service on the same database, stream and Stripe double (a replica
    /// behind the same Kubernetes Service). It stops when the returned guard is dropped.
    pub async fn spawn_replica(&self) -> (SocketAddr, Running) {
        let replica = start(
            "payments replica",
            payments::app::build(self.settings.clone()),
        )
        .await;
        (replica.addr, replica.running)
    }

    /// Pays through the instance at `addr` (this one or a replica).
    pub async fn pay_at(
        &self,
        addr: SocketAddr,
        user: &User,
        order_id: impl Display,
        token: &str,
    ) -> Reply {
        send(
            &self.client,
            Method::POST,
            &format!("http://{addr}/api/payments"),
            Some(&user.cookie),
            Some(&json!({ "orderId": order_id.to_string(), "token": token })),
        )
        .await
    }

    /// `n` payments of the order at once with tokens `tok_0`, `tok_1`, ...: the i-th through
    /// `instances[i % instances.len()]` (this app or its replicas).
    pub async fn pay_at_once(
        &self,
        instances: &[SocketAddr],
        user: &User,
        order_id: impl Display,
        n: usize,
    ) -> Vec<Reply> {
        let order_id = order_id.to_string();
        futures::future::join_all((0..n).map(|i| {
            let (addr, order_id) = (instances[i % instances.len()], &order_id);
            async move { self.pay_at(addr, user, order_id, &format!("tok_{i}")).await }
        }))
        .await
    }

    /// `POST /api/payments/intents`: pays with a PaymentMethod, as the page's checkout does.
    pub async fn pay_intent(
        &self,
        user: &User,
        order_id: impl Display,
        payment_method: &str,
    ) -> Reply {
        self.pay_intent_at(self.addr, user, order_id, payment_method)
            .await
    }

    /// [`Self::pay_intent`] through the instance at `addr`.
    pub async fn pay_intent_at(
        &self,
        addr: SocketAddr,
        user: &User,
        order_id: impl Display,
        payment_method: &str,
    ) -> Reply {
        send(
            &self.client,
            Method::POST,
            &format!("http://{addr}/api/payments/intents"),
            Some(&user.cookie),
            Some(&json!({ "orderId": order_id.to_string(), "paymentMethod": payment_method })),
        )
        .await
    }

    /// `POST /api/payments/intents/{orderId}/check`, as the page does after 3-D Secure.
    pub async fn check_intent(&self, user: &User, order_id: impl Display) -> Reply {
        let url = self.url(&format!("/api/payments/intents/{order_id}/check"));
        send(&self.client, Method::POST, &url, Some(&user.cookie), None).await
    }

    pub async fn pay(&self, user: &User, order_id: impl Display, token: &str) -> Reply {
        self.post_payment(
            Some(&user.cookie),
            &json!({ "orderId": order_id.to_string(), "token": token }),
        )
        .await
    }

    /// Pays with Stripe's test card and checks for 201: the body.
    pub async fn pay_ok(&self, user: &User, order_id: impl Display) -> Value {
        self.pay(user, order_id, "tok_visa")
            .await
            .expect(StatusCode::CREATED, "paying")
    }

    pub async fn get(&self, path: &str) -> Reply {
        send(&self.client, Method::GET, &self.url(path), None, None).await
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

    /// A new buyer and their order at `cents`, put into the replica as `order_for` does.
    pub async fn order_of_new_buyer(&self, cents: i64) -> (User, OrderCreated) {
        let user = User::new();
        let order = self.order_for(&user, Price::from_cents(cents)).await;
        (user, order)
    }

    /// [`Self::order_of_new_buyer`], with Stripe charging every card (as `charge_id`, answering
    /// after `delay`): an order that pays.
    pub async fn payable_order(
        &self,
        cents: i64,
        charge_id: &str,
        delay: Duration,
    ) -> (User, OrderCreated) {
        let bought = self.order_of_new_buyer(cents).await;
        stripe_charges_succeed(self, charge_id, cents, delay).await;
        bought
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

    /// How many orders the replica holds.
    pub async fn replica_count(&self) -> u64 {
        self.orders
            .collection()
            .count_documents(doc! {})
            .await
            .expect("counting the replica")
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

    /// The order's only payment document (panics, showing them, unless exactly one).
    pub async fn the_one_payment(&self, order_id: impl Display) -> Payment {
        let mut records = self.payment_records(order_id).await;
        assert_eq!(records.len(), 1, "{records:?}");
        records.remove(0)
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

    /// Asserts that the payment was refused with `status` and `body`, nothing reached Stripe and
    /// the order is not paid.
    pub async fn assert_refused_uncharged(
        &self,
        reply: &Reply,
        status: reqwest::StatusCode,
        body: Value,
        order_id: impl Display,
    ) {
        assert_eq!((reply.status, &reply.body), (status, &body));
        assert!(self.stripe_requests().await.is_empty(), "nothing charged");
        self.assert_not_paid(order_id).await;
    }

    /// A bus on the app's stream, as another service would connect.
    pub async fn bus(&self) -> EventBus {
        EventBus::connect(&self.settings.backend.nats, "payments-test")
            .await
            .expect("test bus")
    }

    /// Every `payment:created` the app publishes, as a consumer of its own sees them.
    pub async fn observe_payments(&self) -> Observer<PaymentCreated> {
        observe(&self.bus().await, self.running.token()).await
    }

    /// Every request the Stripe double has received.
    pub async fn stripe_requests(&self) -> Vec<wiremock::Request> {
        self.stripe
            .received_requests()
            .await
            .expect("request recording is on")
    }
}

/// `order:created` of a new order of `user_id` at `price`.
pub fn order_created_event(user_id: &str, price: Price) -> OrderCreated {
    order_created(new_order_id(), new_order_id(), user_id, price)
}

pub fn order_cancelled_event(order: &OrderCreated, version: i64) -> OrderCancelled {
    order_cancelled(order.id, order.ticket.id, version)
}

pub use common::testing::stripe_charge_json as charge_json;

/// Stripe answering charge requests with `response` (mount it, limited or not).
pub fn stripe_charge_answer(response: ResponseTemplate) -> Mock {
    Mock::given(method("POST"))
        .and(path("/v1/charges"))
        .respond_with(response)
}

/// Stripe charges every card successfully, answering after `delay`.
pub async fn stripe_charges_succeed(app: &TestApp, charge_id: &str, amount: i64, delay: Duration) {
    let ok = ResponseTemplate::new(200).set_body_json(charge_json(charge_id, amount, "tok"));
    stripe_charge_answer(ok.set_delay(delay))
        .mount(&app.stripe)
        .await;
}

/// Stripe answers every charge with `status` and `body`.
pub async fn stripe_answers(app: &TestApp, status: u16, body: Value) {
    stripe_charge_answer(ResponseTemplate::new(status).set_body_json(body))
        .mount(&app.stripe)
        .await;
}

pub use common::testing::stripe_double::form;

/// The only `201 Created` among concurrent replies (panics, showing them all, unless exactly one).
pub fn the_one_created(replies: &[Reply]) -> &Reply {
    let created: Vec<_> = replies
        .iter()
        .filter(|r| r.status == reqwest::StatusCode::CREATED)
        .collect();
    assert_eq!(created.len(), 1, "{replies:?}");
    created[0]
}

/// Whether an attempt in `status` has its final answer (the reconciler no longer looks after it).
pub fn settled(status: PaymentStatus) -> bool {
    !PaymentStatus::UNSETTLED.contains(&status)
}

/// The money invariant over the double's ledger (paid intents count as its charges). The payments
/// service's replica stands in for the orders service's orders (`complete` never reaches it, so
/// only refunds are checked here): a charge kept for a `created` replica is what a paid order looks
/// like from here.
pub async fn money_holds(app: &TestApp, double: &StripeDouble) {
    let report = check_money(
        &double.charges(),
        &app.db,
        &app.db,
        app.settings.reconcile.horizon,
    )
    .await
    .expect("reading the databases");
    let real: Vec<&String> = report
        .violations
        .iter()
        .filter(|v| !v.contains("which is created"))
        .collect();
    assert!(real.is_empty(), "{real:#?}");
}

/// Every reply of concurrent payments but the one 201: a 409 (another attempt in progress) or a
/// 400 (already paid), in the error shape.
pub fn the_others_were_refused(replies: &[Reply]) {
    for refused in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
        let expected = match refused.status {
            StatusCode::CONFLICT => errors(&[(IN_PROGRESS, None)]),
            StatusCode::BAD_REQUEST => errors(&[(ALREADY_PAID, None)]),
            other => panic!("unexpected {other}: {:?}", refused.body),
        };
        assert_eq!(refused.body, expected);
    }
}
