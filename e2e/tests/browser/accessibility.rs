//! Every page, at a desktop's and a phone's width: a screenshot of each
//! (`$E2E_ARTIFACTS/screenshots/<page>-<width>.png`), no console error, nothing wider than the
//! screen, and no accessibility violation found by axe-core (injected into the page from
//! `$AXE_CORE_JS`, which `scripts/e2e.sh` fetches at a pinned version).

use std::fmt::Write as _;
use std::time::Duration;

use fantoccini::actions::{InputSource as _, KeyAction, KeyActions};
use serde_json::{Value, json};

use crate::browser::{Browser, setting, unique};
use crate::purchase::{sign_in, sign_out, sign_up};

/// The widths every page is checked at: (name, width, height, a phone?).
const SCREENS: [(&str, u32, u32, bool); 2] = [("1280", 1280, 800, false), ("375", 375, 812, true)];

/// How a checked page is reached.
pub(crate) enum Visit<'a> {
    /// Navigating to this path.
    Path(&'a str),
    /// The sign-up form sent with a bad email and password (the page with the form's errors).
    SignUpErrors,
}

/// Everything found wrong so far, one paragraph per page and width, so that one run shows all.
#[derive(Default)]
pub(crate) struct Findings(Vec<String>);

impl Findings {
    /// Visits `page` at every width in [`SCREENS`], saves its screenshots and notes what is wrong.
    /// `own_status` is a path whose answer is a deliberate 4xx (the browser logs it as an error).
    pub(crate) async fn check(
        &mut self,
        browser: &Browser,
        name: &str,
        visit: Visit<'_>,
        own_status: Option<&str>,
    ) {
        for (width_name, width, height, mobile) in SCREENS {
            browser.emulate_screen(width, height, mobile).await;
            match &visit {
                Visit::Path(path) => browser.visit(path).await,
                Visit::SignUpErrors => {
                    browser.visit("/auth/signup").await;
                    browser.fill("email", "not-an-email").await;
                    browser.fill("password", "abc").await;
                    browser.click("signup-form-button").await;
                    browser.wait_for_text("Oh snap!").await;
                }
            }
            let at = format!("{name} at {width_name} px ({})", browser.path().await);
            browser
                .full_page_screenshot(&format!("screenshots/{name}-{width_name}.png"))
                .await;

            let errors: Vec<String> = browser
                .console_errors()
                .await
                .into_iter()
                .filter(|e| {
                    !own_status.is_some_and(|path| e.contains(path) && e.contains("status of 4"))
                })
                .collect();
            if !errors.is_empty() {
                self.0.push(format!("{at}: console errors {errors:#?}"));
            }

            let overflow = browser
                .client
                .execute(
                    "const root = document.documentElement;
                     if (root.scrollWidth <= root.clientWidth) return [];
                     return Array.from(document.querySelectorAll('body *'))
                       .filter(e => e.getBoundingClientRect().right > root.clientWidth + 0.5)
                       .slice(0, 5).map(e => e.outerHTML.slice(0, 120));",
                    vec![],
                )
                .await
                .expect("the page's width");
            if overflow.as_array().is_some_and(|wide| !wide.is_empty()) {
                self.0.push(format!(
                    "{at}: wider than the screen, because of {overflow:#}"
                ));
            }

            let unreachable = unreachable_by_keyboard(browser).await;
            if !unreachable.is_empty() {
                self.0.push(format!(
                    "{at}: never reached with the Tab key: {unreachable:#?}"
                ));
            }

            let violations = axe(browser).await;
            if !violations.is_empty() {
                self.0
                    .push(format!("{at}: axe-core found\n{}", describe(&violations)));
            }
        }
    }

    pub(crate) fn assert_none(&self) {
        assert!(
            self.0.is_empty(),
            "{} problem(s):\n\n{}",
            self.0.len(),
            self.0.join("\n\n")
        );
    }
}

/// The links, buttons and fields of the page that pressing Tab from the top never focuses (each
/// as the start of its HTML). Nothing is typed or clicked, so the page stays where it is.
async fn unreachable_by_keyboard(browser: &Browser) -> Vec<String> {
    const CONTROLS: &str = "a[href], button:not([disabled]), input:not([type=hidden]):not([disabled]), \
                            select:not([disabled]), textarea:not([disabled])";
    let count = browser
        .client
        .execute(
            "window.__reached = new Set();
             document.addEventListener('focusin', e => window.__reached.add(e.target));
             document.activeElement && document.activeElement.blur();
             window.scrollTo(0, 0);
             return document.querySelectorAll(arguments[0]).length;",
            vec![json!(CONTROLS)],
        )
        .await
        .expect("the page's controls")
        .as_u64()
        .unwrap_or_default();
    let mut keys = KeyActions::new("keyboard".into());
    for _ in 0..count + 2 {
        keys = keys
            .then(KeyAction::Down { value: TAB })
            .then(KeyAction::Up { value: TAB });
    }
    browser
        .client
        .perform_actions(keys)
        .await
        .expect("Tab presses");
    let missed = browser
        .client
        .execute(
            "return Array.from(document.querySelectorAll(arguments[0]))
               .filter(e => !window.__reached.has(e))
               .map(e => e.outerHTML.slice(0, 120));",
            vec![json!(CONTROLS)],
        )
        .await
        .expect("the controls not reached");
    missed
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str().map(str::to_owned))
        .collect()
}

