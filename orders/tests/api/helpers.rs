use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use common::bus::{EventBus, ListenerOptions, Outcome, listen};
use common::events::{Event, Id, TicketCreated};
use common::money::Price;
use common::settings::Env;
use common::testing::{new_user_id, require_infra, session_cookie, test_env};
use mongodb::Database;
use mongodb::bson::{Bson, Document, doc};
use orders::settings::Settings;
use orders::store::{Order, OrderStore, Ticket};
use reqwest::header::COOKIE;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long eventual states are waited for.
pub const DEADLINE: Duration = Duration::from_secs(10);

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
    shutdown: CancellationToken,
}

impl TestApp {
    /// Stops the app's listeners and server (its durable consumers stay, with whatever they have
    /// not handled); the test keeps its store and bus.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
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
    if std::env::var("TEST_LOG").is_ok() {
        common::telemetry::init("orders-test");
    }
    let settings = Settings::from_env(&env).expect("test settings");
    let db = common::store::connect(&settings.mongo, "orders-test")
        .await
        .expect("test database");
    let bus = EventBus::connect(&settings.nats, "orders-test")
        .await
        .expect("test bus");
    let app = orders::app::build(settings)
        .await
        .expect("the orders app builds");
    let addr = app.addr();
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        addr,
        client: reqwest::Client::new(),
        env,
        store: OrderStore::new(&db),
        db,
        bus,
        shutdown,
    }
}

/// A signed-in user: id and `Cookie` header.
#[derive(Debug, Clone)]
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

/// A response read whole: status and JSON body (`Null` when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub text: String,
}

impl Reply {
    async fn read(response: Response) -> Self {
        let status = response.status();
        let text = response.text().await.expect("response body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("JSON body")
        };
        Self { status, body, text }
    }

    pub fn id(&self) -> String {
        self.body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("an id in {}", self.body))
            .to_owned()
    }
}

/// `{"errors":[...]}` from `(message, field)` pairs.
pub fn errors(entries: &[(&str, Option<&str>)]) -> Value {
    let entries: Vec<Value> = entries
        .iter()
        .map(|(message, field)| match field {
            Some(field) => json!({ "message": message, "field": field }),
            None => json!({ "message": message }),
        })
        .collect();
    json!({ "errors": entries })
}

pub fn not_authorized() -> Value {
    errors(&[("Not authorized", None)])
}

pub fn not_found() -> Value {
    errors(&[("Not Found", None)])
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
        let mut request = self.client.request(method, self.url(path));
        if let Some(user) = user {
            request = request.header(COOKIE, &user.cookie);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        Reply::read(request.send().await.expect("request")).await
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
        self.send(
            reqwest::Method::GET,
            &format!("/api/orders/{id}"),
            user,
            None,
        )
        .await
    }

    pub async fn delete_order(&self, user: Option<&User>, id: &str) -> Reply {
        self.send(
            reqwest::Method::DELETE,
            &format!("/api/orders/{id}"),
            user,
            None,
        )
        .await
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
        let (tx, rx) = mpsc::unbounded_channel();
        let options = ListenerOptions {
            // One at a time, so events arrive in stream order.
            concurrency: 1,
            ..ListenerOptions::new(format!(
                "test-observer-{}",
                common::testing::unique_suffix()
            ))
        };
        listen::<E, _, _>(
            &self.bus,
            options,
            self.shutdown.clone(),
            move |event, _| {
                let tx = tx.clone();
                async move {
                    // The receiver is gone only when the test is over.
                    let _ = tx.send(event);
                    Ok(Outcome::Ack)
                }
            },
        )
        .await
        .expect("observer");
        Observer { rx }
    }

    /// Publishes an event on the app's stream, as another service would.
    pub async fn publish<E: Event>(&self, event: &E) {
        self.bus.publish(event).await.expect("publish");
    }
}

pub struct Observer<E> {
    rx: mpsc::UnboundedReceiver<E>,
}

impl<E: Event + std::fmt::Debug> Observer<E> {
    /// The next event, within [`DEADLINE`].
    pub async fn next(&mut self) -> E {
        tokio::time::timeout(DEADLINE, self.rx.recv())
            .await
            .expect("an event within the deadline")
            .expect("observer open")
    }

    /// Events up to and including the first one `is_marker` accepts. Publish the marker after the
    /// action under test: anything that action published arrives before it.
    pub async fn until(&mut self, is_marker: impl Fn(&E) -> bool) -> Vec<E> {
        let mut seen = Vec::new();
        loop {
            let event = self.next().await;
            let done = is_marker(&event);
            seen.push(event);
            if done {
                return seen;
            }
        }
    }
}

/// Polls `check` until it returns `Some`, failing after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
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
