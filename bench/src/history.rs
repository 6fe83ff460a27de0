//! The history dimension (issue 13): the same read workloads with 0, 1,000, 10,000… sold tickets
//! already in the databases, and a workload that touches no database (`GET
//! /api/users/currentuser`: a JWT check in the auth service) as the ceiling of the stack itself.
//!
//! The history is seeded in bulk, not through the API: one real purchase is made through the app
//! (a seller lists a ticket, a buyer orders and pays it), and once every service has settled (the
//! order complete, every change published, nothing moving), every document it left in the four
//! databases is the *template* of a sale. Each seeded sale is a copy of those documents with new
//! ids for the ticket, the order, the payment and the buyer (in `ObjectId`s and inside strings:
//! change ids `<id>:<version>`, reservations, event payloads and message ids), inserted with
//! `insert_many`. So the seeded documents have exactly the shapes, versions and change documents
//! the services write today, whatever their code does, and the users their real password hash
//! (the template buyer's, computed once by the auth service: seeded buyers can sign in).
//!
//! The phase starts by emptying the app's databases (documents only: the services' indexes stay)
//! and the expiration service's delayed jobs, so that "0" means empty, and empties them again at
//! the end, so that the rest of the run starts from empty databases too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::TryStreamExt as _;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Bson, Document, doc};
use reqwest::Method;
use serde::Serialize;
use serde_json::json;

use crate::api::Api;
use crate::auth::PASSWORD;
use crate::database::{self, DATABASES};
use crate::load::{LoadResult, closed_loop, run_all};
use crate::monitor::{Monitor, PhaseUsage};

const WARM_UP: Duration = Duration::from_millis(300);
/// How long the template purchase may take to settle in every service.
const SETTLE_LIMIT: Duration = Duration::from_secs(45);
/// Sales inserted per `insert_many` round.
const BATCH: usize = 2_000;
const TICKET_PRICE_EUROS: f64 = 25.0;

/// The workloads measured at every history size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum Workload {
    #[default]
    #[serde(rename = "GET /api/tickets")]
    List,
    #[serde(rename = "GET /api/tickets/{id}")]
    Show,
    #[serde(rename = "GET /api/orders")]
    Orders,
    #[serde(rename = "POST /api/users/signin")]
    Signin,
    #[serde(rename = "GET /api/users/currentuser")]
    Ceiling,
}

impl Workload {
    pub const ALL: [Workload; 5] = [
        Workload::List,
        Workload::Show,
        Workload::Orders,
        Workload::Signin,
        Workload::Ceiling,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Workload::List => "GET /api/tickets",
            Workload::Show => "GET /api/tickets/{id}",
            Workload::Orders => "GET /api/orders",
            Workload::Signin => "POST /api/users/signin",
            Workload::Ceiling => "GET /api/users/currentuser",
        }
    }

    /// What the workload reads, for the report.
    pub fn what(self) -> &'static str {
        match self {
            Workload::List => "the free tickets (filter `orderId: null`)",
            Workload::Show => "one ticket by `_id`",
            Workload::Orders => "a user's orders (filter `userId`) with their tickets",
            Workload::Signin => "a user by email, then argon2",
            Workload::Ceiling => "no database: the session's JWT only (the ceiling)",
        }
    }
}

/// One workload at one concurrency and history size.
#[derive(Debug, Clone, Serialize, Default)]
pub struct HistoryRun {
    pub workload: Workload,
    pub result: LoadResult,
    pub usage: PhaseUsage,
}

