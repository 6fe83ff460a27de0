use chrono::{Duration, Utc};
use reqwest::StatusCode;
use serde_json::json;
use wiremock::matchers::{body_json, header};
use wiremock::{MockBuilder, ResponseTemplate};

use common::testing::{not_authorized, not_found};

use crate::helpers::{
    CLIENT_ADDRESS_KEY, COOKIE_VALUE, ORDER_ID, Page, TICKET_ID, TestApp, api_post, concert_order,
    errors, order, spawn_app, spawn_app_signed_in, spawn_app_signed_out, spawn_app_with_csrf_key,
    ticket,
};

const SESSION: &str =
    "express:sess=eyJqd3QiOiJuZXcifQ==; path=/; max-age=86400; samesite=lax; httponly";
const CLEARED: &str = "express:sess=; path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT; httponly";

#[tokio::test]
async fn signing_up_posts_json_to_the_api_and_hands_its_session_cookie_to_the_browser() {
    let app = spawn_app().await;
    api_post("/api/users/signup")
        .and(header("content-type", "application/json"))
        .and(body_json(
            json!({ "email": "new@test.com", "password": "password" }),
        ))
        .respond_with(with_session(
            201,
            json!({ "email": "new@test.com", "id": "64b7f0c2a1b2c3d4e5f60001" }),
        ))
        .expect(1)
        .mount(&app.api)
        .await;

    lands_home_with_the_session(&app, "/auth/signup", "new@test.com").await;
    app.api.verify().await;
}

