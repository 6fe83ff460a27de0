use std::net::SocketAddr;

use auth::settings::Settings;
use common::testing::{require_infra, test_env};
use reqwest::header::{COOKIE, SET_COOKIE};
use reqwest::{Response, StatusCode};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts the auth service on a random port with a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

pub async fn spawn_app_with(extra: &[(&str, &str)]) -> TestApp {
    require_infra(&["MONGO_URL"]);
    if std::env::var("TEST_LOG").is_ok() {
        common::telemetry::init("auth-test");
    }
    let settings = Settings::from_env(&test_env("auth", extra)).expect("test settings");
    let app = auth::app::build(settings)
        .await
        .expect("the auth app builds");
    let addr = app.addr();
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        addr,
        client: reqwest::Client::new(),
        shutdown,
    }
}

/// A response read whole: status, `Set-Cookie` and JSON body.
pub struct Reply {
    pub status: StatusCode,
    pub set_cookie: Option<String>,
    pub body: Value,
}

impl Reply {
    async fn read(response: Response) -> Self {
        let status = response.status();
        let set_cookie = response
            .headers()
            .get(SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await.expect("response body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("JSON body")
        };
        Self {
            status,
            set_cookie,
            body,
        }
    }

    /// The `name=value` part of the session cookie, to send back as `Cookie`.
    pub fn cookie(&self) -> String {
        let set_cookie = self.set_cookie.as_deref().expect("a Set-Cookie header");
        let cookie = cookie::Cookie::parse(set_cookie).expect("a well-formed Set-Cookie");
        // `name=value` only: `stripped` drops the attributes, `Display` does not percent-encode.
        cookie.stripped().to_string()
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        let response = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request");
        Reply::read(response).await
    }

    pub async fn post_raw(&self, path: &str, content_type: &str, body: &'static str) -> Reply {
        let response = self
            .client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        Reply::read(response).await
    }

    pub async fn get(&self, path: &str, cookie: Option<&str>) -> Reply {
        let mut request = self.client.get(self.url(path));
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        Reply::read(request.send().await.expect("request")).await
    }

    pub async fn signup(&self, email: &str, password: &str) -> Reply {
        self.post_json(
            "/api/users/signup",
            &serde_json::json!({ "email": email, "password": password }),
        )
        .await
    }

    pub async fn signin(&self, email: &str, password: &str) -> Reply {
        self.post_json(
            "/api/users/signin",
            &serde_json::json!({ "email": email, "password": password }),
        )
        .await
    }

    pub async fn current_user(&self, cookie: Option<&str>) -> Value {
        let reply = self.get("/api/users/currentuser", cookie).await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.body["currentUser"].clone()
    }
}
