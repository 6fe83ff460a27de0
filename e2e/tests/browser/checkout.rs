//! The order page's checkout through Stripe.js: `scripts/e2e.sh` runs the client with a test
//! publishable key and the stub of Stripe.js (`e2e/static/stripe-stub.js`), and payments with the
//! Stripe double, so a card typed into the page becomes a PaymentMethod, payments creates and
//! confirms a PaymentIntent, and a card that asks for 3-D Secure opens the stub's authentication,
//! as Stripe's test cards do. Screenshots of each step at both widths.

use std::time::Duration;

use serde_json::json;

use crate::accessibility::list_ticket;
use crate::browser::{Browser, unique};
use crate::purchase::{VISA, pay_with_card, sign_up};

const THREE_D_SECURE: &str = "4000 0027 6000 3184";
const DECLINED: &str = "4000 0000 0000 0002";

/// The widths the steps are photographed at.
const SCREENS: [(&str, u32, u32, bool); 2] = [("1280", 1280, 800, false), ("375", 375, 812, true)];

/// Screenshots of the page as it is now, at both widths (`screenshots/<name>-<width>.png`).
async fn photograph(browser: &Browser, name: &str) {
    for (width_name, width, height, mobile) in SCREENS {
        browser.emulate_screen(width, height, mobile).await;
        browser
            .full_page_screenshot(&format!("screenshots/{name}-{width_name}.png"))
            .await;
    }
    browser.emulate_screen(1280, 800, false).await;
}

/// A buyer's new order for a ticket the seller's browser listed: its page, opened.
async fn order_page(browser: &Browser, title: &str) -> String {
    let ticket = list_ticket(browser, title, 12.5).await;
    let (status, order) = browser
        .fetch("POST", "/api/orders", json!({ "ticketId": ticket }))
        .await;
    assert_eq!(status, 201, "{order}");
    let id = order["id"].as_str().expect("an order id").to_owned();
    browser.visit(&format!("/orders/{id}")).await;
    id
}

/// Waits for My Orders to show the order paid.
async fn paid(browser: &Browser, order_id: &str) {
    browser
        .wait_for_path("after paying", |p| p == "/orders")
        .await;
    browser
        .reload_until_present(
            &format!(r#"li[data-order-id="{order_id}"][data-status="complete"]"#),
            Duration::from_secs(15),
        )
        .await;
}

/// The messages of the page's alert, once it shows.
async fn alert(browser: &Browser) -> String {
    browser.wait_for_text("Oh snap!").await;
    browser.text("errors").await
}

#[tokio::test]
async fn a_card_pays_through_stripe_js_and_a_3d_secure_card_once_authenticated() {
    let browser = Browser::open("checkout").await;
    // One account sells and buys: tickets are listed through the API, orders made through it.
    sign_up(&browser, &format!("{}@test.com", unique("checkout"))).await;

    let order = order_page(&browser, &unique("Card paid gig")).await;
    browser.fill("stub-card-number", VISA).await;
    photograph(&browser, "checkout-card").await;
    browser.click("pay-button").await;
    paid(&browser, &order).await;

    let order = order_page(&browser, &unique("3-D Secure gig")).await;
    pay_with_card(&browser, THREE_D_SECURE).await;
    browser.wait_for_text("3-D Secure (test)").await;
    photograph(&browser, "checkout-3d-secure").await;
    browser.click("stub-3ds-complete").await;
    paid(&browser, &order).await;
    browser.visit(&format!("/orders/{order}")).await;
    assert_eq!(browser.text("order-status").await, "Order paid.");
    browser.assert_no_console_errors().await;
    browser.close().await;
}

#[tokio::test]
async fn a_declined_card_and_a_failed_3d_secure_are_said_in_the_alert_and_another_card_pays() {
    let browser = Browser::open("checkout-refused").await;
    sign_up(&browser, &format!("{}@test.com", unique("refused"))).await;
    let order = order_page(&browser, &unique("Refused gig")).await;

    pay_with_card(&browser, DECLINED).await;
    assert!(alert(&browser).await.contains("Your card was declined."));
    photograph(&browser, "checkout-declined").await;

    pay_with_card(&browser, THREE_D_SECURE).await;
    browser.click("stub-3ds-fail").await;
    browser.wait_for_text("unable to authenticate").await;

    pay_with_card(&browser, VISA).await;
    paid(&browser, &order).await;
    browser.close().await;
}

#[tokio::test]
async fn an_order_cancelled_during_its_3d_secure_is_refunded_when_the_buyer_authenticates() {
    let browser = Browser::open("checkout-refund").await;
    sign_up(&browser, &format!("{}@test.com", unique("refund"))).await;
    let order = order_page(&browser, &unique("Cancelled gig")).await;

    pay_with_card(&browser, THREE_D_SECURE).await;
    browser.wait_for_text("3-D Secure (test)").await;
    // The buyer cancels the order in another tab while Stripe waits for the authentication.
    let (status, body) = browser
        .fetch("DELETE", &format!("/api/orders/{order}"), json!({}))
        .await;
    assert_eq!(status, 204, "{body}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    browser.click("stub-3ds-complete").await;

    browser.visit(&format!("/orders/{order}")).await;
    browser
        .reload_until_text(
            "Order cancelled. Your payment was refunded.",
            Duration::from_secs(20),
        )
        .await;
    photograph(&browser, "order-refunded").await;
    browser.close().await;
}