#[tokio::test]
async fn the_signup_and_signin_forms_post_email_and_password_to_the_client() {
    let app = spawn_app_signed_out().await;

    for (page_path, heading, form_id) in [
        ("/auth/signup", "Sign Up", "signup-form"),
        ("/auth/signin", "Sign In", "signin-form"),
    ] {
        let page = app.get(page_path, None).await;
        assert_eq!(page.status, StatusCode::OK, "{page_path}");
        page.assert_signed_out_header();
        page.assert_contains(&[
            &format!("<title>{heading} · Ticketing System</title>"),
            &format!("<h1>{heading}</h1>"),
            &format!(
                r#"<form class="card form" id="{form_id}" method="post" action="{page_path}""#
            ),
            r#"<label for="email">Email Address</label>"#,
            r#"<input id="email" name="email" type="email" value="""#,
            r#"<label for="password">Password</label>"#,
            r#"<input id="password" name="password" type="password" value="""#,
            &format!(r#"id="{form_id}-button">{heading}</button>"#),
        ]);
        page.assert_lacks(&["Oh snap!"]);
    }
}

#[tokio::test]
async fn a_rejected_signup_shows_every_message_next_to_its_field_and_keeps_the_email_but_not_the_password()
 {
    let app = spawn_app_signed_out().await;
    app.given_post(
        "/api/users/signup",
        400,
        errors(&[
            ("Email must be valid.", Some("email")),
            (
                "Password must be between 5 and 20 characters.",
                Some("password"),
            ),
        ]),
    )
    .await;

    let page = app
        .post_credentials("/auth/signup", "not-an-email\"><b>", "abc")
        .await;

    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    page.assert_signed_out_header();
    page.assert_alert(&[
        "Email must be valid.",
        "Password must be between 5 and 20 characters.",
    ]);
    assert_eq!(page.field_messages("email"), ["Email must be valid."]);
    assert_eq!(
        page.field_messages("password"),
        ["Password must be between 5 and 20 characters."]
    );
    assert_eq!(
        page.input_value("email"),
        "not-an-email&#34;&#62;&#60;b&#62;"
    );
    assert_eq!(page.input_value("password"), "");
    page.assert_contains(&[r#"aria-invalid="true" aria-describedby="email-error""#]);
    assert!(page.set_cookies().is_empty());
    assert!(
        page.csrf_field().is_some(),
        "the form shown again can be sent again"
    );
    assert!(page.csrf_cookie().is_some());
}

#[tokio::test]
async fn a_failed_signin_shows_the_general_error_in_the_alert() {
    let app = spawn_app_signed_out().await;
    api_post("/api/users/signin")
        .and(body_json(
            json!({ "email": "who@test.com", "password": "wrong" }),
        ))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(errors(&[("Invalid credentials.", None)])),
        )
        .mount(&app.api)
        .await;

    let page = app
        .post_credentials("/auth/signin", "who@test.com", "wrong")
        .await;

    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    page.assert_contains(&["<h1>Sign In</h1>"]);
    page.assert_alert(&["Invalid credentials."]);
    assert!(page.field_messages("email").is_empty());
    assert_eq!(page.input_value("email"), "who@test.com");
}

#[tokio::test]
async fn signing_in_redirects_home_with_the_session_cookie() {
    let app = spawn_app().await;
    api_post("/api/users/signin")
        .respond_with(with_session(
            200,
            json!({ "email": "a@test.com", "id": "64b7f0c2a1b2c3d4e5f60001" }),
        ))
        .mount(&app.api)
        .await;

    lands_home_with_the_session(&app, "/auth/signin", "a@test.com").await;
}

/// A mock of the API's `POST api_path` that the browser's session cookie came along with.
fn api_post_with_session(api_path: &str) -> MockBuilder {
    api_post(api_path).and(header("cookie", COOKIE_VALUE))
}

/// The auth API's answer that starts a session: `status`, the session cookie and `body`.
fn with_session(status: u16, body: serde_json::Value) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .append_header("set-cookie", SESSION)
        .set_body_json(body)
}

/// Posts the form as a signed-out browser (`email`, password "password"), which is sent home
/// with the API's session cookie.
async fn lands_home_with_the_session(app: &TestApp, form_path: &str, email: &str) {
    let page = app.post_credentials(form_path, email, "password").await;
    page.assert_redirect("/");
    assert_eq!(page.set_cookies(), [SESSION]);
}

#[tokio::test]
async fn the_signout_page_auto_submits_a_form_whose_post_clears_the_session() {
    let app = spawn_app().await;
    app.given_signed_in(COOKIE_VALUE, "a@test.com").await;
    api_post_with_session("/api/users/signout")
        .respond_with(
            ResponseTemplate::new(200)
                .append_header("set-cookie", CLEARED)
                .set_body_json(json!({})),
        )
        .expect(1)
        .mount(&app.api)
        .await;

    let page = app.get("/auth/signout", Some(COOKIE_VALUE)).await;
    assert_eq!(page.status, StatusCode::OK);
    page.assert_contains(&[
        r#"<p class="status" id="signout-status" role="status">Signing user out ...</p>"#,
        r#"<form id="signout-form" method="post" action="/auth/signout" data-autosubmit"#,
        r#"id="signout-button">Sign Out</button>"#,
    ]);
    assert!(
        app.requests_to("/api/users/signout").await.is_empty(),
        "a GET never signs out"
    );

    let done = app
        .post_form("/auth/signout", &[], Some(COOKIE_VALUE))
        .await;
    done.assert_redirect("/");
    assert_eq!(done.set_cookies(), [CLEARED]);
    app.api.verify().await;
}

#[tokio::test]
async fn creating_a_ticket_posts_title_and_price_as_typed_and_goes_home() {
    let app = spawn_app().await;
    app.given_signed_in(COOKIE_VALUE, "seller@test.com").await;
    api_post_with_session("/api/tickets")
        .and(body_json(json!({ "title": "Concert", "price": "12.50" })))
        .respond_with(ResponseTemplate::new(201).set_body_json(ticket(TICKET_ID, "Concert", 12.5)))
        .expect(1)
        .mount(&app.api)
        .await;

    let form = app.get("/tickets/new", Some(COOKIE_VALUE)).await;
    assert_eq!(form.status, StatusCode::OK);
    form.assert_contains(&[
        "<h1>Create a Ticket</h1>",
        r#"<form class="card form" id="ticket-form" method="post" action="/tickets/new""#,
        r#"<input id="title" name="title" type="text""#,
        r#"inputmode="decimal" data-price"#,
        r#"<script src="/static/forms.js" defer></script>"#,
    ]);

    let page = app
        .post_form(
            "/tickets/new",
            &[("title", "Concert"), ("price", " 12.50 ")],
            Some(COOKIE_VALUE),
        )
        .await;

    page.assert_redirect("/");
    app.api.verify().await;
}

#[tokio::test]
async fn an_invalid_ticket_keeps_the_input_and_shows_the_field_messages() {
    let app = spawn_app().await;
    app.given_signed_in(COOKIE_VALUE, "seller@test.com").await;
    app.given_post(
        "/api/tickets",
        400,
        errors(&[
            ("Title is required.", Some("title")),
            ("Price must be larger than 0.", Some("price")),
        ]),
    )
    .await;

    let page = app
        .post_form(
            "/tickets/new",
            &[("title", ""), ("price", "-3")],
            Some(COOKIE_VALUE),
        )
        .await;

    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    page.assert_signed_in_header();
    page.assert_alert(&["Title is required.", "Price must be larger than 0."]);
    assert_eq!(page.field_messages("title"), ["Title is required."]);
    assert_eq!(
        page.field_messages("price"),
        ["Price must be larger than 0."]
    );
    assert_eq!(page.input_value("price"), "-3");
}

#[tokio::test]
async fn creating_a_ticket_after_the_session_ended_goes_to_sign_in() {
    let app = spawn_app().await;
    app.given_post("/api/tickets", 401, not_authorized()).await;

    let page = app
        .post_form(
            "/tickets/new",
            &[("title", "Concert"), ("price", "10")],
            None,
        )
        .await;

    page.assert_redirect("/auth/signin");
}

#[tokio::test]
async fn purchasing_reserves_the_ticket_and_goes_to_the_new_order() {
    let app = spawn_app().await;
    api_post_with_session("/api/orders")
        .and(body_json(json!({ "ticketId": TICKET_ID })))
        .respond_with(ResponseTemplate::new(201).set_body_json(order(
            ORDER_ID,
            "created",
            Utc::now() + Duration::seconds(60),
            "Concert",
            12.5,
        )))
        .expect(1)
        .mount(&app.api)
        .await;

    let page = app
        .post_form(&format!("/tickets/{TICKET_ID}"), &[], Some(COOKIE_VALUE))
        .await;

    page.assert_redirect(&format!("/orders/{ORDER_ID}"));
    app.api.verify().await;
}

#[tokio::test]
async fn purchasing_a_reserved_ticket_shows_the_error_on_the_ticket_page() {
    let app = spawn_app_signed_in().await;
    app.given_ticket(TICKET_ID, 200, ticket(TICKET_ID, "Concert", 12.5))
        .await;
    app.given_post(
        "/api/orders",
        400,
        errors(&[("Ticket is already reserved.", None)]),
    )
    .await;

    let page = app
        .post_form(&format!("/tickets/{TICKET_ID}"), &[], Some(COOKIE_VALUE))
        .await;

    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    page.assert_contains(&["<h1 id=\"ticket-title\">Concert</h1>", "Price: €12.50"]);
    page.assert_alert(&["Ticket is already reserved."]);
}

#[tokio::test]
async fn paying_sends_the_order_id_and_token_then_goes_to_my_orders() {
    let app = spawn_app().await;
    api_post_with_session("/api/payments")
        .and(body_json(
            json!({ "orderId": ORDER_ID, "token": "tok_visa" }),
        ))
        .respond_with(payment_created())
        .expect(1)
        .mount(&app.api)
        .await;

    let page = pay(&app, "tok_visa").await;

    page.assert_redirect("/orders");
    app.api.verify().await;
}

#[tokio::test]
async fn paying_waits_for_the_payments_service_to_learn_about_a_new_order() {
    let app = spawn_app().await;
    // The payments replica lags behind the order for a moment: 404 twice, then it knows it.
    api_post("/api/payments")
        .respond_with(ResponseTemplate::new(404).set_body_json(not_found()))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&app.api)
        .await;
    api_post("/api/payments")
        .respond_with(payment_created())
        .mount(&app.api)
        .await;

    let page = pay(&app, "tok_visa").await;

    page.assert_redirect("/orders");
    assert_eq!(app.requests_to("/api/payments").await.len(), 3);
}