/// The figures at one history size.
#[derive(Debug, Clone, Serialize, Default)]
pub struct HistorySize {
    /// Sold tickets seeded (with their orders, payments and buyers), besides the fixtures.
    pub sold: usize,
    /// Documents inserted to get from the previous size to this one, and how long it took.
    pub documents_inserted: u64,
    pub seed_seconds: f64,
    /// Documents in the app's databases while this size was measured.
    pub documents: u64,
    pub runs: Vec<HistoryRun>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct History {
    pub levels: Vec<usize>,
    pub seconds_per_level: f64,
    /// Documents one sale leaves in the databases (the template), by `database.collection`.
    pub documents_per_sale: BTreeMap<String, usize>,
    /// Free tickets (what `GET /api/tickets` returns) and the orders of the user whose orders are
    /// listed: the same at every size.
    pub free_tickets: usize,
    pub user_orders: usize,
    pub sizes: Vec<HistorySize>,
}

impl HistorySize {
    pub fn run_of(&self, workload: Workload, concurrency: usize) -> Option<&HistoryRun> {
        self.runs
            .iter()
            .find(|r| r.workload == workload && r.result.concurrency == concurrency)
    }
}

pub struct HistoryOptions<'a> {
    /// Sold tickets at each size, ascending.
    pub sizes: &'a [usize],
    pub levels: &'a [usize],
    pub duration: Duration,
    pub free_tickets: usize,
    pub run: &'a str,
    /// Where `scripts/app.sh` keeps the running app's files (`<run_dir>/tickets*.env`).
    pub app: &'a crate::stack::AppFiles,
    /// The expiration service's Redis (`REDIS_URL`), emptied with the databases.
    pub redis_url: Option<&'a str>,
}

/// A document of the template, where it lives.
#[derive(Debug, Clone)]
struct Stored {
    database: String,
    collection: String,
    document: Document,
}

/// The documents of one real purchase, sorted by what they belong to.
struct Template {
    /// Mention the ticket, the order or the payment: copied for every sale.
    per_sale: Vec<Stored>,
    /// Mention the buyer only (the user): copied for every new buyer.
    per_buyer: Vec<Stored>,
    /// Mention the seller only (the user): copied once per batch, whose seller sells its tickets.
    per_seller: Vec<Stored>,
    ticket: ObjectId,
    order: ObjectId,
    /// The payment attempt's id (an ObjectId in hex in today's payments service).
    payment: String,
    buyer: ObjectId,
    buyer_email: String,
    seller: ObjectId,
    seller_email: String,
}

/// Who plays the seeded sales' parts: the template's ids → this copy's ids.
#[derive(Default)]
struct Mapping {
    ids: Vec<(ObjectId, ObjectId)>,
    strings: Vec<(String, String)>,
}

impl Mapping {
    fn id(&mut self, from: ObjectId, to: ObjectId) {
        self.ids.push((from, to));
        self.strings.push((from.to_hex(), to.to_hex()));
    }

    fn text(&mut self, from: &str, to: String) {
        self.strings.push((from.to_owned(), to));
    }

    fn apply(&self, value: &Bson) -> Bson {
        match value {
            Bson::ObjectId(id) => Bson::ObjectId(
                self.ids
                    .iter()
                    .find(|(from, _)| from == id)
                    .map_or(*id, |(_, to)| *to),
            ),
            Bson::String(text) => {
                let mut text = text.clone();
                for (from, to) in &self.strings {
                    if text.contains(from.as_str()) {
                        text = text.replace(from.as_str(), to);
                    }
                }
                Bson::String(text)
            }
            Bson::Document(document) => Bson::Document(self.apply_document(document)),
            Bson::Array(items) => Bson::Array(items.iter().map(|v| self.apply(v)).collect()),
            other => other.clone(),
        }
    }

    /// The copy of a template document (the template is settled: every change's events are
    /// out, so its copies need no pending marker).
    fn apply_document(&self, document: &Document) -> Document {
        document
            .iter()
            .map(|(k, v)| (k.clone(), self.apply(v)))
            .collect()
    }
}

/// Empties every collection of the app's databases (the indexes stay); the number removed.
pub async fn empty_databases(mongo: &mongodb::Client) -> anyhow::Result<u64> {
    let mut removed = 0;
    for database in DATABASES {
        let db = mongo.database(database);
        for name in db.list_collection_names().await? {
            // What the services' one-time copies at first start have done stays done: with the
            // data gone there is nothing left to copy, and a restart must not copy it again.
            if name == "migrations" {
                continue;
            }
            removed += empty_collection(&db.collection::<Document>(&name))
                .await
                .with_context(|| format!("emptying {database}.{name}"))?;
        }
    }
    Ok(removed)
}

/// Deletes every document of `collection` (see [`database::delete_matching`]).
async fn empty_collection(collection: &mongodb::Collection<Document>) -> anyhow::Result<u64> {
    database::delete_matching(collection, doc! {}).await
}

