//! Hostile input on every route of every service: whatever the body, content type, path id or
//! cookie, the answer is a 2xx or a 4xx, and every 4xx carries the `{"errors":[{"message"}]}`
//! shape. Never a 5xx, never a hang, never a dropped connection.

use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use reqwest::StatusCode;
use serde_json::{Value, json};
use system_tests::{Stack, User};

/// Every route of the four HTTP services: (method, service, path, `{id}` in the path).
const ROUTES: &[(&str, &str, &str)] = &[
    ("POST", "auth", "/api/users/signup"),
    ("POST", "auth", "/api/users/signin"),
    ("POST", "auth", "/api/users/signout"),
    ("GET", "auth", "/api/users/currentuser"),
    ("POST", "tickets", "/api/tickets"),
    ("GET", "tickets", "/api/tickets"),
    ("GET", "tickets", "/api/tickets/{id}"),
    ("PUT", "tickets", "/api/tickets/{id}"),
    ("POST", "orders", "/api/orders"),
    ("GET", "orders", "/api/orders"),
    ("GET", "orders", "/api/orders/{id}"),
    ("DELETE", "orders", "/api/orders/{id}"),
    ("POST", "payments", "/api/payments"),
    ("GET", "payments", "/api/payments/{id}"),
];

/// Field names the services read, so that generated objects hit the validators, not only `{}`.
const FIELDS: &[&str] = &[
    "email", "password", "title", "price", "ticketId", "orderId", "token", "id", "version",
];

struct World {
    runtime: tokio::runtime::Runtime,
    stack: Stack,
    user: User,
    /// A real ticket and order, so that valid ids reach the deeper checks too.
    ticket_id: String,
    order_id: String,
    http: reqwest::Client,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        let (stack, user, ticket_id, order_id) = runtime.block_on(async {
            let stack = Stack::start(600).await;
            let user = stack.sign_up().await;
            let ticket = stack
                .create_ticket(&user, "Fuzzed", 10.0)
                .await
                .expect(StatusCode::CREATED, "ticket");
            let ticket_id = system_tests::id_of(&ticket);
            let order = stack
                .order_once_known(&user, &ticket_id)
                .await
                .expect(StatusCode::CREATED, "order");
            (stack, user, ticket_id, system_tests::id_of(&order))
        });
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        World {
            runtime,
            stack,
            user,
            ticket_id,
            order_id,
            http,
        }
    })
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        prop_oneof![
            Just(1e308),
            Just(-1e308),
            Just(-0.0),
            Just(0.004),
            Just(1e-320)
        ]
        .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        "[0-9a-f]{24}".prop_map(Value::from),
        prop_oneof![
            Just("12.50"),
            Just("-5"),
            Just("NaN"),
            Just("Infinity"),
            Just("1e400"),
            Just(" 7 ")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(FIELDS).prop_map(str::to_owned),
                inner.clone(),
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
            prop::collection::btree_map(".{0,10}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum Body {
    None,
    Json(Value),
    Raw(Vec<u8>),
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        Just(Body::None),
        json_value().prop_map(Body::Json),
        prop::collection::btree_map(
            prop::sample::select(FIELDS).prop_map(str::to_owned),
            json_value(),
            1..5
        )
        .prop_map(|m| Body::Json(Value::Object(m.into_iter().collect()))),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Body::Raw),
    ]
}

#[derive(Debug, Clone)]
enum Id {
    Ticket,
    Order,
    Other(String),
}

fn id() -> impl Strategy<Value = Id> {
    prop_oneof![
        Just(Id::Ticket),
        Just(Id::Order),
        "[0-9a-f]{24}".prop_map(Id::Other),
        "[0-9A-Z]{24}".prop_map(Id::Other),
        ".{1,30}".prop_map(Id::Other),
        Just(Id::Other("..".into())),
        Just(Id::Other("%00".into())),
    ]
}

#[derive(Debug, Clone)]
enum Cookie {
    None,
    Valid,
    Garbage(String),
    ForgedToken,
}

fn cookie() -> impl Strategy<Value = Cookie> {
    prop_oneof![
        Just(Cookie::None),
        Just(Cookie::Valid),
        "[ -~]{0,60}".prop_map(Cookie::Garbage),
        Just(Cookie::ForgedToken),
    ]
}

fn content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop::sample::select(vec![
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ])
}