/// The payments API's answer to a charge that went through.
fn payment_created() -> ResponseTemplate {
    ResponseTemplate::new(201)
        .set_body_json(json!({ "success": true, "id": "64b7f0c2a1b2c3d4e5f6c001" }))
}

#[tokio::test]
async fn a_refused_payment_is_shown_on_the_order_page() {
    let (_app, page) =
        pay_while_payments_answers(402, "Your card was declined.", "tok_chargeDeclined").await;

    assert_eq!(page.status, StatusCode::PAYMENT_REQUIRED);
    page.assert_alert(&["Your card was declined."]);
    page.assert_contains(&["Time left to pay:", r#"id="pay-button""#]);
}

#[tokio::test]
async fn a_payment_being_confirmed_is_said_on_the_order_page() {
    let confirming = "Your payment is being confirmed. You will not be charged twice; check the order again in a moment.";
    let (app, page) = pay_while_payments_answers(202, confirming, "tok_visa").await;

    assert_eq!(page.status, StatusCode::ACCEPTED);
    page.assert_alert(&[confirming]);
    assert_eq!(
        app.requests_to("/api/payments").await.len(),
        1,
        "not retried"
    );
}

#[tokio::test]
async fn paying_with_stripe_js_sends_the_payment_method_and_tells_the_script_the_order_is_paid() {
    let app = spawn_app().await;
    api_post_with_session("/api/payments/intents")
        .and(body_json(
            json!({ "orderId": ORDER_ID, "paymentMethod": "pm_card_visa" }),
        ))
        .respond_with(payment_created())
        .expect(1)
        .mount(&app.api)
        .await;

    let answer = post_intent(&app, "/intent", &[("payment_method", " pm_card_visa ")]).await;

    assert_eq!(
        (answer.status, answer.json()),
        (StatusCode::OK, json!({ "status": "paid" }))
    );
    app.api.verify().await;
}

#[tokio::test]
async fn a_card_asking_for_3d_secure_hands_its_client_secret_to_the_script() {
    let app = spawn_app().await;
    let action = json!({ "status": "requires_action", "clientSecret": "pi_1_secret_2" });
    app.given_post("/api/payments/intents", 200, action.clone())
        .await;

    let answer = post_intent(&app, "/intent", &[("payment_method", "pm_3ds")]).await;

    assert_eq!((answer.status, answer.json()), (StatusCode::OK, action));
}

#[tokio::test]
async fn after_3d_secure_the_script_has_payments_check_the_orders_intent() {
    let app = spawn_app().await;
    api_post_with_session(&format!("/api/payments/intents/{ORDER_ID}/check"))
        .respond_with(payment_created())
        .expect(1)
        .mount(&app.api)
        .await;

    let answer = post_intent(&app, "/intent/check", &[]).await;

    assert_eq!(
        (answer.status, answer.json()),
        (StatusCode::OK, json!({ "status": "paid" }))
    );
    app.api.verify().await;
}

#[tokio::test]
async fn a_refused_payment_method_is_told_to_the_script_with_the_apis_status_and_errors() {
    for (status, message) in [
        (400, "Your card was declined."),
        (409, "A payment for this order is already in progress."),
        (
            202,
            "Your payment is being confirmed. You will not be charged twice; check the order again in a moment.",
        ),
    ] {
        let app = spawn_app().await;
        app.given_post("/api/payments/intents", status, errors(&[(message, None)]))
            .await;

        let answer = post_intent(&app, "/intent", &[("payment_method", "pm_card_visa")]).await;

        assert_eq!(answer.status.as_u16(), status);
        assert_eq!(answer.json(), errors(&[(message, None)]));
    }
    let app = spawn_app().await;
    app.given_post(
        "/api/payments/intents",
        400,
        errors(&[("Invalid value", Some("paymentMethod"))]),
    )
    .await;
    let answer = post_intent(&app, "/intent", &[]).await;
    assert_eq!(
        answer.json(),
        errors(&[("Invalid value", Some("paymentMethod"))]),
        "the field stays named"
    );
}

#[tokio::test]
async fn a_failing_payments_service_is_a_generic_error_for_the_script_and_no_order_id_no_call() {
    let app = spawn_app().await;
    app.given_post(
        "/api/payments/intents",
        500,
        errors(&[("Something went wrong", None)]),
    )
    .await;

    let answer = post_intent(&app, "/intent", &[("payment_method", "pm_card_visa")]).await;

    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        answer.json(),
        errors(&[(
            "The ticketing service had a problem with this request. Please try again in a moment.",
            None
        )])
    );
    let page = app
        .post_form(
            "/orders/not-an-id/intent",
            &[("payment_method", "pm")],
            Some(COOKIE_VALUE),
        )
        .await;
    assert_eq!(
        (page.status, page.json()),
        (StatusCode::NOT_FOUND, errors(&[("Not Found", None)]))
    );
    assert_eq!(app.requests_to("/api/payments/intents").await.len(), 1);
}

/// Posts to the order page's checkout route `/orders/{ORDER_ID}{route}` as its script does.
async fn post_intent(app: &TestApp, route: &str, fields: &[(&str, &str)]) -> Page {
    app.post_form(
        &format!("/orders/{ORDER_ID}{route}"),
        fields,
        Some(COOKIE_VALUE),
    )
    .await
}

/// Submits the pay form of order [`ORDER_ID`] with `token`, as the signed-in buyer.
async fn pay(app: &TestApp, token: &str) -> Page {
    let order_page = format!("/orders/{ORDER_ID}");
    app.post_form(&order_page, &[("token", token)], Some(COOKIE_VALUE))
        .await
}

/// Pays a pending order of a signed-in buyer with `token` while the payments API answers every
/// payment with `status` and the error `message`.
async fn pay_while_payments_answers(status: u16, message: &str, token: &str) -> (TestApp, Page) {
    let app = spawn_app_signed_in().await;
    app.given_order(ORDER_ID, 200, concert_order("created", 30))
        .await;
    app.given_post("/api/payments", status, errors(&[(message, None)]))
        .await;

    let page = pay(&app, token).await;
    (app, page)
}

#[tokio::test]
async fn a_form_that_is_not_urlencoded_gets_an_html_error_page() {
    let app = spawn_app().await;

    let json = app
        .browser
        .post(app.url("/auth/signin"))
        .header("content-type", "application/json")
        .body(r#"{"email":"a@b.co","password":"x"}"#);
    let page = app.send(json).await;

    assert_eq!(page.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    page.assert_contains(&["That form could not be read"]);
    assert!(app.requests_to("/api/users/signin").await.is_empty());
}

#[tokio::test]
async fn a_failing_api_during_a_submit_answers_502_with_a_page() {
    let app = spawn_app().await;
    api_post("/api/users/signup")
        .respond_with(ResponseTemplate::new(500).set_body_string("boom"))
        .mount(&app.api)
        .await;

    let page = app
        .post_credentials("/auth/signup", "a@test.com", "password")
        .await;

    assert_eq!(page.status, StatusCode::BAD_GATEWAY);
    page.assert_contains(&["Something went wrong on our side"]);
    assert!(page.set_cookies().is_empty());
}

#[tokio::test]
async fn every_form_posted_from_another_site_is_refused_before_reaching_the_apis() {
    let app = spawn_app().await;
    app.given_signed_in(COOKIE_VALUE, "test@test.com").await;
    let cross_site: [&[(&str, &str)]; 4] = [
        &[("sec-fetch-site", "cross-site")],
        // A sibling subdomain: SameSite=Lax cookies would go along.
        &[("sec-fetch-site", "same-site")],
        &[("origin", "https://evil.example")],
        &[("origin", "null")],
    ];
    // Even with a valid CSRF token (an attacker cannot get one; this checks the other defence).
    for (path, fields) in every_post() {
        for headers in cross_site {
            let page = app
                .post_form_with(&path, &fields, Some(COOKIE_VALUE), headers)
                .await;
            assert_eq!(page.status, StatusCode::FORBIDDEN, "{path} {headers:?}");
            assert!(
                page.html.contains(client::cross_site::CROSS_SITE_MESSAGE),
                "{path} {headers:?}: {}",
                page.html
            );
            assert!(
                page.set_cookies().is_empty(),
                "{path} {headers:?}: no cookie is set or cleared"
            );
        }
    }
    let posts: Vec<_> = app
        .requests()
        .await
        .into_iter()
        .filter(|r| r.method.as_str() != "GET")
        .collect();
    assert!(posts.is_empty(), "the APIs were asked: {posts:?}");
}

#[tokio::test]
async fn calls_to_auth_vouch_for_the_browsers_address_with_the_key_and_no_other_api_gets_it() {
    let app = spawn_app().await;
    app.given_signed_in(COOKIE_VALUE, "test@test.com").await;
    app.given_post(
        "/api/users/signin",
        400,
        errors(&[("Invalid credentials.", None)]),
    )
    .await;
    app.given_get("/api/orders", 200, json!([])).await;

    // The proxy in front of the client appended the browser's address as the last hop.
    let forwarded = [("x-forwarded-for", "198.51.100.1, 203.0.113.77")];
    app.post_form_with(
        "/auth/signin",
        &[("email", "a@test.com"), ("password", "wrong")],
        None,
        &forwarded,
    )
    .await;
    app.browser
        .get(app.url("/orders"))
        .header("cookie", COOKIE_VALUE)
        .header("x-forwarded-for", "203.0.113.77")
        .send()
        .await
        .expect("the orders page");

    let signin = app.requests_to("/api/users/signin").await;
    assert_eq!(signin.len(), 1);
    let header_of = |request: &wiremock::Request, name: &str| {
        request
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(
        header_of(&signin[0], "x-client-address").as_deref(),
        Some("203.0.113.77")
    );
    assert_eq!(
        header_of(&signin[0], "x-client-address-key").as_deref(),
        Some(CLIENT_ADDRESS_KEY)
    );
    let orders = app.requests_to("/api/orders").await;
    assert_eq!(orders.len(), 1);
    assert_eq!(header_of(&orders[0], "x-client-address-key"), None);
    assert_eq!(header_of(&orders[0], "x-client-address"), None);
}

/// Every form of the client: where it posts and what it sends.
fn every_form() -> Vec<(String, Vec<(&'static str, &'static str)>)> {
    vec![
        (
            "/auth/signin".into(),
            vec![("email", "attacker@evil.example"), ("password", "secret")],
        ),
        (
            "/auth/signup".into(),
            vec![("email", "attacker@evil.example"), ("password", "secret")],
        ),
        ("/auth/signout".into(), vec![]),
        (
            "/tickets/new".into(),
            vec![("title", "concert"), ("price", "10")],
        ),
        (format!("/tickets/{TICKET_ID}"), vec![]),
        (format!("/orders/{ORDER_ID}"), vec![("token", "tok_visa")]),
    ]
}

/// Every POST of the client: its forms, and the order page's checkout routes its script posts to.
fn every_post() -> Vec<(String, Vec<(&'static str, &'static str)>)> {
    let mut posts = every_form();
    posts.push((
        format!("/orders/{ORDER_ID}/intent"),
        vec![("payment_method", "pm_card_visa")],
    ));
    posts.push((format!("/orders/{ORDER_ID}/intent/check"), vec![]));
    posts
}

#[tokio::test]
async fn every_form_without_its_own_csrf_token_is_refused_before_reaching_the_apis() {
    let app = spawn_app().await;
    app.given_signed_in(COOKIE_VALUE, "test@test.com").await;
    let (cookie, field) = client::csrf::issue_pair(&app.csrf)
        .await
        .expect("a token pair");
    let (_, other_field) = client::csrf::issue_pair(&app.csrf)
        .await
        .expect("another token pair");
    let with_cookie = format!("{COOKIE_VALUE}; {cookie}");
    // (case, CSRF field, Cookie header)
    let cases: [(&str, Option<&str>, &str); 5] = [
        ("missing token", None, &with_cookie),
        ("empty token", Some(""), &with_cookie),
        ("token without its cookie", Some(&field), COOKIE_VALUE),
        ("wrong token", Some(&other_field), &with_cookie),
        ("garbage token", Some("not base64!"), &with_cookie),
    ];
    let origin = format!("http://{}", app.addr);
    // A browser on our own page, and a client that sends neither Origin nor Sec-Fetch-Site.
    let senders: [&[(&str, &str)]; 2] = [
        &[("origin", &origin), ("sec-fetch-site", "same-origin")],
        &[],
    ];
    for (path, fields) in every_post() {
        for (case, token, cookie) in cases {
            for headers in senders {
                let mut fields = fields.clone();
                if let Some(token) = token {
                    fields.push((client::csrf::CSRF_FIELD, token));
                }
                let page = app.post_form_raw(&path, &fields, cookie, headers).await;
                assert_eq!(
                    page.status,
                    StatusCode::FORBIDDEN,
                    "{path} {case} {headers:?}"
                );
                assert!(
                    page.html.contains(client::csrf::CSRF_MESSAGE),
                    "{path} {case}: {}",
                    page.html
                );
                assert!(
                    page.all_set_cookies().is_empty(),
                    "{path} {case}: no cookie is set or cleared"
                );
            }
        }
    }
    let asked = app.requests().await;
    assert!(asked.is_empty(), "the APIs were asked: {asked:?}");
}

#[tokio::test]
async fn every_page_with_a_form_carries_a_csrf_field_and_sets_its_cookie() {
    let app = spawn_app_signed_in().await;
    app.given_ticket(TICKET_ID, 200, ticket(TICKET_ID, "Concert", 20.0))
        .await;
    let expires_at = Utc::now() + Duration::minutes(1);
    app.given_order(
        ORDER_ID,
        200,
        order(ORDER_ID, "created", expires_at, "Concert", 20.0),
    )
    .await;

    for (path, _) in every_form() {
        let page = app.get(&path, Some(COOKIE_VALUE)).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.html);
        let field = page.csrf_field();
        assert!(
            field.as_deref().is_some_and(|f| !f.is_empty()),
            "{path}: no CSRF field in:\n{}",
            page.html
        );
        let set_cookie = page.csrf_set_cookie().unwrap_or_default();
        for flag in ["HttpOnly", "SameSite=Lax", "Path=/", "Expires="] {
            assert!(
                set_cookie.contains(flag),
                "{path}: {flag} missing from {set_cookie:?}"
            );
        }
        assert!(!set_cookie.contains("Secure"), "{path}: {set_cookie}");

        // The same browser keeps its token, so two open tabs both work.
        let cookie = page.csrf_cookie().unwrap_or_default();
        let again = app
            .get(&path, Some(&format!("{COOKIE_VALUE}; {cookie}")))
            .await;
        assert_eq!(again.csrf_field(), field, "{path}");
    }
    // The APIs never see the client's own cookie.
    for request in app.requests().await {
        let sent = request.headers.get("cookie").and_then(|v| v.to_str().ok());
        assert_eq!(sent, Some(COOKIE_VALUE), "{}", request.url);
    }
}

#[tokio::test]
async fn a_form_loaded_from_one_replica_is_accepted_by_another_with_the_same_csrf_key() {
    let first = spawn_app().await;
    let second = spawn_app().await;
    let other_key = spawn_app_with_csrf_key("a-different-csrf-key-for-another-deployment").await;
    first.given_anonymous().await;
    for replica in [&second, &other_key] {
        api_post("/api/users/signin")
            .respond_with(with_session(200, json!({})))
            .mount(&replica.api)
            .await;
    }

    let form = first.get("/auth/signin", None).await;
    let cookie = form
        .csrf_cookie()
        .expect("the form page sets the CSRF cookie");
    let field = form.csrf_field().expect("the form carries the CSRF field");
    let fields = [
        ("email", "a@test.com"),
        ("password", "password"),
        (client::csrf::CSRF_FIELD, field.as_str()),
    ];
    let signed_in = second
        .post_form_raw("/auth/signin", &fields, &cookie, &[])
        .await;
    let refused = other_key
        .post_form_raw("/auth/signin", &fields, &cookie, &[])
        .await;

    signed_in.assert_redirect("/");
    assert_eq!(signed_in.set_cookies(), [SESSION]);
    assert_eq!(second.requests_to("/api/users/signin").await.len(), 1);
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.html.contains(client::csrf::CSRF_MESSAGE));
    assert!(other_key.requests_to("/api/users/signin").await.is_empty());
}
