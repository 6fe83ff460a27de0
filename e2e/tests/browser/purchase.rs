use std::time::Duration;

use serde_json::json;

use crate::browser::{Browser, expiration_window, unique};

const PASSWORD: &str = "password1";

/// Sends the `signup` or `signin` form with `email` and waits for the landing page.
async fn submit_credentials(browser: &Browser, form: &str, email: &str, what: &str) {
    browser.visit(&format!("/auth/{form}")).await;
    browser.fill("email", email).await;
    browser.fill("password", PASSWORD).await;
    browser.click(&format!("{form}-form-button")).await;
    browser.wait_for_path(what, |p| p == "/").await;
}

pub(crate) async fn sign_up(browser: &Browser, email: &str) {
    submit_credentials(browser, "signup", email, "after signing up").await;
    assert!(browser.text("nav-sell").await.contains("Sell Tickets"));
}

pub(crate) async fn sign_in(browser: &Browser, email: &str) {
    submit_credentials(browser, "signin", email, "after signing in").await;
}

pub(crate) async fn sign_out(browser: &Browser) {
    browser.click("nav-signout").await;
    // The page signs out by itself (and the button works without JavaScript).
    browser
        .wait_for_path("after signing out", |p| p == "/")
        .await;
    assert!(browser.text("nav-signin").await.contains("Sign In"));
}

/// Stripe's test cards, typed into the card field of the stub of Stripe.js (`scripts/e2e.sh`).
pub(crate) const VISA: &str = "4242 4242 4242 4242";

/// Types `card` into the order page's card field and presses Pay.
pub(crate) async fn pay_with_card(browser: &Browser, card: &str) {
    browser.fill("stub-card-number", card).await;
    browser.click("pay-button").await;
}

/// The XPath of the landing page's table row of the ticket titled `title`.
fn row_of(title: &str) -> String {
    format!("//tr[td[normalize-space()='{title}']]")
}

/// Lists a ticket and returns its id (read from the landing page's table).
async fn sell(browser: &Browser, title: &str, price: &str) -> String {
    browser.click("nav-sell").await;
    browser.fill("title", title).await;
    browser.fill("price", price).await;
    browser.click("title").await; // leaving the price field reformats it
    assert_eq!(
        browser.value("price").await,
        format!("{:.2}", price.parse::<f64>().unwrap_or_default())
    );
    browser.screenshot("new-ticket").await;
    browser.click("ticket-form-button").await;
    browser.wait_for_path("after selling", |p| p == "/").await;
    let row = browser
        .client
        .find(fantoccini::Locator::XPath(&row_of(title)))
        .await
        .expect("the new ticket is listed");
    row.attr("data-ticket-id")
        .await
        .expect("attribute")
        .expect("a ticket id")
}

/// Opens the ticket from the landing page and purchases it; returns the order id.
pub(crate) async fn purchase(browser: &Browser, title: &str) -> String {
    browser.visit("/").await;
    let view_link = format!("{}//a[normalize-space()='View']", row_of(title));
    let view = browser
        .client
        .find(fantoccini::Locator::XPath(&view_link))
        .await
        .expect("a View link for the ticket");
    view.click().await.expect("open the ticket");
    assert_eq!(browser.text("ticket-title").await, title);
    browser.click("purchase-button").await;
    let path = browser
        .wait_for_path("after purchasing", |p| p.starts_with("/orders/"))
        .await;
    assert!(
        browser
            .text("order-status")
            .await
            .starts_with("Time left to pay: ")
    );
    path.trim_start_matches("/orders/").to_owned()
}

