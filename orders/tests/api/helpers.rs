use std::net::SocketAddr;

use common::bus::{Delivery, EventBus, Outcome};
use common::events::{
    Event, ExpirationComplete, Id, OrderCancelled, PaymentCreated, TicketCreated,
};
use common::money::Price;
use common::settings::Env;
use common::testing::{
    Running, as_id, id_of, new_user_id, observe, require_infra, send, start, test_env,
};
use mongodb::Database;
use mongodb::bson::{Bson, Document, doc};
use orders::settings::Settings;
use orders::store::{Order, OrderStore, Ticket};
use reqwest::StatusCode;
use serde_json::{Value, json};

pub use common::testing::{Observer, Reply, User, errors, eventually, not_authorized, not_found};

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    /// The settings the app runs with; pass to [`spawn_app_in`] for a second instance on the same
    /// database and stream.
    pub env: Env,
    /// The app's database, for assertions on stored documents.
    pub db: Database,
    /// The same store the app uses, to call listener handlers directly.
    pub store: OrderStore,
    /// A connection to the app's stream, to publish events and observe what the app publishes.
    pub bus: EventBus,
    running: Running,
}

impl TestApp {
    /// Stops the app's listeners and server (its durable consumers stay, with whatever they have
    /// not handled); the test keeps its store and bus.
    pub fn stop(&self) {
        self.running.cancel();
    }
}

/// Starts the orders service on a random port with a fresh database and stream.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Expiry does not wait after the app's start (a production start counts as an outage, see
/// `orders::sweeper::OutageClock`), unless the test says otherwise.
pub async fn spawn_app_with(extra: &[(&str, &str)]) -> TestApp {
    let mut settings = vec![("EXPIRY_SWEEP_GRACE_SECONDS", "0")];
    settings.extend_from_slice(extra);
    spawn_app_in(test_env("orders", &settings)).await
}

