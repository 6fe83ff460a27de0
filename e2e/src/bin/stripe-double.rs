//! The ledger-keeping Stripe double (`common::testing::stripe_double`) as a process, for the
//! browser tests: payments talks to it instead of Stripe (charges, PaymentIntents, refunds), and
//! it serves the stub of Stripe.js the order page loads (`/stripe-stub.js`) and the stub's 3-D
//! Secure answers (`POST /test/3ds/{intent}/pass|fail`), so the page's checkout runs end to end
//! without a Stripe account.
//!
//! `STRIPE_DOUBLE_ADDR` (default `127.0.0.1:12199`) is where it listens; it runs until SIGTERM or
//! Ctrl-C.

use std::net::TcpListener;

use anyhow::Context as _;
use common::testing::stripe_double::StripeDouble;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const STUB: &str = include_str!("../../static/stripe-stub.js");

/// The stub's 3-D Secure: passes or fails the intent's authentication at the double.
struct Authenticate(StripeDouble);

impl Respond for Authenticate {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let segments: Vec<&str> = request
            .url
            .path_segments()
            .map(Iterator::collect)
            .unwrap_or_default();
        let (intent, passes) = match segments.as_slice() {
            ["test", "3ds", intent, "pass"] => (*intent, true),
            ["test", "3ds", intent, "fail"] => (*intent, false),
            _ => return ResponseTemplate::new(404),
        };
        let done = self.0.authenticate(intent, passes);
        // Called by the page's script, from the app's origin.
        ResponseTemplate::new(if done { 200 } else { 409 })
            .insert_header("access-control-allow-origin", "*")
            .set_body_json(serde_json::json!({ "authenticated": done }))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::var("STRIPE_DOUBLE_ADDR").unwrap_or_else(|_| "127.0.0.1:12199".into());
    let listener = TcpListener::bind(&addr).with_context(|| format!("binding {addr}"))?;
    let server = MockServer::builder().listener(listener).start().await;
    let double = StripeDouble::mount(&server).await;
    Mock::given(method("GET"))
        .and(path("/stripe-stub.js"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "text/javascript; charset=utf-8")
                .set_body_string(STUB),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/test/3ds/[^/]+/(pass|fail)$"))
        .respond_with(Authenticate(double))
        .mount(&server)
        .await;
    println!("Stripe double listening on http://{addr}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
