use std::net::SocketAddr;
use std::time::Duration;

use common::bus::{EventBus, Outcome};
use common::events::{Event, Id, OrderCancelled, OrderCreated, TicketUpdated};
use common::money::Price;
use common::store::PendingEvent;
use common::testing::{
    self, Observer, Running, as_id, eventually, id_of, new_user_id, observe, require_infra, send,
    start, test_env,
};
use mongodb::Database;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Document, doc};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tickets::settings::Settings;
use tickets::store::{Ticket, TicketStore};

pub use common::testing::{Reply, User, errors, new_order_id};

/// The infrastructure of one test: a fresh database and stream, and the test's own connections
/// to them (to look at stored documents, call listeners directly and observe events).
pub struct Infra {
    pub settings: Settings,
    pub db: Database,
    pub store: TicketStore,
    pub bus: EventBus,
    /// Stops the test's observers.
    observers: Running,
}

pub async fn infra() -> Infra {
    require_infra(&["MONGO_URL", "NATS_URL"]);
    common::testing::init_test_log("tickets-test");
    common::store::query_log::enable();
    let settings = Settings::from_env(&test_env("tickets", &[])).expect("test settings");
    let (db, bus) = common::backend::connect(&settings.backend, "tickets-test")
        .await
        .expect("the test connects to the database and NATS");
    let store = TicketStore::new(&db);
    Infra {
        settings,
        db,
        store,
        bus,
        observers: Running::new(),
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// Where the app serves `GET /metrics`.
    pub metrics_addr: SocketAddr,
    pub client: reqwest::Client,
    pub infra: Infra,
    _running: Running,
}

/// Starts the tickets service (routes, listeners, relay) on a random port with a fresh database
/// and stream.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(infra().await).await
}

/// [`spawn_app`] on infrastructure the test prepared (e.g. with tickets already stored).
pub async fn spawn_app_with(infra: Infra) -> TestApp {
    let app = start("tickets", tickets::app::build(infra.settings.clone())).await;
    let app = TestApp {
        addr: app.addr,
        metrics_addr: app.metrics_addr,
        client: reqwest::Client::new(),
        infra,
        _running: app.running,
    };
    app.wait_for_read_model().await;
    app
}

/// A second replica of `app`'s service: same database and stream, its own read model.
pub async fn spawn_replica(app: &TestApp) -> TestApp {
    let settings = app.infra.settings.clone();
    let (db, bus) = common::backend::connect(&settings.backend, "tickets-test")
        .await
        .expect("the test connects to the database and NATS");
    let store = TicketStore::new(&db);
    let running = start("tickets", tickets::app::build(settings.clone())).await;
    let replica = TestApp {
        addr: running.addr,
        metrics_addr: running.metrics_addr,
        client: reqwest::Client::new(),
        infra: Infra {
            settings,
            db,
            store,
            bus,
            observers: Running::new(),
        },
        _running: running.running,
    };
    replica.wait_for_read_model().await;
    replica
}

pub fn user() -> User {
    User::new()
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
        send(&self.client, method, &self.url(path), cookie, body).await
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

    /// Waits until reads are answered from the read model (it fills at start).
    pub async fn wait_for_read_model(&self) {
        eventually("the ticket read model to be live", || async {
            let ready = self.get("/readyz").await;
            (ready.body["readModel"]["state"] == "live").then_some(())
        })
        .await;
    }

    pub async fn get_ticket(&self, id: &str) -> Reply {
        self.get(&format!("/api/tickets/{id}")).await
    }

    /// Creates a ticket through the API and returns its JSON.
    /// A new owner's ticket (a €20 concert): the owner and the ticket's id.
    pub async fn new_ticket(&self) -> (User, String) {
        let owner = user();
        let ticket = self.create_ticket(&owner, "Concert", 20.0).await;
        (owner, id_of(&ticket))
    }

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
        eventually(
            &format!("ticket {id} to reach the expected state"),
            async || {
                let reply = self.get_ticket(id).await;
                if reply.status == StatusCode::OK && done(&reply.body) {
                    Ok(reply.body)
                } else {
                    Err(format!("{:?}", reply.body))
                }
            },
        )
        .await
    }
}

impl Infra {
    /// The ticket as stored (after read repair).
    pub async fn ticket(&self, id: &str) -> Ticket {
        let id = ObjectId::parse_str(id).expect("an ObjectId");
        self.store
            .get(id, None)
            .await
            .expect("reading the ticket")
            .expect("the ticket exists")
    }

    /// The order holding the ticket (if any), and the ticket's version.
    pub async fn hold(&self, id: &str) -> (Option<Id>, i64) {
        let ticket = self.ticket(id).await;
        (ticket.order_id, ticket.version)
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

    /// A ticket created through the store, as `POST /api/tickets` does (the read model knows it),
    /// without HTTP.
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
            .create(&self.bus, &ticket, events)
            .await
            .expect("creating a ticket");
        ticket
    }

