use std::net::SocketAddr;

use axum_csrf::CsrfConfig;
use chrono::{DateTime, Utc};
use client::csrf::{CSRF_COOKIE, CSRF_FIELD, CsrfKey};
use client::settings::Settings;
use common::settings::Env;
use common::testing::{Running, start};
use reqwest::header::{CONTENT_TYPE, COOKIE, HeaderMap, LOCATION, SET_COOKIE};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockBuilder, MockServer, ResponseTemplate};

pub use common::testing::errors;

/// The client running against a fake of the APIs (the ingress) at the HTTP boundary.
pub struct TestApp {
    pub addr: SocketAddr,
    /// Where the app serves `GET /metrics`.
    pub metrics_addr: SocketAddr,
    /// A browser that does not follow redirects, so tests see them.
    pub browser: reqwest::Client,
    pub api: MockServer,
    /// The app's CSRF configuration, to make the token pair a page would have given the browser.
    pub csrf: CsrfConfig,
    _running: Running,
}

/// The key with which the test client vouches for browser addresses to auth.
pub const CLIENT_ADDRESS_KEY: &str = "client-address-key-for-client-tests";
/// Every test app's `CSRF_KEY` unless a test gives its own.
pub const CSRF_KEY: &str = "csrf-key-for-the-client-tests-0123456789";

pub async fn spawn_app() -> TestApp {
    spawn_app_with_csrf_key(CSRF_KEY).await
}

/// The client, with the API treating every request as anonymous.
pub async fn spawn_app_signed_out() -> TestApp {
    let app = spawn_app().await;
    app.given_anonymous().await;
    app
}

/// The client, with the API knowing [`COOKIE_VALUE`] as the signed-in [`BUYER`].
pub async fn spawn_app_signed_in() -> TestApp {
    let app = spawn_app().await;
    app.given_signed_in(COOKIE_VALUE, BUYER).await;
    app
}

/// A replica whose forms' tokens come from `csrf_key`.
pub async fn spawn_app_with_csrf_key(csrf_key: &str) -> TestApp {
    let api = MockServer::start().await;
    let base = api.uri();
    spawn(api, &base, None, csrf_key).await
}

pub async fn spawn_app_with_stripe(publishable_key: &str) -> TestApp {
    let api = MockServer::start().await;
    let base = api.uri();
    spawn(api, &base, Some((publishable_key, None)), CSRF_KEY).await
}

/// The client with a publishable key and Stripe.js loaded from `script_url`.
pub async fn spawn_app_with_stripe_js(publishable_key: &str, script_url: &str) -> TestApp {
    let api = MockServer::start().await;
    let base = api.uri();
    spawn(
        api,
        &base,
        Some((publishable_key, Some(script_url))),
        CSRF_KEY,
    )
    .await
}

/// The client configured with an API base where nothing listens.
pub async fn spawn_app_without_api() -> TestApp {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let base = format!("http://{}", closed.local_addr().expect("its address"));
    drop(closed);
    spawn(MockServer::start().await, &base, None, CSRF_KEY).await
}

/// `stripe`: the publishable key, and where Stripe.js comes from unless Stripe's own address.
async fn spawn(
    api: MockServer,
    base: &str,
    stripe: Option<(&str, Option<&str>)>,
    csrf_key: &str,
) -> TestApp {
    common::testing::init_test_log("client-test");
    let mut pairs = vec![
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("METRICS_PORT", "0"),
        ("API_BASE_URL", base),
        ("CLIENT_ADDRESS_KEY", CLIENT_ADDRESS_KEY),
        ("CSRF_KEY", csrf_key),
    ];
    if let Some((key, script_url)) = stripe {
        pairs.push(("STRIPE_PUBLISHABLE_KEY", key));
        if let Some(url) = script_url {
            pairs.push(("STRIPE_JS_URL", url));
        }
    }
    let settings = Settings::from_env(&Env::from_pairs(pairs)).expect("test settings");
    let csrf = client::csrf::config(
        &CsrfKey::new(csrf_key.to_owned()).expect("a long enough CSRF key"),
        settings.cookie_secure,
    );
    let app = start("client", client::app::build(settings)).await;
    TestApp {
        addr: app.addr,
        metrics_addr: app.metrics_addr,
        browser: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a test HTTP client"),
        api,
        csrf,
        _running: app.running,
    }
}

