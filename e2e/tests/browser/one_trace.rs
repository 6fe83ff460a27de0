//! One purchase is one trace: a buyer's calls that carry a W3C `traceparent` (through the proxy,
//! as a browser's or a gateway's would), and everything they set off in other services through
//! events, log the same trace id, in the log of every service that took part (`scripts/app.sh`
//! writes each service's JSON lines to `$LOG_DIR/<service>.log`).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::browser::{setting, unique};

/// How long the events of the purchase may take to reach every service and its log.
const PATIENCE: Duration = Duration::from_secs(20);

/// A caller of the API through the proxy, with a cookie jar, from an address of its own (auth
/// limits sign-ups per address; the other tests use theirs).
fn caller() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5)))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// A `traceparent` of `trace_id` with a fresh parent span id, as a new span of the caller's.
fn traceparent(trace_id: &str) -> String {
    let span_id = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace_id}-{span_id}-01")
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
    trace_id: Option<&str>,
) -> (u16, Value) {
    let mut request = http.request(method.clone(), url);
    if let Some(trace_id) = trace_id {
        request = request.header("traceparent", traceparent(trace_id));
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|err| panic!("{method} {url}: {err}"));
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Posts `body` in the trace `trace_id` again every 250 ms while the answer's status is one of
/// `not_yet` (what the service answers before an event has reached it), for up to [`PATIENCE`].
async fn post_while(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    trace_id: &str,
    not_yet: &[u16],
) -> (u16, Value) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let answer = call(
            http,
            reqwest::Method::POST,
            url,
            Some(body.clone()),
            Some(trace_id),
        )
        .await;
        if !not_yet.contains(&answer.0) || Instant::now() >= deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn sign_up(http: &reqwest::Client, app: &str) {
    let email = format!("{}@test.com", unique("traced"));
    let (status, body) = call(
        http,
        reqwest::Method::POST,
        &format!("{app}/api/users/signup"),
        Some(json!({ "email": email, "password": "password1" })),
        None,
    )
    .await;
    assert_eq!(status, 201, "sign-up: {body}");
}

/// The log lines of `service` that carry `trace_id`.
fn traced_lines(service: &str, trace_id: &str) -> Vec<Value> {
    let file = PathBuf::from(setting("LOG_DIR")).join(format!("{service}.log"));
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|err| panic!("reading {}: {err}", file.display()));
    text.lines()
        .filter(|line| line.contains(trace_id))
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["trace_id"] == trace_id)
        .collect()
}

/// What a service must have logged in the trace: a message, in a span of a name (`request` for
/// an HTTP request, `event` for an event handled, or a handler's own).
struct Expected {
    service: &'static str,
    message: &'static str,
    span: &'static str,
}

fn logged(lines: &[Value], expected: &Expected) -> bool {
    lines.iter().any(|line| {
        line["fields"]["message"] == expected.message && line["span"]["name"] == expected.span
    })
}

#[tokio::test]
async fn one_purchase_is_one_trace_id_in_the_logs_of_every_service_it_touched() {
    let app = setting("APP_URL").trim_end_matches('/').to_owned();
    let trace_id = uuid::Uuid::new_v4().simple().to_string();

    let seller = caller();
    sign_up(&seller, &app).await;
    let (status, ticket) = call(
        &seller,
        reqwest::Method::POST,
        &format!("{app}/api/tickets"),
        Some(json!({ "title": unique("Traced gig"), "price": 12 })),
        None,
    )
    .await;
    assert_eq!(status, 201, "{ticket}");

    // The purchase: every call of the buyer carries the same trace id.
    let buyer = caller();
    sign_up(&buyer, &app).await;
    // Orders learns of the ticket through `ticket:created`: until then it is unknown there.
    let (status, order) = post_while(
        &buyer,
        &format!("{app}/api/orders"),
        &json!({ "ticketId": ticket["id"] }),
        &trace_id,
        &[404],
    )
    .await;
    assert_eq!(status, 201, "ordering: {status} {order}");
    let order_id = order["id"].as_str().expect("an order id").to_owned();

    // Payments learns of the order through `order:created`: until then the order is unknown there.
    let (status, payment) = post_while(
        &buyer,
        &format!("{app}/api/payments"),
        &json!({ "orderId": order_id, "token": "tok_visa" }),
        &trace_id,
        &[404, 409],
    )
    .await;
    assert!(matches!(status, 201 | 202), "paying: {status} {payment}");
    // The order page through the client: its calls to the APIs carry the page request's trace.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, page) = call(
            &buyer,
            reqwest::Method::GET,
            &format!("{app}/orders/{order_id}"),
            None,
            Some(&trace_id),
        )
        .await;
        assert_eq!(status, 200, "the order page: {page}");
        if page
            .as_str()
            .is_some_and(|html| html.contains("Order paid."))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the order never became paid: {page}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let expected = [
        // The order, its `order:created`, and the `payment:created` that completes it.
        Expected {
            service: "orders",
            message: "order created",
            span: "create_order",
        },
        Expected {
            service: "orders",
            message: "order paid",
            span: "event",
        },
        // `order:created` reserves the ticket and schedules the expiry.
        Expected {
            service: "tickets",
            message: "ticket reserved",
            span: "event",
        },
        Expected {
            service: "expiration",
            message: "expiry scheduled",
            span: "event",
        },
        // The payment, charged on a task of its own.
        Expected {
            service: "payments",
            message: "order paid",
            span: "create_payment",
        },
        Expected {
            service: "payments",
            message: "request answered",
            span: "request",
        },
        // The page, and the orders API call it made.
        Expected {
            service: "client",
            message: "request answered",
            span: "request",
        },
        Expected {
            service: "orders",
            message: "request answered",
            span: "request",
        },
    ];
    let deadline = Instant::now() + PATIENCE;
    loop {
        let missing: Vec<String> = expected
            .iter()
            .filter(|e| !logged(&traced_lines(e.service, &trace_id), e))
            .map(|e| format!("{}: {:?} in a {:?} span", e.service, e.message, e.span))
            .collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let seen: Vec<String> = ["client", "orders", "tickets", "payments", "expiration"]
                .iter()
                .map(|s| format!("{s}: {:#?}", traced_lines(s, &trace_id)))
                .collect();
            panic!(
                "trace {trace_id} is missing from the logs: {missing:#?}\nlines of the trace:\n{}",
                seen.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The order's own request too, by its path.
    let orders_lines = traced_lines("orders", &trace_id);
    assert!(
        orders_lines
            .iter()
            .any(|line| line["span"]["name"] == "request" && line["span"]["path"] == "/api/orders"),
        "{orders_lines:#?}"
    );
}