/// Empties the expiration service's Redis, its delayed jobs: the orders they would expire were just
/// deleted behind the services' backs. Left there, each fires up to 15 minutes later (the bench's
/// reservation window), and the orders service retries an `expiration:complete` of an order it
/// does not have for about two minutes (30 deliveries) before dead-lettering it: reads behind the
/// phases of later runs (about 100 FerretDB reads a second, measured when it retried for good), and
/// dead letters that are only the bench's doing.
async fn empty_expiration_jobs(redis_url: Option<&str>) -> anyhow::Result<()> {
    let Some(url) = redis_url else {
        eprintln!(
            "WARNING: REDIS_URL is not set: the expiration jobs of the deleted orders stay in Redis"
        );
        return Ok(());
    };
    let client = redis::Client::open(url).context("REDIS_URL is not a Redis URL")?;
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to Redis at {url}"))?;
    redis::cmd("FLUSHDB")
        .query_async::<()>(&mut redis)
        .await
        .context("emptying the expiration service's Redis (FLUSHDB)")?;
    Ok(())
}

/// The app's databases and the expiration jobs of their orders, emptied; the documents removed.
async fn empty_app_data(mongo: &mongodb::Client, redis_url: Option<&str>) -> anyhow::Result<u64> {
    let removed = empty_databases(mongo).await?;
    empty_expiration_jobs(redis_url).await?;
    Ok(removed)
}

/// Every document of the app's databases.
async fn snapshot(mongo: &mongodb::Client) -> anyhow::Result<Vec<Stored>> {
    let mut all = Vec::new();
    for database in DATABASES {
        let db = mongo.database(database);
        let mut names = db.list_collection_names().await?;
        names.sort();
        for name in names {
            let documents: Vec<Document> = db
                .collection::<Document>(&name)
                .find(doc! {})
                .sort(doc! { "_id": 1 })
                .await?
                .try_collect()
                .await?;
            all.extend(documents.into_iter().map(|document| Stored {
                database: database.to_owned(),
                collection: name.clone(),
                document,
            }));
        }
    }
    Ok(all)
}

async fn count_documents(mongo: &mongodb::Client) -> anyhow::Result<u64> {
    Ok(crate::database::sizes(mongo)
        .await?
        .iter()
        .map(|c| c.documents)
        .sum())
}

async fn signup(api: &Api, email: &str) -> anyhow::Result<String> {
    let reply = api
        .send(
            Method::POST,
            "/api/users/signup",
            None,
            Some(&json!({ "email": email, "password": PASSWORD })),
        )
        .await?;
    match reply.cookie {
        Some(cookie) if reply.status == 201 => Ok(cookie),
        _ => bail!("signup of {email}: {} {}", reply.status, reply.body),
    }
}

async fn create_ticket(api: &Api, seller: &str, title: String) -> anyhow::Result<String> {
    let body = json!({ "title": title, "price": TICKET_PRICE_EUROS });
    let reply = api
        .send(Method::POST, "/api/tickets", Some(seller), Some(&body))
        .await?;
    match reply.id() {
        Some(id) if reply.status == 201 => Ok(id),
        _ => bail!("POST /api/tickets: {} {}", reply.status, reply.body),
    }
}

/// `POST /api/orders` for `ticket`, once the orders service has heard of the ticket.
async fn place_order(api: &Api, buyer: &str, ticket: &str) -> anyhow::Result<()> {
    let body = json!({ "ticketId": ticket });
    until(
        "the orders service to accept an order",
        Duration::from_secs(30),
        || async {
            let reply = api
                .send(Method::POST, "/api/orders", Some(buyer), Some(&body))
                .await?;
            match reply.status {
                201 => Ok(Some(())),
                404 => Ok(None),
                _ => bail!("POST /api/orders: {} {}", reply.status, reply.body),
            }
        },
    )
    .await
}

