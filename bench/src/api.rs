//! The app's HTTP API through the proxy, as a browser would call it (session cookie by hand, so
//! that one client serves a thousand users).

use std::time::Duration;

use anyhow::Context as _;
use common::testing::{returned_cookie, with_cookie_and_json};
use reqwest::Method;
use serde_json::Value;

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    /// `name=value` of the `Set-Cookie` header, if any.
    pub cookie: Option<String>,
}

impl Reply {
    pub fn id(&self) -> Option<String> {
        self.body["id"].as_str().map(str::to_owned)
    }
}

impl Api {
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            // Longer than nginx's proxy_read_timeout (60 s): a stalled service shows as the
            // proxy's 504, as a browser would see it, rather than as a client-side timeout.
            .timeout(Duration::from_secs(90))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        cookie: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<Reply> {
        let request = with_cookie_and_json(self.http.request(method, self.url(path)), cookie, body);
        let response = request.send().await?;
        let status = response.status().as_u16();
        let cookie = returned_cookie(response.headers());
        let bytes = response.bytes().await?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Reply {
            status,
            body,
            cookie,
        })
    }

    /// A GET whose body is read in full and dropped: the status, or the transport error.
    pub async fn get_status(&self, path: &str) -> Result<u16, String> {
        let response = self
            .http
            .get(self.url(path))
            .send()
            .await
            .map_err(|e| format!("{e:#}"))?;
        let status = response.status().as_u16();
        response.bytes().await.map_err(|e| format!("{e:#}"))?;
        Ok(status)
    }

    /// A request whose answer is read in full and dropped: the status, or the transport error.
    pub async fn status_of(
        &self,
        method: Method,
        path: &str,
        cookie: Option<&str>,
        body: Option<&Value>,
    ) -> Result<u16, String> {
        let request = with_cookie_and_json(self.http.request(method, self.url(path)), cookie, body);
        let response = request.send().await.map_err(|e| format!("{e:#}"))?;
        let status = response.status().as_u16();
        response.bytes().await.map_err(|e| format!("{e:#}"))?;
        Ok(status)
    }

    /// The body of a GET that must answer 200.
    pub async fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let response = self.http.get(self.url(path)).send().await?;
        let status = response.status();
        anyhow::ensure!(status.is_success(), "GET {path}: {status}");
        Ok(response.bytes().await?.to_vec())
    }
}
