//! Cross-site form posts and per-browser rate limits, through the local proxy as in production.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::browser::{Browser, setting, unique};

/// What the client's refusal page says (client/src/cross_site.rs).
const CROSS_SITE_MESSAGE: &str = "This form was sent from another site.";

/// Opens a page of another site that posts a form to `action` with `fields` as soon as it loads,
/// and waits for our refusal page.
async fn post_from_another_site(browser: &Browser, action: &str, fields: &[(&str, &str)]) {
    let inputs: String = fields
        .iter()
        .map(|(name, value)| format!("<input name=\"{name}\" value=\"{value}\">"))
        .collect();
    let page = format!(
        "<html><body><form id=\"f\" method=\"post\" action=\"{}\">{inputs}</form>\
         <script>document.getElementById(\"f\").submit()</script></body></html>",
        browser.url(action)
    );
    browser.visit_foreign_page(&page).await;
    browser.wait_for_text(CROSS_SITE_MESSAGE).await;
}

#[tokio::test]
async fn every_form_posted_from_another_site_is_refused_and_signs_nobody_in() {
    let browser = Browser::open("cross-site-forms").await;
    // An attacker's page posting the attacker's credentials to our sign-in form (login CSRF), and
    // every other form: the browser sends them with `Origin: null`, `Sec-Fetch-Site: cross-site`.
    let attacker = format!("{}@test.com", unique("attacker"));
    let some_id = "64b7f0c2a1b2c3d4e5f6a0ff";
    let forms: [(String, Vec<(&str, &str)>); 6] = [
        (
            "/auth/signin".to_owned(),
            vec![("email", attacker.as_str()), ("password", "password1")],
        ),
        (
            "/auth/signup".to_owned(),
            vec![("email", attacker.as_str()), ("password", "password1")],
        ),
        ("/auth/signout".to_owned(), vec![]),
        (
            "/tickets/new".to_owned(),
            vec![("title", "Forged"), ("price", "1")],
        ),
        (format!("/tickets/{some_id}"), vec![]),
        (format!("/orders/{some_id}"), vec![("token", "tok_visa")]),
    ];
    for (action, fields) in &forms {
        post_from_another_site(&browser, action, fields).await;
    }
    browser.screenshot("refused").await;
    // Nobody was signed up or in on our site.
    browser.visit("/").await;
    assert!(browser.text("nav-signin").await.contains("Sign In"));
    browser.visit("/auth/signin").await;
    browser.fill("email", &attacker).await;
    browser.fill("password", "password1").await;
    browser.click("signin-form-button").await;
    // The forged signup created no account: signing in with its credentials fails.
    browser.wait_for_text("Invalid credentials.").await;
    browser.close().await;
}

/// A browser at `address` (a loopback address of its own, so the proxy sees a distinct client),
/// keeping its cookies (the form's CSRF cookie goes back with the form).
fn browser_at(address: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(address))
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// Loads the sign-in page and posts its form for an unknown email; returns the page's text.
async fn failed_sign_in(browser: &reqwest::Client, app: &str) -> String {
    let form = browser
        .get(format!("{app}/auth/signin"))
        .send()
        .await
        .expect("the sign-in page is answered")
        .text()
        .await
        .expect("a page");
    let csrf_token =
        csrf_field(&form).unwrap_or_else(|| panic!("no CSRF field in the sign-in page: {form}"));
    let email = format!("{}@test.com", unique("nobody"));
    browser
        .post(format!("{app}/auth/signin"))
        .form(&[
            ("email", email.as_str()),
            ("password", "wrong-password"),
            ("csrf_token", csrf_token.as_str()),
        ])
        .send()
        .await
        .expect("the sign-in form is answered")
        .text()
        .await
        .expect("a page")
}

/// The value of a page's hidden `csrf_token` field.
fn csrf_field(html: &str) -> Option<String> {
    let marker = r#"name="csrf_token" value=""#;
    let value = &html[html.find(marker)? + marker.len()..];
    Some(value[..value.find('"')?].to_owned())
}

#[tokio::test]
async fn two_browsers_from_two_addresses_through_the_proxy_each_get_their_own_sign_in_limit() {
    let app = setting("APP_URL").trim_end_matches('/').to_owned();
    // auth's limit per address and minute (scripts/app.sh passes the variable when it is set).
    let limit: usize = std::env::var("AUTH_RATE_LIMIT_PER_MINUTE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let first = browser_at(Ipv4Addr::new(127, 0, 0, 2));
    let second = browser_at(Ipv4Addr::new(127, 0, 0, 3));

    // The client calls auth server-side; auth must still count each browser, not the client.
    let started = std::time::Instant::now();
    for attempt in 0..limit {
        let page = failed_sign_in(&first, &app).await;
        assert!(
            page.contains("Invalid credentials."),
            "attempt {attempt} of the first browser: {page}"
        );
    }
    // The budget refills continuously (limit per minute): a slow machine earns back a few attempts
    // while the first `limit` run, and those may still pass; no more than that.
    let refilled = (started.elapsed().as_secs_f64() * limit as f64 / 60.0).ceil() as usize;
    let mut page = failed_sign_in(&first, &app).await;
    for _ in 0..refilled {
        if page.contains("Too many attempts") {
            break;
        }
        page = failed_sign_in(&first, &app).await;
    }
    assert!(
        page.contains("Too many attempts"),
        "the first browser is over its limit ({refilled} attempts refilled meanwhile): {page}"
    );
    let page = failed_sign_in(&second, &app).await;
    assert!(
        page.contains("Invalid credentials."),
        "the second browser has its own budget: {page}"
    );
}
