//! A headless Chromium session over WebDriver, with helpers that read like what a person does, and
//! a check that the pages logged no console error.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use fantoccini::elements::Element;
use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

pub const WAIT: Duration = Duration::from_secs(15);

pub fn setting(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the browser tests with scripts/e2e.sh"))
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// The window the app under test was started with (`EXPIRATION_WINDOW_SECONDS`).
pub fn expiration_window() -> Duration {
    Duration::from_secs(
        setting("EXPIRATION_WINDOW_SECONDS")
            .parse()
            .expect("a number of seconds"),
    )
}

/// A ChromeDriver command outside the W3C protocol: a POST of `body` to `session/<id>/<path>`
/// (`se/log`: the browser's console log; `goog/cdp/execute`: one DevTools Protocol command).
#[derive(Debug)]
struct ChromeDriverCommand {
    path: &'static str,
    body: Value,
}

impl WebDriverCompatibleCommand for ChromeDriverCommand {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/{}",
            session_id.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.body.to_string()))
    }
}

pub struct Browser {
    pub client: Client,
    app: String,
    artifacts: PathBuf,
    name: String,
}

impl Browser {
    pub async fn open(name: &str) -> Self {
        let mut capabilities = Capabilities::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({ "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                             "--window-size=1280,900", "--disable-background-networking",
                             "--disable-component-update", "--disable-sync", "--no-first-run"] }),
        );
        capabilities.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&setting("WEBDRIVER_URL"))
            .await
            .expect("a WebDriver session (is chromedriver running?)");
        let artifacts = PathBuf::from(setting("E2E_ARTIFACTS"));
        std::fs::create_dir_all(&artifacts).expect("artifacts folder");
        Self {
            client,
            app: setting("APP_URL").trim_end_matches('/').to_owned(),
            artifacts,
            name: name.to_owned(),
        }
    }

    /// The app's address of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.app, path)
    }

    /// Opens a page of another site: `html` served as a `data:` URL (its origin is opaque).
    pub async fn visit_foreign_page(&self, html: &str) {
        let encoded: String = url::form_urlencoded::byte_serialize(html.as_bytes()).collect();
        self.client
            .goto(&format!("data:text/html,{}", encoded.replace('+', "%20")))
            .await
            .expect("navigation to a foreign page");
    }

    pub async fn visit(&self, path: &str) {
        self.client
            .goto(&format!("{}{}", self.app, path))
            .await
            .expect("navigation");
    }

    pub async fn path(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("current url")
            .path()
            .to_owned()
    }

    pub async fn wait_for_path(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let path = self.path().await;
            if matches(&path) {
                return path;
            }
            assert!(Instant::now() < deadline, "{what}: still on {path}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The element with `id`, once the page shows it (`WAIT` at most).
    async fn element(&self, id: &str) -> Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Id(id))
            .await
            .expect(id)
    }

    pub async fn fill(&self, id: &str, text: &str) {
        let field = self.element(id).await;
        field.clear().await.expect("clear");
        field.send_keys(text).await.expect("type");
    }

    pub async fn click(&self, id: &str) {
        self.element(id).await.click().await.expect("click");
    }

    pub async fn text(&self, id: &str) -> String {
        self.element(id).await.text().await.expect("text")
    }

    pub async fn value(&self, id: &str) -> String {
        let element = self.client.find(Locator::Id(id)).await.expect(id);
        element
            .prop("value")
            .await
            .expect("value")
            .unwrap_or_default()
    }

    pub async fn body_text(&self) -> String {
        self.client
            .find(Locator::Css("body"))
            .await
            .expect("body")
            .text()
            .await
            .expect("text")
    }

    /// Waits, without reloading, until the page shows `text` (after a click or a form that submits
    /// itself); a page read mid-navigation is read again.
    pub async fn wait_for_text(&self, text: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let body = match self.client.find(Locator::Css("body")).await {
                Ok(body) => body.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if body.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {text:?}:\n{body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Reloads until the page contains `text` (for states that arrive through events).
    pub async fn reload_until_text(&self, text: &str, limit: Duration) {
        self.reload_until(&format!("{text:?}"), limit, async |browser| {
            browser.body_text().await.contains(text)
        })
        .await;
    }

    /// Reloads until the page has an element matching the CSS `selector` (for states that arrive
    /// through events).
    pub async fn reload_until_present(&self, selector: &str, limit: Duration) {
        self.reload_until(selector, limit, async |browser| {
            browser.client.find(Locator::Css(selector)).await.is_ok()
        })
        .await;
    }

    /// Reloads every half second until `shows` says the page has `what`; fails after `limit`.
    async fn reload_until(
        &self,
        what: &str,
        limit: Duration,
        mut shows: impl AsyncFnMut(&Self) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        while !shows(self).await {
            assert!(
                Instant::now() < deadline,
                "the page never showed {what}:\n{}",
                self.body_text().await
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
            self.client.refresh().await.expect("reload");
        }
    }

    pub async fn screenshot(&self, step: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        let file = self.artifacts.join(format!("{}-{step}.png", self.name));
        std::fs::write(&file, png).expect("write screenshot");
    }

    /// A request from the page itself (with the browser's session cookie), as a script would.
    pub async fn fetch(&self, method: &str, path: &str, body: Value) -> (u64, Value) {
        let script = r#"
            const [method, path, body, done] = arguments;
            fetch(path, { method, headers: { "content-type": "application/json" }, body: JSON.stringify(body) })
              .then(async r => done([r.status, await r.json().catch(() => null)]))
              .catch(e => done([0, String(e)]));
        "#;
        let result = self
            .client
            .execute_async(script, vec![json!(method), json!(path), body])
            .await
            .expect("fetch from the page");
        (result[0].as_u64().unwrap_or(0), result[1].clone())
    }

    /// The console errors and failed resources (`SEVERE`) the pages logged since the last call.
    pub async fn console_errors(&self) -> Vec<String> {
        let log = self
            .client
            .issue_cmd(ChromeDriverCommand {
                path: "se/log",
                body: json!({ "type": "browser" }),
            })
            .await
            .expect("the browser log");
        log.as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Fails on any console error or failed resource the pages logged so far.
    pub async fn assert_no_console_errors(&self) {
        let errors = self.console_errors().await;
        assert!(
            errors.is_empty(),
            "console errors in {}: {errors:#?}",
            self.name
        );
    }

    /// A Chrome DevTools Protocol command, through ChromeDriver.
    pub async fn devtools(&self, cmd: &str, params: Value) -> Value {
        self.client
            .issue_cmd(ChromeDriverCommand {
                path: "goog/cdp/execute",
                body: json!({ "cmd": cmd, "params": params }),
            })
            .await
            .unwrap_or_else(|err| panic!("DevTools {cmd}: {err}"))
    }

    /// Lays pages out as a screen `width` × `height` CSS pixels wide (a phone's when `mobile`:
    /// the page's viewport meta tag applies), until called again.
    pub async fn emulate_screen(&self, width: u32, height: u32, mobile: bool) {
        self.devtools(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        )
        .await;
    }

    /// Saves a screenshot of the whole page (not only what fits the screen) as
    /// `$E2E_ARTIFACTS/<file>`.
    pub async fn full_page_screenshot(&self, file: &str) {
        let size = self
            .client
            .execute(
                "return [document.documentElement.clientWidth, document.documentElement.scrollHeight];",
                vec![],
            )
            .await
            .expect("the page's size");
        let (width, height) = (
            size[0].as_f64().unwrap_or(1280.0),
            size[1].as_f64().unwrap_or(800.0),
        );
        let shot = self
            .devtools(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true,
                        "clip": { "x": 0, "y": 0, "width": width, "height": height, "scale": 1 } }),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("a base64 screenshot");
        let path = self.artifacts.join(file);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("the screenshot's folder");
        }
        std::fs::write(&path, png).expect("write screenshot");
    }

    pub async fn close(self) {
        self.client.close().await.expect("close the session");
    }
}
