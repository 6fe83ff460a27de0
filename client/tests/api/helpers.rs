use std::net::SocketAddr;

use axum_csrf::CsrfConfig;
use chrono::{DateTime, Utc};
use client::csrf::{CSRF_COOKIE, CSRF_FIELD, CsrfKey};
use client::settings::Settings;
use common::settings::Env;
use reqwest::header::{CONTENT_TYPE, COOKIE, HeaderMap, LOCATION, SET_COOKIE};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

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
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The key with which the test client vouches for browser addresses to auth.
pub const CLIENT_ADDRESS_KEY: &str = "client-address-key-for-client-tests";
/// Every test app's `CSRF_KEY` unless a test gives its own.
pub const CSRF_KEY: &str = "csrf-key-for-the-client-tests-0123456789";

pub async fn spawn_app() -> TestApp {
    spawn_app_with_csrf_key(CSRF_KEY).await
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
    spawn(api, &base, Some(publishable_key), CSRF_KEY).await
}

/// The client configured with an API base where nothing listens.
pub async fn spawn_app_without_api() -> TestApp {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let base = format!("http://{}", closed.local_addr().expect("its address"));
    drop(closed);
    spawn(MockServer::start().await, &base, None, CSRF_KEY).await
}

async fn spawn(api: MockServer, base: &str, stripe_key: Option<&str>, csrf_key: &str) -> TestApp {
    if std::env::var("TEST_LOG").is_ok() {
        common::telemetry::init("client-test");
    }
    let mut pairs = vec![
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("METRICS_PORT", "0"),
        ("API_BASE_URL", base),
        ("CLIENT_ADDRESS_KEY", CLIENT_ADDRESS_KEY),
        ("CSRF_KEY", csrf_key),
    ];
    if let Some(key) = stripe_key {
        pairs.push(("STRIPE_PUBLISHABLE_KEY", key));
    }
    let settings = Settings::from_env(&Env::from_pairs(pairs)).expect("test settings");
    let csrf = client::csrf::config(
        &CsrfKey::new(csrf_key.to_owned()).expect("a long enough CSRF key"),
        settings.cookie_secure,
    );
    let app = client::app::build(settings)
        .await
        .expect("the client app builds");
    let addr = app.addr();
    let metrics_addr = app.metrics_addr();
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        addr,
        metrics_addr,
        browser: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a test HTTP client"),
        api,
        csrf,
        shutdown,
    }
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
        self.assert_lacks(&[">Sell Tickets</a>", ">My Orders</a>", ">Sign Out</a>"]);
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
        self.post_form_raw(path, &fields, Some(&cookie), headers)
            .await
    }

    /// Submits exactly these fields, cookie and headers: no CSRF token is added.
    pub async fn post_form_raw(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        cookie: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Page {
        let mut request = self.browser.post(self.url(path)).form(fields);
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Page::read(request.send().await.expect("request")).await
    }

    /// The API treats every request without a known cookie as anonymous.
    pub async fn given_anonymous(&self) {
        Mock::given(method("GET"))
            .and(path("/api/users/currentuser"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "currentUser": null })))
            .with_priority(10)
            .mount(&self.api)
            .await;
    }

    /// The API knows `cookie` as a signed-in user; every other request is anonymous.
    pub async fn given_signed_in(&self, cookie: &str, email: &str) {
        self.given_anonymous().await;
        Mock::given(method("GET"))
            .and(path("/api/users/currentuser"))
            .and(header("cookie", cookie))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "currentUser": { "id": USER_ID, "email": email, "iat": 1_700_000_000, "exp": 1_900_000_000 }
            })))
            .with_priority(1)
            .mount(&self.api)
            .await;
    }

    pub async fn given_get(&self, api_path: &str, status: u16, body: Value) {
        Mock::given(method("GET"))
            .and(path(api_path))
            .respond_with(ResponseTemplate::new(status).set_body_json(body))
            .mount(&self.api)
            .await;
    }

    /// Every API request this test made to `api_path`.
    pub async fn requests_to(&self, api_path: &str) -> Vec<wiremock::Request> {
        self.api
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.url.path() == api_path)
            .collect()
    }
}

pub const USER_ID: &str = "64b7f0c2a1b2c3d4e5f60001";
pub const COOKIE_VALUE: &str = "express:sess=eyJqd3QiOiJ0ZXN0In0=";

pub fn ticket(id: &str, title: &str, price: f64) -> Value {
    json!({ "id": id, "title": title, "price": price, "userId": USER_ID, "version": 0 })
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