    /// How many pending markers (changes whose events may not be out yet) the tickets have, once
    /// the writes settling behind a reservation's ack are done.
    pub async fn pending_markers(&self) -> u64 {
        self.store.tickets().settled().await;
        self.db
            .collection::<Document>("tickets_pending")
            .count_documents(doc! {})
            .await
            .expect("counting markers")
    }

    /// Hands `order:created` of `order_id` for the ticket straight to its listener.
    pub async fn reserve(&self, ticket_id: &str, order_id: Id) -> Outcome {
        let event = order_created(ticket_id, order_id);
        tickets::listeners::order_created::handle(&self.store, &self.bus, event)
            .await
            .expect("order:created handled")
    }

    /// Hands `order:cancelled` of `order_id` for the ticket straight to its listener.
    pub async fn release(&self, ticket_id: &str, order_id: Id) -> Outcome {
        let event = order_cancelled(ticket_id, order_id);
        tickets::listeners::order_cancelled::handle(&self.store, &self.bus, event)
            .await
            .expect("order:cancelled handled")
    }

    /// Commits a reservation of `ticket` by `order_id` without publishing its event, as a crash
    /// right after the commit leaves it; returns the reserved ticket.
    pub async fn reserve_unpublished(&self, ticket: &Ticket, order_id: Id) -> Ticket {
        let (reserved, events) = ticket.with_order(Some(order_id)).expect("a reservation");
        self.store
            .tickets()
            .commit_unpublished(ticket, &reserved, events)
            .await
            .expect("committed");
        reserved
    }

    /// One pass of the outbox relay over changes of any age: how many events it published.
    pub async fn relay(&self) -> usize {
        self.store
            .tickets()
            .relay_once(&self.bus, Duration::ZERO)
            .await
            .expect("relay pass")
            .published
    }

    /// Publishes an event on the test's stream, as another service would.
    pub async fn publish<E: Event>(&self, event: &E) {
        self.bus.publish(event).await.expect("publishing");
    }

    /// The id of a fresh ticket of [`OWNER`] inserted by [`Self::insert_ticket`].
    pub async fn new_ticket_id(&self) -> String {
        self.insert_ticket(OWNER).await.id.to_hex()
    }

    /// Starts observing `E` with a queue group of its own, in stream order.
    pub async fn observe<E: Event>(&self) -> Observer<E> {
        observe(&self.bus, self.observers.token()).await
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

/// `order:created` of a €20 order of a new user for the ticket.
pub fn order_created(ticket_id: &str, order_id: Id) -> OrderCreated {
    testing::order_created(
        order_id,
        as_id(ticket_id),
        &new_user_id(),
        Price::from_cents(2000),
    )
}

/// `order:cancelled` of the order created by [`order_created`].
pub fn order_cancelled(ticket_id: &str, order_id: Id) -> OrderCancelled {
    testing::order_cancelled(order_id, as_id(ticket_id), 1)
}

/// A well-formed ticket id that names no ticket.
pub const UNKNOWN_TICKET: &str = "64b7f0c2a1b2c3d4e5f60718";

/// Whether an order event still reads back once its ticket id is not an id.
pub fn readable_with_a_malformed_ticket_id<E: Serialize + DeserializeOwned>(event: &E) -> bool {
    let mut malformed = serde_json::to_value(event).expect("json");
    malformed["ticket"]["id"] = "nope".into();
    serde_json::from_value::<E>(malformed).is_ok()
}

/// The owner of the tickets the listener tests insert.
pub const OWNER: &str = "owner-1";

/// `ticket:updated` of a ticket inserted for [`OWNER`] (a €20 "Concert"), at `version`, held by
/// `order_id`.
pub fn inserted_ticket_updated(id: &str, version: i64, order_id: Option<Id>) -> TicketUpdated {
    TicketUpdated {
        id: as_id(id),
        version,
        title: "Concert".into(),
        price: Price::from_cents(2000),
        user_id: OWNER.into(),
        order_id,
    }
}

/// Waits until an anonymous listing on `app` (or `cookie`'s) includes ticket `id`.
pub async fn eventually_listed(app: &TestApp, cookie: Option<&str>, id: &str) {
    eventually("the ticket in the listing", || async {
        let listed = app.request(Method::GET, "/api/tickets", cookie, None).await;
        listed
            .body
            .as_array()?
            .iter()
            .any(|t| t["id"] == id)
            .then_some(())
    })
    .await;
}

/// Waits until an anonymous read of ticket `id` on `app` shows `title`.
pub async fn eventually_titled(app: &TestApp, id: &str, title: &str) {
    eventually("the edited title", || async {
        (app.get_ticket(id).await.body["title"] == title).then_some(())
    })
    .await;
}