fn cookie_header(cookie: &Cookie, world: &World) -> Option<String> {
    match cookie {
        Cookie::None => None,
        Cookie::Valid => Some(world.user.cookie.clone()),
        Cookie::Garbage(text) => Some(format!("express:sess={text}")),
        Cookie::ForgedToken => {
            // A well-formed session whose token is signed with another key.
            let forged = "eyJhbGciOiJIUzI1NiJ9.eyJpZCI6IngiLCJlbWFpbCI6ImFAYi5jbyIsImlhdCI6MSwiZXhwIjo5OTk5OTk5OTk5fQ.c2lnbmF0dXJl";
            Some(format!("express:sess={}", base64_json(forged)))
        }
    }
}

fn base64_json(token: &str) -> String {
    use std::fmt::Write;
    // Standard base64 without a dependency: the cookie value is base64 of {"jwt":"..."}.
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = json!({ "jwt": token }).to_string().into_bytes();
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let _ = write!(
                    out,
                    "{}",
                    ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char
                );
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn address(world: &World, service: &str) -> std::net::SocketAddr {
    match service {
        "auth" => world.stack.auth,
        "tickets" => world.stack.tickets,
        "orders" => world.stack.orders,
        _ => world.stack.payments,
    }
}

/// Sends one generated request; the property holds if the answer is 2xx/4xx with the error shape.
fn check(
    route: usize,
    id: &Id,
    body: &Body,
    content_type: Option<&str>,
    cookie: &Cookie,
) -> Result<(), TestCaseError> {
    let world = world();
    let (method, service, template) = ROUTES[route];
    let mut url = url::Url::parse(&format!("http://{}/", address(world, service)))
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    {
        let mut segments = url
            .path_segments_mut()
            .map_err(|()| TestCaseError::fail("base url"))?;
        segments.clear();
        for segment in template.trim_start_matches('/').split('/') {
            if segment == "{id}" {
                segments.push(match id {
                    Id::Ticket => &world.ticket_id,
                    Id::Order => &world.order_id,
                    Id::Other(text) => text,
                });
            } else {
                segments.push(segment);
            }
        }
    }
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut request = world.http.request(method, url.clone());
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    if let Some(cookie) = cookie_header(cookie, world) {
        request = request.header("cookie", cookie);
    }
    request = match body {
        Body::None => request,
        Body::Json(value) => request.body(value.to_string()),
        Body::Raw(bytes) => request.body(bytes.clone()),
    };
    let (status, text) = world
        .runtime
        .block_on(async {
            let response = request
                .send()
                .await
                .map_err(|e| format!("no answer: {e}"))?;
            let status = response.status();
            let text = response
                .text()
                .await
                .map_err(|e| format!("unreadable answer: {e}"))?;
            Ok::<_, String>((status, text))
        })
        .map_err(TestCaseError::fail)?;
    prop_assert!(!status.is_server_error(), "{status} for {url}: {text}");
    if status.is_client_error() {
        let parsed: Value = serde_json::from_str(&text)
            .map_err(|_| TestCaseError::fail(format!("{status} for {url} is not JSON: {text}")))?;
        let errors = parsed["errors"].as_array().cloned().unwrap_or_default();
        prop_assert!(
            !errors.is_empty() && errors.iter().all(|e| e["message"].is_string()),
            "{status} for {url} without the error shape: {text}"
        );
    }
    Ok(())
}

#[test]
fn no_route_answers_a_5xx_or_leaves_the_error_shape_whatever_it_is_sent() {
    let cases = std::env::var("HOSTILE_INPUT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (0..ROUTES.len(), id(), body(), content_type(), cookie());
    runner
        .run(&strategy, |(route, id, body, content_type, cookie)| {
            check(route, &id, &body, content_type, &cookie)
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
}

#[test]
fn oversized_bodies_are_refused_with_413_in_the_error_shape() {
    let world = world();
    // Over the 64 KiB limit, yet small enough for the socket buffers: a multi-megabyte body can
    // meet the early 413 with a broken pipe while the client is still writing it.
    let huge = format!(
        "{{\"title\":\"{}\",\"price\":10}}",
        "x".repeat(common::server::BODY_LIMIT_BYTES + 16 * 1024)
    );
    for (service, path) in [
        ("auth", "/api/users/signup"),
        ("tickets", "/api/tickets"),
        ("orders", "/api/orders"),
        ("payments", "/api/payments"),
    ] {
        let url = format!("http://{}{path}", address(world, service));
        let (status, body) = world.runtime.block_on(async {
            let response = world
                .http
                .post(&url)
                .header("content-type", "application/json")
                .header("cookie", &world.user.cookie)
                .body(huge.clone())
                .send()
                .await
                .expect("an answer");
            (
                response.status(),
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        });
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{url}");
        assert_eq!(
            body,
            json!({ "errors": [{ "message": "Request body is too large" }] }),
            "{url}"
        );
    }
}
