use std::fmt::Debug;
use std::net::SocketAddr;
use std::time::Duration;

use chrono::Utc;
use common::bus::{EventBus, ListenerOptions, Outcome, listen};
use common::events::{
    Event, Id, OrderCancelled, OrderCreated, OrderCreatedTicket, OrderStatus, TicketRef,
};
use common::money::Price;
use common::store::PendingEvent;
use common::testing::{new_user_id, require_infra, session_cookie, test_env};
use mongodb::Database;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Document, doc};
use reqwest::header::COOKIE;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tickets::settings::Settings;
use tickets::store::{Ticket, TicketStore};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long eventual states may take before a test gives up.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The infrastructure of one test: a fresh database and stream, and the test's own connections
/// to them (to look at stored documents, call listeners directly and observe events).
pub struct Infra {
    pub settings: Settings,
    pub db: Database,
    pub store: TicketStore,
    pub bus: EventBus,
    /// Stops the test's observers.
    pub shutdown: CancellationToken,
}

impl Drop for Infra {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn infra() -> Infra {
    require_infra(&["MONGO_URL", "NATS_URL"]);
    if std::env::var("TEST_LOG").is_ok() {
        common::telemetry::init("tickets-test");
    }
    let settings = Settings::from_env(&test_env("tickets", &[])).expect("test settings");
    let db = common::store::connect(&settings.mongo, "tickets-test")
        .await
        .expect("the test connects to the database");
    let store = TicketStore::new(&db);
    let bus = EventBus::connect(&settings.nats, "tickets-test")
        .await
        .expect("the test connects to NATS");
    Infra {
        settings,
        db,
        store,
        bus,
        shutdown: CancellationToken::new(),
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// Where the app serves `GET /metrics`.
    pub metrics_addr: SocketAddr,
    pub client: reqwest::Client,
    pub infra: Infra,
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts the tickets service (routes, listeners, relay) on a random port with a fresh database
/// and stream.
pub async fn spawn_app() -> TestApp {
    let infra = infra().await;
    let app = tickets::app::build(infra.settings.clone())
        .await
        .expect("the tickets app builds");
    let addr = app.addr();
    let metrics_addr = app.metrics_addr();
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        addr,
        metrics_addr,
        client: reqwest::Client::new(),
        infra,
        shutdown,
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
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

/// A signed-in user: id and `Cookie` header.
pub struct User {
    pub id: String,
    pub cookie: String,
}

pub fn user() -> User {
    let id = new_user_id();
    let cookie = session_cookie(&id, &format!("{id}@test.com"));
    User { id, cookie }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        cookie: Option<&str>,
        body: Option<&Value>,
    ) -> Reply {
        let mut request = self.client.request(method, self.url(path));
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("response body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("JSON body")
        };
        Reply { status, body }
    }

    pub async fn post_ticket(&self, cookie: Option<&str>, body: &Value) -> Reply {
        self.request(Method::POST, "/api/tickets", cookie, Some(body))
            .await
    }

    pub async fn put_ticket(&self, id: &str, cookie: Option<&str>, body: &Value) -> Reply {
        self.request(
            Method::PUT,
            &format!("/api/tickets/{id}"),
            cookie,
            Some(body),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, None, None).await
    }

    pub async fn get_ticket(&self, id: &str) -> Reply {
        self.get(&format!("/api/tickets/{id}")).await
    }

    /// Creates a ticket through the API and returns its JSON.
    pub async fn create_ticket(&self, owner: &User, title: &str, price: f64) -> Value {
        let reply = self
            .post_ticket(
                Some(&owner.cookie),
                &json!({ "title": title, "price": price }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        reply.body
    }

    /// Polls `GET /api/tickets/{id}` until `done` holds, and returns that ticket JSON.
    pub async fn wait_for_ticket(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let started = tokio::time::Instant::now();
        loop {
            let reply = self.get_ticket(id).await;
            if reply.status == StatusCode::OK && done(&reply.body) {
                return reply.body;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "ticket {id} never reached the expected state; last: {:?}",
                reply.body
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Infra {
    /// The ticket as stored (after read repair).
    pub async fn ticket(&self, id: &str) -> Ticket {
        let id = ObjectId::parse_str(id).expect("an ObjectId");
        self.store
            .get(id)
            .await
            .expect("reading the ticket")
            .expect("the ticket exists")
    }

    /// The raw stored document of a ticket.
    pub async fn raw_ticket(&self, id: &str) -> Document {
        let id = ObjectId::parse_str(id).expect("an ObjectId");
        self.db
            .collection::<Document>("tickets")
            .find_one(doc! { "_id": id })
            .await
            .expect("reading the ticket")
            .expect("the ticket exists")
    }

    /// A ticket created straight in the store, as `POST /api/tickets` does, without HTTP.
    pub async fn insert_ticket(&self, owner: &str) -> Ticket {
        let ticket = Ticket {
            id: ObjectId::new(),
            title: "Concert".into(),
            price_cents: 2000,
            user_id: owner.into(),
            version: 0,
            order_id: None,
        };
        let events = vec![PendingEvent::of(&ticket.created_event()).expect("event")];
        self.store
            .tickets()
            .create(&self.bus, &ticket, events)
            .await
            .expect("creating a ticket");
        ticket
    }

    /// Starts observing `E` with a test queue group, in stream order.
    pub async fn observe<E: Event + Clone>(&self) -> Observer<E> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut options = ListenerOptions::new("test-observer");
        // One at a time, so events arrive in stream order (the sentinel check relies on it).
        options.concurrency = 1;
        listen::<E, _, _>(
            &self.bus,
            options,
            self.shutdown.clone(),
            move |event, _delivery| {
                let tx = tx.clone();
                async move {
                    // The receiver may be gone at the end of a test; nothing to do then.
                    let _ = tx.send(event);
                    Ok(Outcome::Ack)
                }
            },
        )
        .await
        .expect("the observer subscribes");
        Observer {
            rx,
            bus: self.bus.clone(),
        }
    }
}

/// Events of one subject as the bus delivers them to a fresh consumer.
pub struct Observer<E> {
    rx: mpsc::UnboundedReceiver<E>,
    bus: EventBus,
}

impl<E: Event + Clone + PartialEq + Debug> Observer<E> {
    /// The next event, within the deadline.
    pub async fn next(&mut self) -> E {
        tokio::time::timeout(DEADLINE, self.rx.recv())
            .await
            .expect("an event within the deadline")
            .expect("the observer is running")
    }

    /// Every event still to come before `sentinel`, which is published now: as the stream keeps
    /// order, this is everything published so far, without waiting for "nothing else arrives".
    pub async fn rest_before(&mut self, sentinel: E) -> Vec<E> {
        self.bus
            .publish(&sentinel)
            .await
            .expect("publishing the sentinel");
        let mut seen = Vec::new();
        loop {
            let event = self.next().await;
            if event == sentinel {
                return seen;
            }
            seen.push(event);
        }
    }
}

/// A `ticket:created` / `ticket:updated` of a ticket that does not exist, to mark a point in the stream.
pub fn sentinel_created() -> common::events::TicketCreated {
    common::events::TicketCreated {
        id: Id::new(),
        version: 0,
        title: "sentinel".into(),
        price: Price::from_cents(100),
        user_id: "sentinel".into(),
    }
}

pub fn sentinel_updated() -> common::events::TicketUpdated {
    common::events::TicketUpdated {
        id: Id::new(),
        version: 1,
        title: "sentinel".into(),
        price: Price::from_cents(100),
        user_id: "sentinel".into(),
        order_id: None,
    }
}

pub fn order_created(ticket_id: &str, order_id: Id) -> OrderCreated {
    OrderCreated {
        id: order_id,
        version: 0,
        status: OrderStatus::Created,
        user_id: new_user_id(),
        expires_at: Utc::now() + chrono::Duration::seconds(60),
        ticket: OrderCreatedTicket {
            id: ticket_id.parse().expect("a ticket id"),
            price: Price::from_cents(2000),
        },
    }
}

pub fn order_cancelled(ticket_id: &str, order_id: Id) -> OrderCancelled {
    OrderCancelled {
        id: order_id,
        version: 1,
        ticket: TicketRef {
            id: ticket_id.parse().expect("a ticket id"),
        },
    }
}

pub fn new_order_id() -> Id {
    Id::new()
}
