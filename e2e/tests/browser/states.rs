//! Every state an order and a ticket can be shown in, and the listing's paging and search, each
//! page checked like the accessibility test's (both widths, axe-core, keyboard, no overflow, no
//! console error) with its screenshots in `screenshots/<page>-<width>.png`.

use std::time::Duration;

use serde_json::json;

use crate::accessibility::{Findings, Visit, list_ticket};
use crate::browser::{Browser, expiration_window, unique};
use crate::purchase::{VISA, pay_with_card, sign_up};

/// Orders `ticket` through the API from the signed-in page: the order's id.
async fn order(browser: &Browser, ticket: &str) -> String {
    let (status, order) = browser
        .fetch("POST", "/api/orders", json!({ "ticketId": ticket }))
        .await;
    assert_eq!(status, 201, "{order}");
    order["id"].as_str().expect("an order id").to_owned()
}

#[tokio::test]
async fn every_state_of_an_order_and_of_a_ticket_has_an_accessible_page() {
    let mut findings = Findings::default();
    // Two people at once: a reservation lasts only the short window of `scripts/e2e.sh`.
    let seller = Browser::open("states-seller").await;
    let buyer = Browser::open("states-buyer").await;
    sign_up(&seller, &format!("{}@test.com", unique("states-seller"))).await;
    let mut tickets = Vec::new();
    for state in ["Expiring", "Cancelled", "Paid", "Reserved", "Available"] {
        tickets.push(list_ticket(&seller, &unique(&format!("{state} show")), 30.0).await);
    }

    sign_up(&buyer, &format!("{}@test.com", unique("states-buyer"))).await;
    let expired_order = order(&buyer, &tickets[0]).await;
    let expires = std::time::Instant::now() + expiration_window();
    let cancelled_order = order(&buyer, &tickets[1]).await;
    let (status, body) = buyer
        .fetch(
            "DELETE",
            &format!("/api/orders/{cancelled_order}"),
            json!({}),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let paid_order = order(&buyer, &tickets[2]).await;
    buyer.visit(&format!("/orders/{paid_order}")).await;
    pay_with_card(&buyer, VISA).await;
    buyer
        .wait_for_path("after paying", |p| p == "/orders")
        .await;

    let paid_page = format!("/orders/{paid_order}");
    buyer.visit(&paid_page).await;
    buyer
        .reload_until_text("Order paid.", Duration::from_secs(15))
        .await;
    findings
        .check(&buyer, "order-paid", Visit::Path(&paid_page), None)
        .await;
    let cancelled_page = format!("/orders/{cancelled_order}");
    findings
        .check(
            &buyer,
            "order-cancelled",
            Visit::Path(&cancelled_page),
            None,
        )
        .await;
    assert_eq!(buyer.text("order-status").await, "Order cancelled.");
    findings
        .check(
            &seller,
            "ticket-sold",
            Visit::Path(&format!("/tickets/{}", tickets[2])),
            None,
        )
        .await;
    findings
        .check(
            &seller,
            "ticket-for-sale",
            Visit::Path(&format!("/tickets/{}", tickets[4])),
            None,
        )
        .await;

    tokio::time::sleep(expires.saturating_duration_since(std::time::Instant::now())).await;
    let expired_page = format!("/orders/{expired_order}");
    buyer.visit(&expired_page).await;
    buyer
        .reload_until_text("Order expired.", Duration::from_secs(15))
        .await;
    findings
        .check(&buyer, "order-expired", Visit::Path(&expired_page), None)
        .await;

    // A reservation inside its window, from both sides; My Orders then shows every state.
    let payable_order = order(&buyer, &tickets[3]).await;
    buyer.visit("/orders").await;
    buyer
        .reload_until_present(
            &format!(r#"li[data-order-id="{expired_order}"][data-status="cancelled"]"#),
            Duration::from_secs(15),
        )
        .await;
    let text = buyer.body_text().await;
    for words in ["Awaiting payment", "Paid", "Expired", "Cancelled"] {
        assert!(
            text.contains(words),
            "{words:?} missing from My Orders:\n{text}"
        );
    }
    let reserved = format!("/tickets/{}", tickets[3]);
    seller.visit(&reserved).await;
    seller
        .reload_until_text("This ticket is reserved or sold.", Duration::from_secs(10))
        .await;
    findings
        .check(&seller, "ticket-reserved", Visit::Path(&reserved), None)
        .await;
    let payable = format!("/orders/{payable_order}");
    findings
        .check(&buyer, "order-payable", Visit::Path(&payable), None)
        .await;
    findings
        .check(
            &buyer,
            "my-orders-every-state",
            Visit::Path("/orders"),
            None,
        )
        .await;
    // The holder's view of its ticket links its order.
    findings
        .check(
            &buyer,
            "ticket-reserved-holder",
            Visit::Path(&reserved),
            None,
        )
        .await;
    seller.close().await;
    buyer.close().await;
    findings.assert_none();
}

#[tokio::test]
async fn the_listing_pages_twenty_tickets_at_a_time_and_searches_titles() {
    let browser = Browser::open("listing").await;
    let mut findings = Findings::default();
    sign_up(&browser, &format!("{}@test.com", unique("lister"))).await;
    let word = unique("Pagedshow").replace('-', "");
    for n in 1..=21 {
        list_ticket(
            &browser,
            &format!("{word} night {n:02}"),
            10.0 + f64::from(n),
        )
        .await;
    }

    let search = format!("/?q={word}");
    findings
        .check(&browser, "home-search", Visit::Path(&search), None)
        .await;
    let rows = browser
        .client
        .find_all(fantoccini::Locator::Css("tr.ticket-row"))
        .await
        .expect("the rows");
    assert_eq!(rows.len(), 20, "a page holds 20 tickets");
    assert!(
        browser
            .body_text()
            .await
            .contains(&format!("{word} night 01"))
    );

    browser.click("next-page").await;
    browser.wait_for_text(&format!("{word} night 21")).await;
    let next = browser
        .client
        .current_url()
        .await
        .expect("the next page's address");
    let next = format!("{}?{}", next.path(), next.query().unwrap_or_default());
    findings
        .check(&browser, "home-search-page-2", Visit::Path(&next), None)
        .await;
    let rows = browser
        .client
        .find_all(fantoccini::Locator::Css("tr.ticket-row"))
        .await
        .expect("the rows");
    assert_eq!(rows.len(), 1, "the 21st ticket, alone");
    assert!(
        browser
            .client
            .find(fantoccini::Locator::Id("next-page"))
            .await
            .is_err(),
        "no page after the last"
    );

    // The search box, as a visitor uses it.
    browser.visit("/").await;
    browser
        .fill("q", &format!("{} NIGHT 07", word.to_uppercase()))
        .await;
    browser.click("search-button").await;
    browser.wait_for_text(&format!("{word} night 07")).await;
    let rows = browser
        .client
        .find_all(fantoccini::Locator::Css("tr.ticket-row"))
        .await
        .expect("the rows");
    assert_eq!(rows.len(), 1, "titles match in any case");

    let nothing = format!("/?q={word}-nothing");
    findings
        .check(&browser, "home-search-none", Visit::Path(&nothing), None)
        .await;
    assert!(browser.text("no-tickets").await.contains("match"));
    browser.close().await;
    findings.assert_none();
}
