use std::net::SocketAddr;

use auth::settings::Settings;
use common::testing::{Running, require_infra, send, start, test_env};
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub use common::testing::Reply;

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    /// The test's own database.
    pub database: String,
    _running: Running,
}

/// Starts the auth service on a random port with a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

pub async fn spawn_app_with(extra: &[(&str, &str)]) -> TestApp {
    require_infra(&["MONGO_URL"]);
    common::testing::init_test_log("auth-test");
    let settings = Settings::from_env(&test_env("auth", extra)).expect("test settings");
    spawn_app_on(settings).await
}

/// Starts the auth service on the database `settings` name (to start it over data written before).
pub async fn spawn_app_on(settings: Settings) -> TestApp {
    common::store::query_log::enable();
    let database = settings.mongo.database.clone();
    let app = start("auth", auth::app::build(settings)).await;
    TestApp {
        addr: app.addr,
        client: reqwest::Client::new(),
        database,
        _running: app.running,
    }
}

/// Settings for a fresh database, without starting anything.
pub fn fresh_settings() -> Settings {
    require_infra(&["MONGO_URL"]);
    common::testing::init_test_log("auth-test");
    Settings::from_env(&test_env("auth", &[])).expect("test settings")
}

/// The database of `settings`, through a client of the test's own.
pub async fn database(settings: &Settings) -> mongodb::Database {
    common::store::connect(&settings.mongo, "auth-test")
        .await
        .expect("connecting to the test database")
}

impl TestApp {
    /// The filters sent to this app's database so far.
    pub fn queries(&self) -> Vec<common::store::query_log::Query> {
        common::store::query_log::queries_in(&self.database)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        send(
            &self.client,
            Method::POST,
            &self.url(path),
            None,
            Some(body),
        )
        .await
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
        send(&self.client, Method::GET, &self.url(path), cookie, None).await
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

    /// Signs in with extra request headers: the client addresses the rate limits count by.
    pub async fn signin_with_headers(
        &self,
        headers: &[(&str, &str)],
        email: &str,
        password: &str,
    ) -> Reply {
        let mut request = self
            .client
            .post(self.url("/api/users/signin"))
            .json(&serde_json::json!({ "email": email, "password": password }));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Reply::read(request.send().await.expect("request")).await
    }

    pub async fn signout(&self, cookie: &str) -> Reply {
        let url = self.url("/api/users/signout");
        send(&self.client, Method::POST, &url, Some(cookie), None).await
    }

    pub async fn current_user(&self, cookie: Option<&str>) -> Value {
        let reply = self.get("/api/users/currentuser", cookie).await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.body["currentUser"].clone()
    }
}