#[tokio::test]
async fn a_ticket_is_sold_bought_paid_and_then_locked_for_its_seller() {
    let seller_email = format!("{}@test.com", unique("seller"));
    let buyer_email = format!("{}@test.com", unique("buyer"));
    let title = unique("Concert");

    let seller = Browser::open("seller").await;
    sign_up(&seller, &seller_email).await;
    let ticket_id = sell(&seller, &title, "25.5").await;
    seller.screenshot("landing-with-ticket").await;
    assert!(seller.body_text().await.contains(&title));
    sign_out(&seller).await;

    let buyer = Browser::open("buyer").await;
    sign_up(&buyer, &buyer_email).await;
    let order_id = purchase(&buyer, &title).await;
    assert!(
        buyer.body_text().await.contains("€25.50"),
        "{}",
        buyer.body_text().await
    );
    buyer.screenshot("order-before-paying").await;
    pay_with_card(&buyer, VISA).await;
    buyer
        .wait_for_path("after paying", |p| p == "/orders")
        .await;
    // The order becomes complete once payments' event has reached orders.
    buyer
        .reload_until_present(
            &format!(r#"li[data-order-id="{order_id}"][data-status="complete"]"#),
            Duration::from_secs(15),
        )
        .await;
    assert!(buyer.body_text().await.contains("Paid"));
    buyer.screenshot("my-orders-paid").await;
    buyer.visit(&format!("/orders/{order_id}")).await;
    assert_eq!(buyer.text("order-status").await, "Order paid.");
    buyer.assert_no_console_errors().await;
    buyer.close().await;

    // The sold ticket is gone from the listing, and its seller can no longer edit it.
    sign_in(&seller, &seller_email).await;
    assert!(
        !seller.body_text().await.contains(&title),
        "a sold ticket is not for sale any more"
    );
    // Checked before the deliberate 400 below, which the browser logs as a failed request.
    seller.assert_no_console_errors().await;
    let (status, body) = seller
        .fetch(
            "PUT",
            &format!("/api/tickets/{ticket_id}"),
            json!({ "title": "Renamed", "price": 30 }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body,
        json!({ "errors": [{ "message": "Ticket is already reserved and unable to edit." }] })
    );
    seller.close().await;
}

#[tokio::test]
async fn an_order_left_unpaid_expires_and_frees_its_ticket() {
    let window = expiration_window();
    assert!(
        window <= Duration::from_secs(60),
        "run with a short EXPIRATION_WINDOW_SECONDS (scripts/e2e.sh)"
    );
    let seller = Browser::open("expiry-seller").await;
    let title = unique("Matinee");
    sign_up(&seller, &format!("{}@test.com", unique("seller"))).await;
    sell(&seller, &title, "9").await;
    sign_out(&seller).await;
    seller.close().await;

    let buyer = Browser::open("expiry-buyer").await;
    sign_up(&buyer, &format!("{}@test.com", unique("buyer"))).await;
    let order_id = purchase(&buyer, &title).await;
    // The countdown runs in the page and ends in "Order expired." without a reload.
    let deadline = std::time::Instant::now() + window + Duration::from_secs(5);
    loop {
        let status = buyer.text("order-status").await;
        if status == "Order expired." {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {status:?} after the window"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        buyer
            .client
            .find(fantoccini::Locator::Id("pay-button"))
            .await
            .is_err(),
        "no Pay button once expired"
    );
    buyer.screenshot("order-expired").await;
    // The expiration service cancels it, and the ticket is for sale again.
    buyer.visit("/orders").await;
    buyer
        .reload_until_present(
            &format!(r#"li[data-order-id="{order_id}"][data-status="cancelled"]"#),
            Duration::from_secs(15),
        )
        .await;
    assert!(buyer.body_text().await.contains("Expired"));
    buyer.visit("/").await;
    buyer
        .reload_until_text(&title, Duration::from_secs(15))
        .await;
    buyer.visit(&format!("/orders/{order_id}")).await;
    assert!(
        buyer.text("order-status").await.starts_with("Order "),
        "an expired order's page still renders"
    );
    buyer.assert_no_console_errors().await;
    buyer.close().await;
}

#[tokio::test]
async fn a_bad_sign_up_shows_the_errors_next_to_the_fields_and_keeps_the_email() {
    let browser = Browser::open("signup-errors").await;
    browser.visit("/auth/signup").await;
    browser.fill("email", "not-an-email").await;
    browser.fill("password", "abc").await;
    browser.click("signup-form-button").await;
    let alert = browser.text("errors").await;
    assert!(alert.contains("Oh snap!"), "{alert}");
    assert!(
        browser
            .text("email-error")
            .await
            .contains("Email must be valid.")
    );
    assert!(
        browser
            .text("password-error")
            .await
            .contains("Password must be between 5 and 20 characters.")
    );
    assert_eq!(browser.value("email").await, "not-an-email");
    assert_eq!(browser.value("password").await, "");
    // Keyboard and screen-reader users land on the first field to fix.
    let focused = browser
        .client
        .active_element()
        .await
        .expect("the focused element");
    assert_eq!(
        focused.attr("id").await.expect("its id").as_deref(),
        Some("email")
    );
    browser.screenshot("signup-errors").await;
    browser.visit("/no/such/page").await;
    assert!(
        browser.body_text().await.contains("404")
            || browser.body_text().await.contains("not found")
            || browser.body_text().await.contains("Not Found")
    );
    browser.close().await;
}