/// Retries `attempt` every 50 ms until it gives `Some`, at most `limit`.
async fn until<T, F, Fut>(what: &str, limit: Duration, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = attempt().await? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The users of the template purchase and their session cookies.
struct Parties {
    seller_cookie: String,
    buyer_cookie: String,
}

/// One purchase through the app, waited for until every service has settled; its documents.
async fn template(
    api: &Api,
    mongo: &mongodb::Client,
    run: &str,
) -> anyhow::Result<(Template, Parties)> {
    let seller_email = format!("history-seller-{run}@bench.test");
    let buyer_email = format!("history-buyer-{run}@bench.test");
    eprintln!("==> history: one purchase through the app, the template of every seeded sale");
    let seller_cookie = signup(api, &seller_email).await?;
    let buyer_cookie = signup(api, &buyer_email).await?;
    let ticket = create_ticket(api, &seller_cookie, format!("History {run} template")).await?;
    // The orders service must know the ticket (its replica, from `ticket:created`) to sell it.
    let order = until(
        "POST /api/orders for the template ticket (the orders service's replica)",
        SETTLE_LIMIT,
        || async {
            let reply = api
                .send(
                    Method::POST,
                    "/api/orders",
                    Some(&buyer_cookie),
                    Some(&json!({ "ticketId": ticket })),
                )
                .await?;
            match (reply.status, reply.id()) {
                (201, Some(id)) => Ok(Some(id)),
                (404, _) => Ok(None),
                _ => bail!("POST /api/orders: {} {}", reply.status, reply.body),
            }
        },
    )
    .await?;
    // The payments service must know the order (its replica, from `order:created`) to charge it.
    until(
        "POST /api/payments for the template order (the payments service's replica)",
        SETTLE_LIMIT,
        || async {
            let reply = api
                .send(
                    Method::POST,
                    "/api/payments",
                    Some(&buyer_cookie),
                    Some(&json!({ "orderId": order, "token": "tok_visa" })),
                )
                .await?;
            match reply.status {
                201 => Ok(Some(())),
                404 => Ok(None),
                _ => bail!("POST /api/payments: {} {}", reply.status, reply.body),
            }
        },
    )
    .await?;
    let path = format!("/api/orders/{order}");
    until(
        "the template order to be complete",
        SETTLE_LIMIT,
        || async {
            let reply = api
                .send(Method::GET, &path, Some(&buyer_cookie), None)
                .await?;
            Ok((reply.body["status"].as_str() == Some("complete")).then_some(()))
        },
    )
    .await?;
    // Settled: every change published, and nothing changed for a while.
    let deadline = Instant::now() + SETTLE_LIMIT;
    let mut previous: Vec<Document> = Vec::new();
    let documents = loop {
        let now = snapshot(mongo).await?;
        let documents: Vec<Document> = now.iter().map(|s| s.document.clone()).collect();
        let settled = now.iter().all(|s| !is_pending_marker(s));
        if settled && documents == previous {
            break now;
        }
        if Instant::now() > deadline {
            let pending: Vec<String> = now
                .iter()
                .filter(|s| is_pending_marker(s))
                .map(|s| format!("{}.{} {}", s.database, s.collection, s.document))
                .collect();
            bail!(
                "the template purchase did not settle within {SETTLE_LIMIT:?} (every change with events published, nothing moving for 0.3 s); unpublished: {}",
                pending.join("; ")
            );
        }
        previous = documents;
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let template = sort_template(documents, &ticket, &order, &seller_email, &buyer_email)?;
    Ok((
        template,
        Parties {
            seller_cookie,
            buyer_cookie,
        },
    ))
}

/// The pending marker of a change whose events are not out yet (deleted once they are).
fn is_pending_marker(stored: &Stored) -> bool {
    stored.collection.ends_with("_pending")
}

fn object_id(hex: &str, what: &str) -> anyhow::Result<ObjectId> {
    ObjectId::parse_str(hex).with_context(|| format!("{what} {hex:?} is not an ObjectId"))
}

fn find<'a>(
    documents: &'a [Stored],
    database: &str,
    collection: &str,
    filter: impl Fn(&Document) -> bool,
) -> Option<&'a Document> {
    documents
        .iter()
        .find(|s| s.database == database && s.collection == collection && filter(&s.document))
        .map(|s| &s.document)
}