/// A mock of the API's `GET api_path`.
pub fn api_get(api_path: &str) -> MockBuilder {
    Mock::given(method("GET")).and(path(api_path))
}

/// A mock of the API's `POST api_path`.
pub fn api_post(api_path: &str) -> MockBuilder {
    Mock::given(method("POST")).and(path(api_path))
}

/// A page as the browser received it.
#[derive(Debug)]
pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub html: String,
}

impl Page {
    async fn read(response: Response) -> Self {
        Self {
            status: response.status(),
            headers: response.headers().clone(),
            html: response.text().await.expect("response body"),
        }
    }

    /// The body as JSON (what the order page's checkout routes answer its script).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.html).unwrap_or_else(|err| panic!("{err}: {}", self.html))
    }

    pub fn location(&self) -> Option<&str> {
        self.headers.get(LOCATION).and_then(|v| v.to_str().ok())
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// Every `Set-Cookie`, the CSRF token's included.
    pub fn all_set_cookies(&self) -> Vec<&str> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    /// The `Set-Cookie`s other than the CSRF token's (the session's, passed on from the APIs).
    pub fn set_cookies(&self) -> Vec<&str> {
        self.all_set_cookies()
            .into_iter()
            .filter(|c| !c.starts_with(&format!("{CSRF_COOKIE}=")))
            .collect()
    }

    /// The CSRF cookie this page set, whole (`csrf=...; HttpOnly; ...`).
    pub fn csrf_set_cookie(&self) -> Option<&str> {
        self.all_set_cookies()
            .into_iter()
            .find(|c| c.starts_with(&format!("{CSRF_COOKIE}=")))
    }

    /// The `csrf=...` pair a browser sends back after this page.
    pub fn csrf_cookie(&self) -> Option<String> {
        self.csrf_set_cookie()
            .and_then(|c| c.split(';').next())
            .map(str::to_owned)
    }

    /// The value of the form's hidden CSRF field.
    pub fn csrf_field(&self) -> Option<String> {
        let marker = format!(r#"name="{CSRF_FIELD}" value=""#);
        let start = self.html.find(&marker)? + marker.len();
        let value = &self.html[start..];
        Some(value[..value.find('"')?].to_owned())
    }

    /// Asserts a 303 to `to`, as after a successful form.
    pub fn assert_redirect(&self, to: &str) {
        assert_eq!(self.status, StatusCode::SEE_OTHER, "{}", self.html);
        assert_eq!(self.location(), Some(to));
    }

    pub fn assert_contains(&self, fragments: &[&str]) {
        for fragment in fragments {
            assert!(
                self.html.contains(fragment),
                "{fragment:?} missing from:\n{}",
                self.html
            );
        }
    }

    pub fn assert_lacks(&self, fragments: &[&str]) {
        for fragment in fragments {
            assert!(
                !self.html.contains(fragment),
                "{fragment:?} unexpectedly in:\n{}",
                self.html
            );
        }
    }

    /// The header's signed-in links, and none of the signed-out ones.
    pub fn assert_signed_in_header(&self) {
        self.assert_contains(&[
            r#"<a class="brand" id="brand" href="/">Ticketing System</a>"#,
            r#"<a href="/tickets/new" id="nav-sell">Sell Tickets</a>"#,
            r#"<a href="/tickets/mine" id="nav-my-tickets">My Tickets</a>"#,
            r#"<a href="/orders" id="nav-orders">My Orders</a>"#,
            r#"<a href="/auth/signout" id="nav-signout">Sign Out</a>"#,
        ]);
        self.assert_lacks(&[">Sign Up</a>", ">Sign In</a>"]);
    }

    /// The header's signed-out links, and none of the signed-in ones.
    pub fn assert_signed_out_header(&self) {
        self.assert_contains(&[
            r#"<a class="brand" id="brand" href="/">Ticketing System</a>"#,
            r#"<a href="/auth/signup" id="nav-signup">Sign Up</a>"#,
            r#"id="nav-signin" class="button-link">Sign In</a>"#,
        ]);
        self.assert_lacks(&[
            ">Sell Tickets</a>",
            ">My Tickets</a>",
            ">My Orders</a>",
            ">Sign Out</a>",
        ]);
    }

    /// The "Oh snap!" alert with exactly these messages, in order.
    pub fn assert_alert(&self, messages: &[&str]) {
        let start = self
            .html
            .find(r#"<div class="alert alert-danger" id="errors" role="alert">"#)
            .unwrap_or_else(|| panic!("no alert in:\n{}", self.html));
        let alert = &self.html[start..];
        let alert = &alert[..alert.find("</div>").expect("the alert ends")];
        assert!(alert.contains("Oh snap!"), "{alert}");
        let items: Vec<&str> = alert
            .split("<li>")
            .skip(1)
            .map(|item| item.split("</li>").next().unwrap_or_default())
            .collect();
        assert_eq!(items, messages, "{alert}");
    }

    /// The messages shown right under a form field.
    pub fn field_messages(&self, field: &str) -> Vec<String> {
        let marker = format!(r#"<ul class="field-error" id="{field}-error">"#);
        let Some(start) = self.html.find(&marker) else {
            return Vec::new();
        };
        let list = &self.html[start + marker.len()..];
        let list = &list[..list.find("</ul>").expect("the list ends")];
        list.split("<li>")
            .skip(1)
            .map(|item| item.split("</li>").next().unwrap_or_default().to_owned())
            .collect()
    }

    /// The `value` attribute of an input.
    pub fn input_value(&self, name: &str) -> String {
        let marker = format!(r#"<input id="{name}" name="{name}""#);
        let start = self
            .html
            .find(&marker)
            .unwrap_or_else(|| panic!("no input {name} in:\n{}", self.html));
        let input = &self.html[start..];
        let input = &input[..input.find('>').expect("the input ends")];
        input
            .split(r#"value=""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no value in {input}"))
            .to_owned()
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str, cookie: Option<&str>) -> Page {
        let mut request = self.browser.get(self.url(path));
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        self.send(request).await
    }

    /// Sends a request made with [`Self::browser`], and reads the page it answers.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Page {
        Page::read(request.send().await.expect("request")).await
    }

    /// Submits a form the way a browser does from one of our pages (urlencoded, with the
    /// `Origin` and `Sec-Fetch-Site` a browser sends, and the page's CSRF field and cookie).
    pub async fn post_form(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        cookie: Option<&str>,
    ) -> Page {
        let origin = format!("http://{}", self.addr);
        self.post_form_with(
            path,
            fields,
            cookie,
            &[("origin", &origin), ("sec-fetch-site", "same-origin")],
        )
        .await
    }

    /// Submits the sign-up or sign-in form (`form_path`) as a signed-out browser.
    pub async fn post_credentials(&self, form_path: &str, email: &str, password: &str) -> Page {
        let fields = [("email", email), ("password", password)];
        self.post_form(form_path, &fields, None).await
    }

    /// Submits a form from one of our pages (valid CSRF field and cookie) with these request
    /// headers (e.g. a page of another site's).
    pub async fn post_form_with(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        cookie: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Page {
        let (csrf_cookie, csrf_field) = client::csrf::issue_pair(&self.csrf)
            .await
            .expect("a CSRF token pair");
        let mut fields = fields.to_vec();
        fields.push((CSRF_FIELD, &csrf_field));
        let cookie = match cookie {
            Some(cookie) => format!("{cookie}; {csrf_cookie}"),
            None => csrf_cookie,
        };
        self.post_form_raw(path, &fields, &cookie, headers).await
    }

    /// Submits exactly these fields, `Cookie` header and headers: no CSRF token is added.
    pub async fn post_form_raw(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        cookie: &str,
        headers: &[(&str, &str)],
    ) -> Page {
        let mut request = self
            .browser
            .post(self.url(path))
            .form(fields)
            .header(COOKIE, cookie);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request).await
    }

    /// The API treats every request without a known cookie as anonymous.
    pub async fn given_anonymous(&self) {
        self.given_current_user(None, Value::Null, 10).await;
    }

    /// The API knows `cookie` as a signed-in user; every other request is anonymous.
    pub async fn given_signed_in(&self, cookie: &str, email: &str) {
        self.given_anonymous().await;
        let user =
            json!({ "id": USER_ID, "email": email, "iat": 1_700_000_000, "exp": 1_900_000_000 });
        self.given_current_user(Some(cookie), user, 1).await;
    }

    /// `GET /api/users/currentuser` answers `user` to requests with `cookie` (to all without);
    /// the mock of lower `priority` answers first.
    async fn given_current_user(&self, cookie: Option<&str>, user: Value, priority: u8) {
        let mut mock = api_get("/api/users/currentuser");
        if let Some(cookie) = cookie {
            mock = mock.and(header("cookie", cookie));
        }
        mock.respond_with(ResponseTemplate::new(200).set_body_json(json!({ "currentUser": user })))
            .with_priority(priority)
            .mount(&self.api)
            .await;
    }

    pub async fn given_get(&self, api_path: &str, status: u16, body: Value) {
        self.given("GET", api_path, status, body).await;
    }

    pub async fn given_post(&self, api_path: &str, status: u16, body: Value) {
        self.given("POST", api_path, status, body).await;
    }

    /// The tickets API answers its listing (`GET /api/tickets`, whatever the query) with `status`
    /// and `body`.
    pub async fn given_tickets(&self, status: u16, body: Value) {
        self.given_get("/api/tickets", status, body).await;
    }

    /// The tickets API answers `GET /api/tickets/{id}` with `status` and `body`.
    pub async fn given_ticket(&self, id: &str, status: u16, body: Value) {
        self.given_get(&format!("/api/tickets/{id}"), status, body)
            .await;
    }

    /// The orders API answers `GET /api/orders/{id}` with `status` and `body`.
    pub async fn given_order(&self, id: &str, status: u16, body: Value) {
        self.given_get(&format!("/api/orders/{id}"), status, body)
            .await;
    }

    async fn given(&self, verb: &str, api_path: &str, status: u16, body: Value) {
        Mock::given(method(verb))
            .and(path(api_path))
            .respond_with(ResponseTemplate::new(status).set_body_json(body))
            .mount(&self.api)
            .await;
    }

    /// The order page of a signed-in buyer whose order [`ORDER_ID`] the API answers as `order`.
    pub async fn order_page(&self, order: Value) -> Page {
        self.given_signed_in(COOKIE_VALUE, BUYER).await;
        self.given_order(ORDER_ID, 200, order).await;
        self.get(&format!("/orders/{ORDER_ID}"), Some(COOKIE_VALUE))
            .await
    }

    /// Every API request this test made.
    pub async fn requests(&self) -> Vec<wiremock::Request> {
        self.api.received_requests().await.unwrap_or_default()
    }

    /// Every API request this test made to `api_path`.
    pub async fn requests_to(&self, api_path: &str) -> Vec<wiremock::Request> {
        self.requests()
            .await
            .into_iter()
            .filter(|r| r.url.path() == api_path)
            .collect()
    }

    /// The page called `api_path` once, passing on the browser's session cookie (`why` says what
    /// the API needs it for).
    pub async fn assert_called_once_with_the_session(&self, api_path: &str, why: &str) {
        let requests = self.requests_to(api_path).await;
        assert_eq!(requests.len(), 1, "{api_path}");
        assert_eq!(
            requests[0]
                .headers
                .get("cookie")
                .and_then(|v| v.to_str().ok()),
            Some(COOKIE_VALUE),
            "{api_path}: {why}"
        );
    }
}

pub const USER_ID: &str = "64b7f0c2a1b2c3d4e5f60001";
pub const TICKET_ID: &str = "64b7f0c2a1b2c3d4e5f6a001";
pub const ORDER_ID: &str = "64b7f0c2a1b2c3d4e5f6b001";
/// The email of the user most tests sign in as.
pub const BUYER: &str = "buyer@test.com";
pub const COOKIE_VALUE: &str = "express:sess=eyJqd3QiOiJ0ZXN0In0=";

pub fn ticket(id: &str, title: &str, price: f64) -> Value {
    json!({ "id": id, "title": title, "price": price, "userId": USER_ID, "version": 0 })
}

/// Order [`ORDER_ID`] of a €12.50 concert ticket, in `status`, expiring `seconds` from now.
pub fn concert_order(status: &str, seconds: i64) -> Value {
    let expires_at = Utc::now() + chrono::Duration::seconds(seconds);
    order(ORDER_ID, status, expires_at, "Concert", 12.5)
}

pub fn order(id: &str, status: &str, expires_at: DateTime<Utc>, title: &str, price: f64) -> Value {
    json!({
        "id": id,
        "userId": USER_ID,
        "status": status,
        "expiresAt": common::time::to_iso_millis(&expires_at),
        "version": 0,
        "ticket": { "id": "64b7f0c2a1b2c3d4e5f6a000", "title": title, "price": price, "version": 0 }
    })
}
