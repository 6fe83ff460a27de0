use chrono::{Duration, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use wiremock::ResponseTemplate;
use wiremock::matchers::query_param;

use common::testing::{not_authorized, not_found};

use crate::helpers::{
    COOKIE_VALUE, ORDER_ID, Page, api_get, concert_order, errors, order, spawn_app,
    spawn_app_signed_in, spawn_app_signed_out, spawn_app_with_stripe, spawn_app_with_stripe_js,
    spawn_app_without_api, ticket,
};

const TICKET_A: &str = "64b7f0c2a1b2c3d4e5f6a001";
const TICKET_B: &str = "64b7f0c2a1b2c3d4e5f6a002";

#[tokio::test]
async fn the_home_page_lists_the_tickets_for_sale_with_the_signed_out_header() {
    let app = spawn_app_signed_out().await;
    app.given_tickets(
        200,
        json!([
            ticket(TICKET_A, "Concert", 12.5),
            ticket(TICKET_B, "Opera", 1000.0)
        ]),
    )
    .await;

    let page = app.get("/", None).await;

    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.content_type(), "text/html; charset=utf-8");
    page.assert_signed_out_header();
    page.assert_contains(&[
        "<title>Tickets · Ticketing System</title>",
        "<h1>Tickets</h1>",
        r#"<th scope="col">Title</th>"#,
        r#"<th scope="col" class="num">Price</th>"#,
        r#"<th scope="col">Link</th>"#,
        r#"<td class="ticket-title">Concert</td>"#,
        r#"<td class="ticket-price num">€12.50</td>"#,
        &format!(r#"<a href="/tickets/{TICKET_A}">View</a>"#),
        r#"<td class="ticket-title">Opera</td>"#,
        r#"<td class="ticket-price num">€1,000.00</td>"#,
        &format!(r#"<a href="/tickets/{TICKET_B}">View</a>"#),
    ]);
    page.assert_lacks(&["No tickets for sale"]);
}

#[tokio::test]
async fn the_home_page_shows_a_page_of_the_search_with_links_to_the_next_and_first_pages() {
    let app = spawn_app_signed_out().await;
    api_get("/api/tickets")
        .and(query_param("limit", "20"))
        .and(query_param("q", "rock & roll"))
        .and(query_param("after", TICKET_A))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([ticket(TICKET_B, "Rock & roll night", 20.0)]))
                .insert_header(
                    "link",
                    format!("</api/tickets?limit=20&after={TICKET_B}>; rel=\"next\""),
                ),
        )
        .mount(&app.api)
        .await;

    let page = app
        .get(&format!("/?q=+rock+%26+roll&after={TICKET_A}"), None)
        .await;

    assert_eq!(page.status, StatusCode::OK);
    page.assert_contains(&[
        r#"<label for="q">Search titles</label>"#,
        // askama escapes `&` as `&#38;`.
        r#"value="rock &#38; roll""#,
        r#"<td class="ticket-title">Rock &#38; roll night</td>"#,
        &format!(r#"href="/?q=rock+%26+roll&#38;after={TICKET_B}" id="next-page""#),
        r#"href="/?q=rock+%26+roll" id="first-page""#,
    ]);
}

#[tokio::test]
async fn a_search_that_finds_nothing_says_so_and_offers_no_pages() {
    let app = spawn_app_signed_out().await;
    api_get("/api/tickets")
        .and(query_param("q", "jazz"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&app.api)
        .await;

    let page = app.get("/?q=jazz&after=not-an-id", None).await;

    assert_eq!(page.status, StatusCode::OK);
    page.assert_contains(&["No tickets for sale match “jazz”."]);
    page.assert_lacks(&["next-page", "first-page"]);
}

#[tokio::test]
async fn an_empty_ticket_list_says_there_is_nothing_for_sale() {
    let app = spawn_app_signed_out().await;
    app.given_tickets(200, json!([])).await;

    let page = app.get("/", None).await;

    assert_eq!(page.status, StatusCode::OK);
    page.assert_contains(&[r#"id="tickets-table""#, "No tickets for sale right now."]);
}

#[tokio::test]
async fn a_signed_in_visitor_gets_the_account_links_because_the_browser_cookie_reaches_the_api() {
    let app = spawn_app_signed_in().await;
    app.given_tickets(200, json!([])).await;

    let page = app.get("/", Some(COOKIE_VALUE)).await;

    assert_eq!(page.status, StatusCode::OK);
    page.assert_signed_in_header();
    page.assert_contains(&["buyer@test.com"]);
    for api_path in ["/api/users/currentuser", "/api/tickets"] {
        app.assert_called_once_with_the_session(api_path, "must see the browser's cookie")
            .await;
    }
}

#[tokio::test]
async fn cookies_the_api_sets_while_a_page_loads_are_passed_back_to_the_browser() {
    let app = spawn_app().await;
    api_get("/api/users/currentuser")
        .respond_with(
            ResponseTemplate::new(200)
                .append_header(
                    "set-cookie",
                    "express:sess=; path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT; httponly",
                )
                .set_body_json(json!({ "currentUser": null })),
        )
        .mount(&app.api)
        .await;
    app.given_tickets(200, json!([])).await;

    let page = app.get("/", Some("express:sess=expired")).await;

    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(
        page.set_cookies(),
        ["express:sess=; path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT; httponly"]
    );
}

#[tokio::test]
async fn protected_pages_send_anonymous_visitors_to_sign_in() {
    let app = spawn_app_signed_out().await;

    for page_path in [
        "/tickets/new",
        "/tickets/mine",
        "/orders",
        &format!("/orders/{ORDER_ID}"),
    ] {
        let page = app.get(page_path, None).await;
        page.assert_redirect("/auth/signin");
    }
    assert!(
        app.requests_to("/api/orders").await.is_empty(),
        "no order is asked for on behalf of an anonymous visitor"
    );
    assert!(
        app.requests_to("/api/tickets").await.is_empty(),
        "no one's tickets are asked for on behalf of an anonymous visitor"
    );
}

#[tokio::test]
async fn the_ticket_page_shows_title_price_and_a_purchase_button_to_a_signed_in_visitor() {
    let app = spawn_app_signed_in().await;
    app.given_ticket(TICKET_A, 200, ticket(TICKET_A, "Concert", 20.0))
        .await;

    let page = app
        .get(&format!("/tickets/{TICKET_A}"), Some(COOKIE_VALUE))
        .await;

    assert_eq!(page.status, StatusCode::OK);
    page.assert_signed_in_header();
    page.assert_contains(&[
        "<title>Concert · Ticketing System</title>",
        r#"<h1 id="ticket-title">Concert</h1>"#,
        r#"<p class="price" id="ticket-price">Price: €20.00</p>"#,
        &format!(r#"<form id="purchase-form" method="post" action="/tickets/{TICKET_A}""#),
        r#"<button type="submit" class="button" id="purchase-button">Purchase</button>"#,
    ]);
    page.assert_lacks(&["Oh snap!"]);
}

#[tokio::test]
async fn a_reserved_or_sold_ticket_offers_no_purchase_and_its_holder_gets_a_link_to_the_order() {
    // Someone else's order: the orders API does not show it to this viewer.
    let page = page_of_a_ticket_held_by(401, not_authorized()).await;

    assert_eq!(page.status, StatusCode::OK);
    page.assert_contains(&[
        "Price: €20.00",
        r#"id="ticket-taken">This ticket is reserved or sold."#,
    ]);
    page.assert_lacks(&["purchase-form", "purchase-button", "own-order-link"]);

    // The holder sees the way to its order instead.
    let expires_at = Utc::now() + Duration::minutes(1);
    let page = page_of_a_ticket_held_by(
        200,
        order(HOLDING_ORDER, "created", expires_at, "Concert", 20.0),
    )
    .await;

    page.assert_contains(&[&format!(
        r#"<a class="button" href="/orders/{HOLDING_ORDER}" id="own-order-link">Go to your order</a>"#
    )]);
    page.assert_lacks(&["purchase-form"]);
}

const HOLDING_ORDER: &str = "64b7f0c2a1b2c3d4e5f6b0aa";

/// The page of ticket A, held by [`HOLDING_ORDER`], which the orders API answers to the signed-in
/// viewer with `status` and `holding_order`.
async fn page_of_a_ticket_held_by(status: u16, holding_order: Value) -> Page {
    let app = spawn_app_signed_in().await;
    let mut taken = ticket(TICKET_A, "Concert", 20.0);
    taken["orderId"] = json!(HOLDING_ORDER);
    app.given_ticket(TICKET_A, 200, taken).await;
    app.given_order(HOLDING_ORDER, status, holding_order).await;
    app.get(&format!("/tickets/{TICKET_A}"), Some(COOKIE_VALUE))
        .await
}

#[tokio::test]
async fn a_signed_out_visitor_is_invited_to_sign_in_instead_of_purchasing() {
    let app = spawn_app_signed_out().await;
    app.given_ticket(TICKET_A, 200, ticket(TICKET_A, "Concert", 20.0))
        .await;

    let page = app.get(&format!("/tickets/{TICKET_A}"), None).await;

    assert_eq!(page.status, StatusCode::OK);
    page.assert_contains(&["Price: €20.00", r#"id="signin-to-purchase""#]);
    page.assert_lacks(&["purchase-form"]);
}

#[tokio::test]
async fn a_malformed_id_is_a_404_without_being_spliced_into_an_api_url() {
    let app = spawn_app_signed_in().await;

    for page_path in [
        "/tickets/not-an-id",
        "/tickets/..%2Fusers%2Fsignout",
        "/orders/64B7F0C2A1B2C3D4E5F6B001",
    ] {
        let page = app.get(page_path, Some(COOKIE_VALUE)).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{page_path}");
        page.assert_contains(&["<h1>Page not found</h1>"]);
    }
    let asked: Vec<String> = app
        .requests()
        .await
        .iter()
        .map(|r| r.url.path().to_owned())
        .filter(|p| p != "/api/users/currentuser")
        .collect();
    assert!(asked.is_empty(), "the API was asked for {asked:?}");
}

#[tokio::test]
async fn my_orders_shows_each_orders_ticket_price_state_in_words_and_the_time_to_pay_by() {
    let app = spawn_app_signed_in().await;
    let later = Utc::now() + Duration::seconds(600);
    let earlier = Utc::now() - Duration::seconds(60);
    let mut refunded = order(
        "64b7f0c2a1b2c3d4e5f6b004",
        "cancelled",
        earlier,
        "Ballet",
        7.0,
    );
    refunded["refunded"] = json!(true);
    app.given_get(
        "/api/orders",
        200,
        json!([
            order(ORDER_ID, "complete", earlier, "Concert", 20.0),
            order(
                "64b7f0c2a1b2c3d4e5f6b002",
                "cancelled",
                earlier,
                "Opera",
                5.0
            ),
            order(
                "64b7f0c2a1b2c3d4e5f6b003",
                "created",
                later,
                "Jazz & blues",
                1250.0
            ),
            refunded,
        ]),
    )
    .await;

    let page = app.get("/orders", Some(COOKIE_VALUE)).await;

    assert_eq!(page.status, StatusCode::OK);
    page.assert_signed_in_header();
    let pay_by = later.format("%H:%M UTC").to_string();
    let datetime = later.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    page.assert_contains(&[
        "<title>My Orders · Ticketing System</title>",
        &format!(r#"<a class="row-title" href="/orders/{ORDER_ID}">Concert</a>"#),
        r#"<span class="row-price">€20.00</span>"#,
        r#"<span class="badge badge-paid">Paid</span>"#,
        r#"<a class="row-title" href="/orders/64b7f0c2a1b2c3d4e5f6b002">Opera</a>"#,
        r#"<span class="badge badge-expired">Expired</span>"#,
        r#"data-order-id="64b7f0c2a1b2c3d4e5f6b003" data-status="created""#,
        r#">Jazz &#38; blues</a>"#,
        r#"<span class="row-price">€1,250.00</span>"#,
        r#"<span class="badge badge-payable">Awaiting payment</span>"#,
        &format!(
            r#"<span class="row-time">Pay by <time datetime="{datetime}">{pay_by}</time></span>"#
        ),
        r#"<span class="badge badge-cancelled">Cancelled, payment refunded</span>"#,
    ]);
    // Only the order awaiting payment has a time to pay by.
    assert_eq!(page.html.matches("<time ").count(), 1, "{}", page.html);
    let requests = app.requests_to("/api/orders").await;
    assert_eq!(
        requests[0]
            .headers
            .get("cookie")
            .and_then(|v| v.to_str().ok()),
        Some(COOKIE_VALUE)
    );
}

#[tokio::test]
async fn my_orders_without_any_order_points_to_the_tickets() {
    let app = spawn_app_signed_in().await;
    app.given_get("/api/orders", 200, json!([])).await;

    let page = app.get("/orders", Some(COOKIE_VALUE)).await;

    assert_eq!(page.status, StatusCode::OK);
    page.assert_contains(&[r#"id="no-orders""#, r#"<a href="/">Find a ticket</a>"#]);
    page.assert_lacks(&["orders-list"]);
}

#[tokio::test]
async fn a_pending_order_counts_down_and_pays_with_the_test_token_without_a_stripe_key() {
    let app = spawn_app().await;
    let expires_at = Utc::now() + Duration::milliseconds(45_300);

    let page = app
        .order_page(order(ORDER_ID, "created", expires_at, "Concert", 12.5))
        .await;

    assert_eq!(page.status, StatusCode::OK);
    // Rounded to whole seconds; the request itself takes a moment, so allow 44 or 45.
    let counted = ["44", "45"].iter().any(|n| {
        page.html.contains(&format!(
            r#"data-seconds-left="{n}">Time left to pay: {n} seconds.</p>"#
        ))
    });
    assert!(counted, "no countdown in:\n{}", page.html);
    page.assert_contains(&[
        r#"id="order-status""#,
        r#"<dd id="order-state">Awaiting payment</dd>"#,
        "€12.50 <span class=\"currency\">EUR</span>",
        &format!(r#"<form id="pay-form" method="post" action="/orders/{ORDER_ID}""#),
        r#"<input type="hidden" name="token" id="pay-token" value="tok_visa">"#,
        r#"<button type="submit" class="button" id="pay-button">Pay €12.50</button>"#,
        r#"<script src="/static/order.js" defer></script>"#,
    ]);
    page.assert_lacks(&["js.stripe.com", "card-element", "Order expired."]);
}

#[tokio::test]
async fn with_a_publishable_key_the_order_page_pays_with_stripe_js_and_its_card_element() {
    let app = spawn_app_with_stripe("pk_test_publishable").await;

    let page = app.order_page(concert_order("created", 50)).await;

    assert_eq!(page.status, StatusCode::OK);
    page.assert_contains(&[
        r#"<script src="https://js.stripe.com/v3/" defer></script>"#,
        r#"<script src="/static/order.js" defer></script>"#,
        r#"data-stripe-key="pk_test_publishable""#,
        &format!(r#"data-intent-url="/orders/{ORDER_ID}/intent""#),
        r#"<div class="field" role="group" aria-labelledby="card-label">"#,
        r#"<div id="card-element" class="card-input"></div>"#,
        r#"name="csrf_token""#,
    ]);
    page.assert_lacks(&["tok_visa", "checkout.stripe.com", r#"name="token""#]);
}

#[tokio::test]
async fn the_order_page_loads_stripe_js_from_the_configured_address_which_the_policy_allows() {
    let app =
        spawn_app_with_stripe_js("pk_test_publishable", "http://127.0.0.1:9/stripe-stub.js").await;

    let page = app.order_page(concert_order("created", 50)).await;

    page.assert_contains(&[r#"<script src="http://127.0.0.1:9/stripe-stub.js" defer></script>"#]);
    let csp = page
        .headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        csp.contains("script-src 'self' https://js.stripe.com http://127.0.0.1:9;"),
        "{csp}"
    );
}

#[tokio::test]
async fn an_order_past_its_expiry_says_order_expired_and_cannot_be_paid() {
    let app = spawn_app().await;

    let page = app.order_page(concert_order("created", -3)).await;

    assert_eq!(page.status, StatusCode::OK);
    page.assert_contains(&[r#"id="order-status" role="status">Order expired.</p>"#]);
    page.assert_lacks(&["Time left to pay", "pay-form", "order.js"]);
}

#[tokio::test]
async fn a_paid_order_says_so_and_offers_no_payment() {
    let app = spawn_app().await;

    let page = app.order_page(concert_order("complete", -30)).await;

    page.assert_contains(&[
        r#"id="order-status" role="status">Order paid.</p>"#,
        r#"<dd id="order-state">Paid</dd>"#,
    ]);
    page.assert_lacks(&["pay-form", "Order expired."]);
}

#[tokio::test]
async fn a_cancelled_order_whose_charge_was_refunded_says_so() {
    let app = spawn_app().await;
    let mut refunded = concert_order("cancelled", -30);
    refunded["refunded"] = serde_json::json!(true);

    let page = app.order_page(refunded).await;

    page.assert_contains(&[
        r#"id="order-status" role="status">Order cancelled. Your payment was refunded.</p>"#,
    ]);
    page.assert_lacks(&["pay-form", "Order expired."]);
}

#[tokio::test]
async fn an_unknown_ticket_and_another_users_order_render_the_html_404_page() {
    let app = spawn_app_signed_in().await;
    app.given_ticket(TICKET_A, 404, not_found()).await;
    // Someone else's order: the orders API does not show it to this viewer.
    app.given_order(ORDER_ID, 401, not_authorized()).await;

    for page_path in [
        format!("/tickets/{TICKET_A}"),
        format!("/orders/{ORDER_ID}"),
    ] {
        let page = app.get(&page_path, Some(COOKIE_VALUE)).await;

        assert_eq!(page.status, StatusCode::NOT_FOUND, "{page_path}");
        assert_eq!(
            page.content_type(),
            "text/html; charset=utf-8",
            "{page_path}"
        );
        page.assert_contains(&["<h1>Page not found</h1>"]);
        page.assert_signed_in_header();
    }
}

#[tokio::test]
async fn unknown_paths_and_methods_render_the_html_404_page() {
    let app = spawn_app_signed_in().await;

    let page = app.get("/no/such/page", Some(COOKIE_VALUE)).await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert_eq!(page.content_type(), "text/html; charset=utf-8");
    page.assert_contains(&["<title>Page not found · Ticketing System</title>", "404"]);
    page.assert_signed_in_header();

    let put = app.send(app.browser.put(app.url("/orders"))).await;
    assert_eq!(put.status, StatusCode::NOT_FOUND);
    put.assert_contains(&["<h1>Page not found</h1>"]);
}

#[tokio::test]
async fn user_supplied_text_is_escaped_in_the_html() {
    let app = spawn_app_signed_out().await;
    app.given_tickets(
        200,
        json!([ticket(TICKET_A, "<script>alert(1)</script>", 1.0)]),
    )
    .await;

    let page = app.get("/", None).await;

    page.assert_lacks(&["<script>alert(1)</script>"]);
    page.assert_contains(&["&#60;script&#62;alert(1)&#60;/script&#62;"]);
}

#[tokio::test]
async fn when_the_api_is_unreachable_pages_answer_a_friendly_503() {
    let app = spawn_app_without_api().await;

    for page_path in ["/", "/auth/signin", "/orders"] {
        let page = app.get(page_path, Some(COOKIE_VALUE)).await;
        assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE, "{page_path}");
        assert_eq!(page.content_type(), "text/html; charset=utf-8");
        page.assert_contains(&[
            "<h1>We&#39;ll be right back</h1>",
            "The ticketing service is not answering right now.",
        ]);
        // The header cannot know who is looking: the brand only.
        page.assert_lacks(&["Sign In</a>", "Sign Out</a>"]);
    }
    let form = app
        .post_credentials("/auth/signin", "a@b.co", "secret")
        .await;
    assert_eq!(form.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn when_the_api_fails_pages_answer_a_friendly_502() {
    let app = spawn_app_signed_out().await;
    app.given_tickets(500, errors(&[("Something went wrong", None)]))
        .await;
    app.given_ticket(TICKET_A, 200, json!({ "unexpected": true }))
        .await;

    for page_path in ["/".to_owned(), format!("/tickets/{TICKET_A}")] {
        let page = app.get(&page_path, None).await;
        assert_eq!(page.status, StatusCode::BAD_GATEWAY, "{page_path}");
        page.assert_contains(&["<h1>Something went wrong on our side</h1>"]);
    }
}

#[tokio::test]
async fn an_api_503_is_passed_on_as_a_friendly_503() {
    let app = spawn_app_signed_out().await;
    app.given_tickets(503, errors(&[("Error connecting to database", None)]))
        .await;

    let page = app.get("/", None).await;

    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
    page.assert_contains(&["We&#39;ll be right back"]);
    page.assert_signed_out_header();
}

#[tokio::test]
async fn the_stylesheet_and_scripts_are_served_by_the_client_itself() {
    let app = spawn_app().await;

    for (asset, content_type, fragment) in [
        ("/static/app.css", "text/css; charset=utf-8", ".navbar"),
        (
            "/static/forms.js",
            "text/javascript; charset=utf-8",
            "toFixed(2)",
        ),
        (
            "/static/order.js",
            "text/javascript; charset=utf-8",
            "Order expired.",
        ),
    ] {
        let page = app.get(asset, None).await;
        assert_eq!(page.status, StatusCode::OK, "{asset}");
        assert_eq!(page.content_type(), content_type, "{asset}");
        page.assert_contains(&[fragment]);
    }
    assert!(app.requests().await.is_empty(), "assets need no API call");
}

#[tokio::test]
async fn pages_forbid_framing_and_foreign_scripts() {
    let app = spawn_app_signed_out().await;

    let page = app.get("/auth/signup", None).await;

    let header = |name: &str| {
        page.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header("x-frame-options"), "DENY");
    assert_eq!(header("x-content-type-options"), "nosniff");
    let csp = header("content-security-policy");
    assert!(
        csp.contains("script-src 'self' https://js.stripe.com;"),
        "{csp}"
    );
    assert!(
        csp.contains("frame-src https://js.stripe.com https://hooks.stripe.com;"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(
        !header("x-request-id").is_empty(),
        "every answer carries a request id"
    );
}

#[tokio::test]
async fn health_is_always_ok_and_readiness_follows_the_api() {
    let app = spawn_app().await;
    let health = app.get("/healthz", None).await;
    assert_eq!(
        (health.status, health.html.as_str()),
        (StatusCode::OK, r#"{"status":"ok"}"#)
    );
    // Any HTTP answer counts, even an error: the ingress is there.
    api_get("/api/users/currentuser")
        .respond_with(ResponseTemplate::new(503))
        .mount(&app.api)
        .await;
    let ready = app.get("/readyz", None).await;
    assert_eq!(
        (ready.status, ready.html.as_str()),
        (StatusCode::OK, r#"{"status":"ready"}"#)
    );

    let down = spawn_app_without_api().await;
    let ready = down.get("/readyz", None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        ready.html,
        r#"{"errors":[{"message":"api is not reachable"}]}"#
    );
    assert_eq!(down.get("/healthz", None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_order_page_says_what_the_latest_payment_means_for_the_buyer() {
    for (case, order_status, seconds, payment, shown, absent) in [
        (
            "being confirmed: no second payment is offered",
            "created",
            50,
            "unknown",
            "Your payment is being confirmed. You will not be charged twice;",
            vec![r#"id="pay-form""#, "Time left to pay"],
        ),
        (
            "charged, not yet known to orders: no second payment either",
            "created",
            50,
            "succeeded",
            "Your payment is being confirmed.",
            vec![r#"id="pay-form""#],
        ),
        (
            "failed: the buyer may pay again",
            "created",
            50,
            "failed",
            "Your last payment did not go through. You can pay again.",
            vec![],
        ),
        (
            "cancelled while charged: the refund is on its way",
            "cancelled",
            50,
            "refunding",
            "Your payment is being refunded.",
            vec![r#"id="pay-form""#],
        ),
    ] {
        let app = spawn_app().await;
        app.given_get(
            &format!("/api/payments/{ORDER_ID}"),
            200,
            json!({"orderId": ORDER_ID, "status": payment, "attempts": 1}),
        )
        .await;

        let page = app.order_page(concert_order(order_status, seconds)).await;

        assert_eq!(page.status, StatusCode::OK, "{case}");
        assert!(page.html.contains(shown), "{case}: {shown:?} missing");
        for text in absent {
            assert!(!page.html.contains(text), "{case}: {text:?} shown");
        }
    }
}

#[tokio::test]
async fn the_order_page_still_works_when_the_payment_state_cannot_be_read() {
    let app = spawn_app().await;
    app.given_get(&format!("/api/payments/{ORDER_ID}"), 503, json!({}))
        .await;

    let page = app.order_page(concert_order("created", 50)).await;

    assert_eq!(page.status, StatusCode::OK);
    page.assert_contains(&[r#"id="pay-form""#, "Time left to pay"]);
    page.assert_lacks(&["payment-note"]);
}

#[tokio::test]
async fn my_tickets_lists_the_sellers_tickets_with_price_and_whether_each_is_for_sale_or_held() {
    let app = spawn_app_signed_in().await;
    let mut held = ticket(TICKET_B, "Opera & more", 1000.0);
    held["orderId"] = json!(ORDER_ID);
    api_get("/api/tickets")
        .and(query_param("mine", "true"))
        .and(query_param("limit", "20"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([ticket(TICKET_A, "Concert", 12.5), held]))
                .insert_header(
                    "link",
                    format!("</api/tickets?mine=true&limit=20&after={TICKET_B}>; rel=\"next\""),
                ),
        )
        .mount(&app.api)
        .await;

    let page = app.get("/tickets/mine", Some(COOKIE_VALUE)).await;

    assert_eq!(page.status, StatusCode::OK, "{}", page.html);
    page.assert_signed_in_header();
    page.assert_contains(&[
        "<title>My Tickets · Ticketing System</title>",
        "<h1>My Tickets</h1>",
        &format!(r#"<a class="row-title" href="/tickets/{TICKET_A}">Concert</a>"#),
        r#"<span class="row-price">€12.50</span>"#,
        r#"<span class="badge badge-available">For sale</span>"#,
        &format!(r#"<a class="row-title" href="/tickets/{TICKET_B}">Opera &#38; more</a>"#),
        r#"<span class="row-price">€1,000.00</span>"#,
        r#"<span class="badge badge-reserved">Reserved or sold</span>"#,
        r#"id="held-hint""#,
        &format!(r#"<a href="/tickets/mine?after={TICKET_B}" id="next-page" rel="next">"#),
    ]);
    page.assert_lacks(&["first-page", "no-tickets"]);
    app.assert_called_once_with_the_session(
        "/api/tickets",
        "the API must see whose tickets to list",
    )
    .await;
}

#[tokio::test]
async fn a_later_page_of_my_tickets_asks_after_the_last_one_and_links_back_to_the_first() {
    let app = spawn_app_signed_in().await;
    api_get("/api/tickets")
        .and(query_param("mine", "true"))
        .and(query_param("after", TICKET_A))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!([ticket(TICKET_B, "Opera", 5.0)])),
        )
        .mount(&app.api)
        .await;

    let page = app
        .get(
            &format!("/tickets/mine?after={TICKET_A}"),
            Some(COOKIE_VALUE),
        )
        .await;

    assert_eq!(page.status, StatusCode::OK, "{}", page.html);
    page.assert_contains(&[
        ">Opera</a>",
        r#"<a href="/tickets/mine" id="first-page">First page</a>"#,
    ]);
    page.assert_lacks(&["next-page"]);

    // An edited address starts from the first page.
    app.given_tickets(200, json!([])).await;
    let page = app
        .get("/tickets/mine?after=..%2Fusers", Some(COOKIE_VALUE))
        .await;
    assert_eq!(page.status, StatusCode::OK);
    let asked: Vec<Option<String>> = app
        .requests_to("/api/tickets")
        .await
        .iter()
        .map(|r| {
            r.url
                .query_pairs()
                .find(|(k, _)| k == "after")
                .map(|(_, v)| v.into_owned())
        })
        .collect();
    assert_eq!(asked, [Some(TICKET_A.to_owned()), None]);
}

#[tokio::test]
async fn a_seller_without_tickets_is_offered_to_sell_one() {
    let app = spawn_app_signed_in().await;
    app.given_tickets(200, json!([])).await;

    let page = app.get("/tickets/mine", Some(COOKIE_VALUE)).await;

    assert_eq!(page.status, StatusCode::OK);
    page.assert_contains(&[
        r#"id="no-tickets">You are not selling any tickets yet.</p>"#,
        r#"<a class="button" href="/tickets/new" id="sell-another">Sell a ticket</a>"#,
    ]);
    page.assert_lacks(&["my-tickets-list", "next-page"]);
}

#[tokio::test]
async fn my_tickets_sends_the_visitor_to_sign_in_when_the_api_says_the_session_ended() {
    let app = spawn_app_signed_in().await;
    app.given_tickets(401, not_authorized()).await;

    let page = app.get("/tickets/mine", Some(COOKIE_VALUE)).await;

    page.assert_redirect("/auth/signin");
}