fn sort_template(
    documents: Vec<Stored>,
    ticket: &str,
    order: &str,
    seller_email: &str,
    buyer_email: &str,
) -> anyhow::Result<Template> {
    let (ticket, order) = (
        object_id(ticket, "ticket id")?,
        object_id(order, "order id")?,
    );
    let user = |email: &str| {
        find(&documents, "auth", "users", |d| {
            d.get_str("email") == Ok(email)
        })
        .and_then(|d| d.get_object_id("_id").ok())
        .with_context(|| format!("no user {email} in auth.users"))
    };
    let (seller, buyer) = (user(seller_email)?, user(buyer_email)?);
    let payment = find(&documents, "payments", "payments", |d| {
        d.get_object_id("_id") == Ok(order)
    })
    .and_then(|d| d.get_str("paymentId").ok())
    .context("no payment of the template order in payments.payments (with a paymentId)")?
    .to_owned();
    let mentions = |d: &Document, needles: &[&str]| {
        let text = d.to_string();
        needles.iter().any(|n| text.contains(n))
    };
    let sale_needles = [ticket.to_hex(), order.to_hex(), payment.clone()];
    let sale_needles: Vec<&str> = sale_needles.iter().map(String::as_str).collect();
    let buyer_needles = [buyer.to_hex(), buyer_email.to_owned()];
    let buyer_needles: Vec<&str> = buyer_needles.iter().map(String::as_str).collect();
    let seller_needles = [seller.to_hex(), seller_email.to_owned()];
    let seller_needles: Vec<&str> = seller_needles.iter().map(String::as_str).collect();
    let (mut per_sale, mut per_buyer, mut per_seller) = (Vec::new(), Vec::new(), Vec::new());
    // A document keyed by a party (e.g. the seller's recent writes) is that party's, once, even
    // when it names the sale: copied per sale it would repeat its key.
    let keyed_by = |d: &Document, party: ObjectId| match d.get("_id") {
        Some(Bson::ObjectId(id)) => *id == party,
        Some(Bson::String(id)) => *id == party.to_hex(),
        _ => false,
    };
    for stored in documents {
        if keyed_by(&stored.document, seller) {
            per_seller.push(stored);
        } else if mentions(&stored.document, &sale_needles) {
            per_sale.push(stored);
        } else if mentions(&stored.document, &buyer_needles) {
            per_buyer.push(stored);
        } else if mentions(&stored.document, &seller_needles) {
            per_seller.push(stored);
        } else {
            eprintln!(
                "    not copied (belongs to no party of the sale): {}.{} {}",
                stored.database, stored.collection, stored.document
            );
        }
    }
    Ok(Template {
        per_sale,
        per_buyer,
        per_seller,
        ticket,
        order,
        payment,
        buyer,
        buyer_email: buyer_email.to_owned(),
        seller,
        seller_email: seller_email.to_owned(),
    })
}

/// Inserts sales `from..to` (numbers only make ids and emails distinct); the documents inserted.
async fn insert_sales(
    mongo: &mongodb::Client,
    template: &Template,
    from: usize,
    to: usize,
    run: &str,
) -> anyhow::Result<u64> {
    let mut inserted = 0;
    let mut start = from;
    while start < to {
        let end = (start + BATCH).min(to);
        let mut by_collection: BTreeMap<(String, String), Vec<Document>> = BTreeMap::new();
        let mut add = |stored: &Stored, mapping: &Mapping| {
            by_collection
                .entry((stored.database.clone(), stored.collection.clone()))
                .or_default()
                .push(mapping.apply_document(&stored.document));
        };
        // One seller per batch, selling its tickets.
        let mut seller = Mapping::default();
        let seller_id = ObjectId::new();
        seller.id(template.seller, seller_id);
        seller.text(
            &template.seller_email,
            format!("history-seller-{seller_id}@bench.test"),
        );
        for stored in &template.per_seller {
            add(stored, &seller);
        }
        for sale in start..end {
            let mut mapping = Mapping::default();
            mapping.id(template.ticket, ObjectId::new());
            mapping.id(template.order, ObjectId::new());
            let payment = ObjectId::new();
            match ObjectId::parse_str(&template.payment) {
                Ok(id) => mapping.id(id, payment),
                Err(_) => mapping.text(&template.payment, payment.to_hex()),
            }
            // A new buyer for every sale, signing in with the benchmark's password.
            mapping.id(template.buyer, ObjectId::new());
            mapping.text(
                &template.buyer_email,
                format!("history-buyer{sale}-{run}@bench.test"),
            );
            for stored in &template.per_buyer {
                add(stored, &mapping);
            }
            mapping.ids.extend(seller.ids.iter().copied());
            mapping.strings.extend(seller.strings.iter().cloned());
            for stored in &template.per_sale {
                add(stored, &mapping);
            }
        }
        if to - from > BATCH {
            eprintln!("    inserting sales {start}..{end} of {from}..{to}");
        }
        for ((database, collection), documents) in by_collection {
            let n = documents.len() as u64;
            mongo
                .database(&database)
                .collection::<Document>(&collection)
                .insert_many(documents)
                .await
                .with_context(|| format!("inserting {n} documents into {database}.{collection}"))?;
            inserted += n;
        }
        start = end;
    }
    Ok(inserted)
}