/// Starts an instance with exactly these settings (several instances may share them).
pub async fn spawn_app_in(env: Env) -> TestApp {
    require_infra(&["MONGO_URL", "NATS_URL"]);
    common::testing::init_test_log("orders-test");
    common::store::query_log::enable();
    let settings = Settings::from_env(&env).expect("test settings");
    let (db, bus) = common::backend::connect(&settings.backend, "orders-test")
        .await
        .expect("test database and bus");
    let app = start("orders", orders::app::build(settings)).await;
    TestApp {
        addr: app.addr,
        client: reqwest::Client::new(),
        env,
        store: OrderStore::new(&db),
        db,
        bus,
        running: app.running,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        user: Option<&User>,
        body: Option<&Value>,
    ) -> Reply {
        let cookie = user.map(|user| user.cookie.as_str());
        send(&self.client, method, &self.url(path), cookie, body).await
    }

    pub async fn post_order(&self, user: Option<&User>, body: &Value) -> Reply {
        self.send(reqwest::Method::POST, "/api/orders", user, Some(body))
            .await
    }

    /// `POST /api/orders` for `ticket_id`.
    pub async fn order(&self, user: &User, ticket_id: &str) -> Reply {
        self.post_order(Some(user), &json!({ "ticketId": ticket_id }))
            .await
    }

    /// Orders `ticket_id` and insists on success.
    pub async fn order_ok(&self, user: &User, ticket_id: &str) -> Value {
        let reply = self.order(user, ticket_id).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body
    }

    pub async fn list_orders(&self, user: Option<&User>) -> Reply {
        self.send(reqwest::Method::GET, "/api/orders", user, None)
            .await
    }

    pub async fn get_order(&self, user: Option<&User>, id: &str) -> Reply {
        let path = format!("/api/orders/{id}");
        self.send(reqwest::Method::GET, &path, user, None).await
    }

    pub async fn delete_order(&self, user: Option<&User>, id: &str) -> Reply {
        let path = format!("/api/orders/{id}");
        self.send(reqwest::Method::DELETE, &path, user, None).await
    }

    /// Cancels `id` as its owner and insists on the 204.
    pub async fn cancel_ok(&self, owner: &User, id: &str) {
        let reply = self.delete_order(Some(owner), id).await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    }

    /// A fresh order of a fresh ticket: (order id, ticket id).
    pub async fn pending_order(&self, user: &User) -> (String, String) {
        let ticket_id = self.ticket("Gig", 1000).await.id.to_hex();
        (id_of(&self.order_ok(user, &ticket_id).await), ticket_id)
    }

    /// A new user and their pending order of a fresh ticket: (user, order id, ticket id).
    pub async fn new_pending_order(&self) -> (User, String, String) {
        let user = User::new();
        let (id, ticket_id) = self.pending_order(&user).await;
        (user, id, ticket_id)
    }

    /// [`Self::new_pending_order`], with `order:cancelled` observed from before it.
    pub async fn observed_pending_order(&self) -> (Observer<OrderCancelled>, User, String, String) {
        let cancelled = self.observe::<OrderCancelled>().await;
        let (user, id, ticket_id) = self.new_pending_order().await;
        (cancelled, user, id, ticket_id)
    }

    /// The versions of `order_id` announced in `order:cancelled` before a marker cancellation of
    /// another order (published after everything the test did).
    pub async fn cancellations_of(
        &self,
        cancelled: &mut Observer<OrderCancelled>,
        order_id: &str,
    ) -> Vec<i64> {
        let user = User::new();
        let (marker, _) = self.pending_order(&user).await;
        self.cancel_ok(&user, &marker).await;
        cancelled
            .until(|e| e.id == marker)
            .await
            .iter()
            .filter(|e| e.id == order_id)
            .map(|e| e.version)
            .collect()
    }

    /// Hands `payment:created` of `order_id` straight to its listener (a first delivery).
    pub async fn pay(&self, order_id: &str) -> Outcome {
        self.pay_delivered(order_id, 1).await
    }

    /// [`Self::pay`] as the `attempt`th delivery of the event.
    pub async fn pay_delivered(&self, order_id: &str, attempt: i64) -> Outcome {
        let delivery = Delivery {
            attempt,
            sequence: 1,
        };
        orders::listeners::payment_created::handle(
            &self.store,
            &self.bus,
            payment(order_id),
            delivery,
        )
        .await
        .expect("payment handled")
    }

    /// Hands `expiration:complete` of `order_id` straight to its listener, as if published after
    /// everything so far.
    pub async fn expire(&self, order_id: &str) -> Outcome {
        self.expire_published_at(order_id, u64::MAX).await
    }

    /// [`Self::expire`] as if published at stream `sequence`.
    pub async fn expire_published_at(&self, order_id: &str, sequence: u64) -> Outcome {
        self.expire_delivered(order_id, sequence, 1).await
    }

    /// [`Self::expire_published_at`] as the `attempt`th delivery of the event.
    pub async fn expire_delivered(&self, order_id: &str, sequence: u64, attempt: i64) -> Outcome {
        let expiry = ExpirationComplete {
            order_id: as_id(order_id),
        };
        let delivery = Delivery { attempt, sequence };
        orders::listeners::expiration_complete::handle(&self.store, &self.bus, expiry, delivery)
            .await
            .expect("expiry handled")
    }

    /// A ticket in the replica, as `ticket:created` would have put it there.
    pub async fn ticket(&self, title: &str, cents: i64) -> Ticket {
        let event = TicketCreated {
            id: Id::new(),
            version: 0,
            title: title.to_owned(),
            price: Price::from_cents(cents),
            user_id: new_user_id(),
        };
        let outcome = orders::listeners::ticket_created::handle(&self.store, event.clone())
            .await
            .expect("ticket:created handled");
        assert_eq!(outcome, Outcome::Ack);
        self.replica(&event.id.to_string())
            .await
            .expect("replicated ticket")
    }

    /// The replica of a ticket.
    pub async fn replica(&self, id: &str) -> Option<Ticket> {
        let id = common::store::parse_object_id(id).expect("ticket id");
        self.store.find_ticket(id).await.expect("replica lookup")
    }

    /// An order as stored (through the store, so pending changes are applied).
    pub async fn stored_order(&self, id: &str) -> Order {
        let id = common::store::parse_object_id(id).expect("order id");
        self.store
            .orders()
            .get(Bson::ObjectId(id))
            .await
            .expect("order lookup")
            .expect("order exists")
    }

    /// How many order documents hold `reservation`.
    pub async fn holders_of(&self, reservation: &str) -> u64 {
        self.db
            .collection::<Document>("orders")
            .count_documents(doc! { "reservation": reservation })
            .await
            .expect("count")
    }

    /// The filters sent to the app's database since the last [`Self::forget_queries`].
    pub fn queries(&self) -> Vec<common::store::query_log::Query> {
        common::store::query_log::queries_in(self.db.name())
    }

    pub fn forget_queries(&self) {
        common::store::query_log::clear(self.db.name());
    }

    pub async fn count(&self, collection: &str, filter: Document) -> u64 {
        self.db
            .collection::<Document>(collection)
            .count_documents(filter)
            .await
            .expect("count")
    }

    /// The change document that moved `order_id` to `version`.
    pub async fn change(&self, order_id: &str, version: i64) -> Option<Document> {
        self.db
            .collection::<Document>("orders_changes")
            .find_one(doc! { "_id": format!("{order_id}:{version}") })
            .await
            .expect("change lookup")
    }

    /// Events of type `E` the app publishes from now on (and any already in the stream), in stream
    /// order. Each call uses its own durable consumer.
    pub async fn observe<E: Event>(&self) -> Observer<E> {
        observe(&self.bus, self.running.token()).await
    }

    /// Publishes an event on the app's stream, as another service would.
    pub async fn publish<E: Event>(&self, event: &E) {
        self.bus.publish(event).await.expect("publish");
    }
}

/// `payment:created` of `order_id`, as the payments service publishes it.
pub fn payment(order_id: &str) -> PaymentCreated {
    PaymentCreated {
        id: new_user_id(),
        order_id: as_id(order_id),
        stripe_id: "ch_test".into(),
    }
}

/// Checks status and body together, so a failure shows both.
#[track_caller]
pub fn assert_reply(reply: Reply, status: StatusCode, body: Value) {
    assert_eq!((reply.status, reply.body), (status, body));
}

/// Checks that a listener asked for the event again later (what it waits for is not there yet).
#[track_caller]
pub fn assert_retried(outcome: Outcome) {
    assert!(matches!(outcome, Outcome::Retry(_)), "{outcome:?}");
}