/// WebDriver's code of the Tab key.
const TAB: char = '\u{e004}';

/// axe-core's violations on the current page (WCAG 2.x A and AA and best practices: the default
/// rules), each reduced to what a person needs to fix it.
async fn axe(browser: &Browser) -> Vec<Value> {
    let source = std::fs::read_to_string(setting("AXE_CORE_JS"))
        .expect("axe-core (AXE_CORE_JS, fetched by scripts/e2e.sh)");
    let loaded = browser
        .client
        .execute(&format!("{source}\n;return typeof window.axe;"), vec![])
        .await
        .expect("axe-core injected");
    assert_eq!(loaded, json!("object"), "axe-core did not load");
    let result = browser
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, { resultTypes: ['violations'] })
               .then(r => done(r.violations.map(v => ({
                 id: v.id, impact: v.impact, help: v.help, helpUrl: v.helpUrl,
                 nodes: v.nodes.map(n => ({ target: n.target.join(' '), html: n.html,
                                            summary: n.failureSummary }))
               }))))
               .catch(e => done([{ id: 'axe-error', help: String(e), nodes: [] }]));",
            vec![],
        )
        .await
        .expect("axe.run");
    result.as_array().cloned().unwrap_or_default()
}

fn describe(violations: &[Value]) -> String {
    let mut text = String::new();
    for v in violations {
        let _ = writeln!(
            text,
            "  [{}] {}: {} ({})",
            v["impact"].as_str().unwrap_or("?"),
            v["id"].as_str().unwrap_or("?"),
            v["help"].as_str().unwrap_or_default(),
            v["helpUrl"].as_str().unwrap_or_default()
        );
        for node in v["nodes"].as_array().into_iter().flatten() {
            let _ = writeln!(
                text,
                "      at {}: {}\n        {}",
                node["target"].as_str().unwrap_or_default(),
                node["html"].as_str().unwrap_or_default(),
                node["summary"]
                    .as_str()
                    .unwrap_or_default()
                    .replace('\n', "\n        ")
            );
        }
    }
    text
}

/// Lists a ticket through the API from the signed-in page; returns its id.
pub(crate) async fn list_ticket(browser: &Browser, title: &str, price: f64) -> String {
    let (status, body) = browser
        .fetch(
            "POST",
            "/api/tickets",
            json!({ "title": title, "price": price }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().expect("a ticket id").to_owned()
}

#[tokio::test]
async fn every_page_is_accessible_and_fits_a_phone_and_a_desktop() {
    let browser = Browser::open("accessibility").await;
    let mut findings = Findings::default();
    let seller = format!("{}@test.com", unique("a11y-seller"));
    let buyer = format!("{}@test.com", unique("a11y-buyer"));

    // A seller with two tickets: one stays for sale, the other is reserved below.
    sign_up(&browser, &seller).await;
    findings
        .check(&browser, "new-ticket", Visit::Path("/tickets/new"), None)
        .await;
    let free = list_ticket(&browser, &unique("Accessible concert"), 25.5).await;
    let taken = list_ticket(
        &browser,
        &unique("Accessible opera with a rather long title"),
        1250.0,
    )
    .await;
    sign_out(&browser).await;

    // Signed out: (screenshot name, how to get there, the path to expect when not the visited one).
    let signed_out = [
        ("home", Visit::Path("/"), None),
        ("signup", Visit::Path("/auth/signup"), None),
        ("signup-errors", Visit::SignUpErrors, Some("/auth/signup")),
        ("signin", Visit::Path("/auth/signin"), None),
        (
            "not-found",
            Visit::Path("/no/such/page"),
            Some("/no/such/page"),
        ),
    ];
    for (name, visit, path) in signed_out {
        findings.check(&browser, name, visit, path).await;
    }

    // A buyer reserves one ticket: the order page (while payable), my orders, both ticket pages.
    sign_up(&browser, &buyer).await;
    browser.visit(&format!("/tickets/{taken}")).await;
    browser.click("purchase-button").await;
    let order = browser
        .wait_for_path("after purchasing", |p| p.starts_with("/orders/"))
        .await;
    findings
        .check(&browser, "order", Visit::Path(&order), None)
        .await;
    findings
        .check(&browser, "my-orders", Visit::Path("/orders"), None)
        .await;
    let free_page = format!("/tickets/{free}");
    findings
        .check(&browser, "ticket-available", Visit::Path(&free_page), None)
        .await;
    let taken_page = format!("/tickets/{taken}");
    browser.visit(&taken_page).await;
    browser
        .reload_until_text("This ticket is reserved or sold.", Duration::from_secs(15))
        .await;
    findings
        .check(&browser, "ticket-taken", Visit::Path(&taken_page), None)
        .await;
    sign_out(&browser).await;

    // The seller's tickets: one for sale, one reserved or sold.
    sign_in(&browser, &seller).await;
    findings
        .check(&browser, "my-tickets", Visit::Path("/tickets/mine"), None)
        .await;
    assert!(
        browser.body_text().await.contains("Reserved or sold"),
        "{}",
        browser.body_text().await
    );

    browser.close().await;
    findings.assert_none();
}