/// Restarts the tickets service so that its read model sees what was written behind its back, and
/// follows its new processes (their CPU must not count as other programs').
async fn refill_ticket_read_models(
    options: &HistoryOptions<'_>,
    monitor: &Monitor,
) -> anyhow::Result<()> {
    options.app.refill_ticket_read_models().await?;
    monitor.follow(&crate::stack::Stack::discover(&options.app.run_dir)?);
    Ok(())
}

/// Empties the databases, makes the template and the fixtures, then measures every workload at
/// every size, seeding the difference in between; empties the databases again at the end.
pub async fn run(
    api: &Api,
    mongo: &mongodb::Client,
    monitor: &Monitor,
    options: &HistoryOptions<'_>,
) -> anyhow::Result<History> {
    let run = options.run.to_lowercase();
    let removed = empty_app_data(mongo, options.redis_url).await?;
    eprintln!(
        "==> history: emptied the app's databases ({removed} documents) and its expiration jobs"
    );
    refill_ticket_read_models(options, monitor).await?;
    let (template, parties) = template(api, mongo, &run).await?;
    let mut documents_per_sale = BTreeMap::new();
    for stored in template.per_sale.iter().chain(&template.per_buyer) {
        *documents_per_sale
            .entry(format!("{}.{}", stored.database, stored.collection))
            .or_default() += 1;
    }
    eprintln!(
        "    one sale = {} documents: {}",
        documents_per_sale.values().sum::<usize>(),
        documents_per_sale
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // Fixtures: the same at every size.
    let user_orders = 3;
    // Through the API: a user's orders are one record per user, which copying sales cannot extend.
    for i in 1..user_orders {
        let ticket = create_ticket(
            api,
            &parties.seller_cookie,
            format!("History {run} order {i}"),
        )
        .await?;
        place_order(api, &parties.buyer_cookie, &ticket).await?;
    }
    let free = run_all((0..options.free_tickets).collect(), 8, {
        let (api, seller, run) = (api.clone(), parties.seller_cookie.clone(), run.clone());
        move |i: usize| {
            let (api, seller, run) = (api.clone(), seller.clone(), run.clone());
            async move { create_ticket(&api, &seller, format!("History {run} seat {i}")).await }
        }
    })
    .await?
    .into_iter()
    .collect::<anyhow::Result<Vec<_>>>()?;
    eprintln!(
        "==> history: fixtures: {} free tickets, a user with {user_orders} orders",
        free.len()
    );
    let listed = api
        .send(
            Method::GET,
            "/api/orders",
            Some(&parties.buyer_cookie),
            None,
        )
        .await?;
    let listed = listed.body.as_array().map_or(0, Vec::len);
    if listed != user_orders {
        bail!("GET /api/orders lists {listed} orders of the history user, not {user_orders}");
    }

    let fixtures = Arc::new(Fixtures {
        api: api.clone(),
        show_paths: free.iter().map(|id| format!("/api/tickets/{id}")).collect(),
        buyer_cookie: parties.buyer_cookie.clone(),
        signins: [&template.buyer_email, &template.seller_email]
            .map(|email| json!({ "email": email, "password": PASSWORD })),
    });
    let mut sizes = Vec::new();
    let mut seeded = 0;
    for &sold in options.sizes {
        let started = Instant::now();
        let documents_inserted = insert_sales(mongo, &template, seeded, sold, &run).await?;
        let seed_seconds = started.elapsed().as_secs_f64();
        seeded = seeded.max(sold);
        refill_ticket_read_models(options, monitor).await?;
        let documents = count_documents(mongo).await?;
        eprintln!(
            "==> history: {sold} sold tickets: {documents_inserted} documents inserted in {seed_seconds:.1} s ({documents} in the databases)"
        );
        let mut runs = Vec::new();
        for workload in Workload::ALL {
            for &concurrency in options.levels {
                let request = fixtures.request(workload);
                closed_loop(concurrency, WARM_UP, request.clone()).await;
                let label = format!("history {sold} {} c={concurrency}", workload.label());
                let mark = monitor.begin(label.clone()).await;
                let result = closed_loop(concurrency, options.duration, request).await;
                let usage = monitor.end(mark).await;
                eprintln!(
                    "    {label}: {:.0} req/s, p50 {:.1} ms, p99 {:.1} ms, {} errors",
                    result.throughput_rps,
                    result.latency.p50_ms,
                    result.latency.p99_ms,
                    result.errors
                );
                runs.push(HistoryRun {
                    workload,
                    result,
                    usage,
                });
            }
        }
        sizes.push(HistorySize {
            sold,
            documents_inserted,
            seed_seconds,
            documents,
            runs,
        });
    }
    let removed = empty_app_data(mongo, options.redis_url).await?;
    eprintln!(
        "==> history: emptied the app's databases and its expiration jobs again ({removed} documents)"
    );
    refill_ticket_read_models(options, monitor).await?;
    Ok(History {
        levels: options.levels.to_vec(),
        seconds_per_level: options.duration.as_secs_f64(),
        documents_per_sale,
        free_tickets: free.len(),
        user_orders,
        sizes,
    })
}

/// What the workloads' requests need.
struct Fixtures {
    api: Api,
    show_paths: Vec<String>,
    buyer_cookie: String,
    signins: [serde_json::Value; 2],
}

impl Fixtures {
    fn request(
        self: &Arc<Self>,
        workload: Workload,
    ) -> impl Fn(usize, u64) -> futures::future::BoxFuture<'static, crate::load::Outcome>
    + Send
    + Sync
    + Clone
    + 'static {
        let fixtures = Arc::clone(self);
        move |worker: usize, iteration: u64| {
            let f = Arc::clone(&fixtures);
            Box::pin(async move {
                let api = &f.api;
                match workload {
                    Workload::List => api.get_status("/api/tickets").await,
                    Workload::Show => {
                        let i = (worker * 7919 + iteration as usize) % f.show_paths.len().max(1);
                        match f.show_paths.get(i) {
                            Some(path) => api.get_status(path).await,
                            None => Err("no ticket to show".to_owned()),
                        }
                    }
                    Workload::Orders => {
                        api.status_of(Method::GET, "/api/orders", Some(&f.buyer_cookie), None)
                            .await
                    }
                    Workload::Signin => {
                        let body = &f.signins[worker % 2];
                        api.status_of(Method::POST, "/api/users/signin", None, Some(body))
                            .await
                    }
                    Workload::Ceiling => {
                        api.status_of(
                            Method::GET,
                            "/api/users/currentuser",
                            Some(&f.buyer_cookie),
                            None,
                        )
                        .await
                    }
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_collection_with_more_documents_than_one_sql_statement_can_name_is_emptied()
    -> anyhow::Result<()> {
        common::testing::require_infra(&["MONGO_URL"]);
        let url = std::env::var("MONGO_URL")?;
        let client = mongodb::Client::with_uri_str(&url).await?;
        let db = client.database(&format!("bench_test_{}", ObjectId::new()));
        let collection = db.collection::<Document>("many");
        // More than the 32,766 variables SQLite binds in one statement: FerretDB's `DeleteAll`
        // names every id of `delete_many({})` as one variable each.
        const DOCUMENTS: usize = 33_000;
        for start in (0..DOCUMENTS).step_by(1_000) {
            let batch: Vec<Document> = (start..start + 1_000)
                .map(|n| doc! { "_id": ObjectId::new(), "n": n as i64 })
                .collect();
            collection.insert_many(batch).await?;
        }

        let removed = empty_collection(&collection).await?;

        let left = collection.count_documents(doc! {}).await?;
        db.drop().await?;
        assert_eq!((removed, left), (DOCUMENTS as u64, 0));
        Ok(())
    }
}
