use common::events::{TicketCreated, TicketUpdated};
use common::money::Price;
use mongodb::bson::Bson;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use common::testing::{id_of, not_authorized};

use crate::helpers::{
    Reply, errors, new_order_id, order_cancelled, order_created, sentinel_created,
    sentinel_updated, spawn_app, user,
};

const TITLE_REQUIRED: &str = "Title is required.";
const TITLE_TOO_LONG: &str = "Title must be at most 200 characters.";
const PRICE_NOT_POSITIVE: &str = "Price must be larger than 0.";
const PRICE_TOO_HIGH: &str = "Price must be at most 1000000.";
const RESERVED: &str = "Ticket is already reserved and unable to edit.";

#[tokio::test]
async fn creating_a_ticket_requires_a_signed_in_user_even_before_validation() {
    let app = spawn_app().await;
    for cookie in [None, Some("express:sess=garbage")] {
        let reply = app.post_ticket(cookie, &json!({})).await;
        assert_eq!(
            (reply.status, reply.body),
            (StatusCode::UNAUTHORIZED, not_authorized())
        );
    }
    let reply = app.get("/api/tickets").await;
    assert_eq!(reply.body, json!([]), "nothing was created");
}

#[tokio::test]
async fn creating_a_ticket_reports_every_failed_rule_with_its_field() {
    let app = spawn_app().await;
    let owner = user();
    let both = errors(&[
        (TITLE_REQUIRED, Some("title")),
        (PRICE_NOT_POSITIVE, Some("price")),
    ]);
    let long_title = "x".repeat(201);
    let cases = [
        (json!({}), both.clone()),
        (json!({ "title": "   ", "price": 0 }), both.clone()),
        (json!({ "title": 12, "price": "abc" }), both.clone()),
        (json!({ "title": null, "price": [1] }), both.clone()),
        (json!({ "title": "", "price": -10 }), both.clone()),
        (
            json!({ "title": "Concert" }),
            errors(&[(PRICE_NOT_POSITIVE, Some("price"))]),
        ),
        (
            json!({ "price": 10 }),
            errors(&[(TITLE_REQUIRED, Some("title"))]),
        ),
        // Rounds to 0 cents.
        (
            json!({ "title": "Concert", "price": "0.004" }),
            errors(&[(PRICE_NOT_POSITIVE, Some("price"))]),
        ),
        (
            json!({ "title": long_title, "price": 10 }),
            errors(&[(TITLE_TOO_LONG, Some("title"))]),
        ),
        (
            json!({ "title": "Concert", "price": 1_000_000.01 }),
            errors(&[(PRICE_TOO_HIGH, Some("price"))]),
        ),
        (
            json!({ "title": "Concert", "price": 1e300 }),
            errors(&[(PRICE_TOO_HIGH, Some("price"))]),
        ),
        (
            json!({ "title": "", "price": "1e9" }),
            errors(&[
                (TITLE_REQUIRED, Some("title")),
                (PRICE_TOO_HIGH, Some("price")),
            ]),
        ),
    ];
    for (body, expected) in cases {
        let reply = app.post_ticket(Some(&owner.cookie), &body).await;
        assert_eq!(
            (reply.status, &reply.body),
            (StatusCode::BAD_REQUEST, &expected),
            "{body}"
        );
    }
    // An absent body is validated as `{}`.
    let response = app
        .client
        .post(app.url("/api/tickets"))
        .header("cookie", &owner.cookie)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.json::<Value>().await.expect("json"), both);

    assert_eq!(
        app.get("/api/tickets").await.body,
        json!([]),
        "nothing was created"
    );
    // The limits themselves are allowed.
    let title = "y".repeat(200);
    let reply = app
        .post_ticket(
            Some(&owner.cookie),
            &json!({ "title": title, "price": 1_000_000 }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
}

#[tokio::test]
async fn a_new_ticket_is_stored_in_cents_at_version_0_and_announced_once() {
    let app = spawn_app().await;
    let owner = user();
    let mut created = app.infra.observe::<TicketCreated>().await;

    let reply = app
        .post_ticket(
            Some(&owner.cookie),
            &json!({ "title": "  Concert  ", "price": "12.345" }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let id = reply.body["id"].as_str().expect("an id").to_owned();
    assert_eq!(id.len(), 24);
    assert_eq!(
        reply.body,
        json!({ "id": id, "title": "Concert", "price": 12.35, "userId": owner.id, "version": 0 })
    );

    let raw = app.infra.raw_ticket(&id).await;
    assert_eq!(raw.get("priceCents"), Some(&Bson::Int64(1235)));
    assert_eq!(
        raw.get("orderId"),
        Some(&Bson::Null),
        "orderId is stored as null: {raw}"
    );
    assert_eq!(raw.get("price"), None);

    let expected = TicketCreated {
        id: id.parse().expect("an id"),
        version: 0,
        title: "Concert".into(),
        price: Price::from_cents(1235),
        user_id: owner.id.clone(),
    };
    assert_eq!(created.next().await, expected);
    // Publishing it again with its stable message id is dropped by the broker as a duplicate.
    app.infra.publish(&expected).await;
    assert_eq!(created.rest_before(sentinel_created()).await, Vec::new());

    assert_eq!(app.get_ticket(&id).await.body, reply.body);
}

#[tokio::test]
async fn the_list_shows_the_free_tickets_of_every_owner_oldest_first() {
    let app = spawn_app().await;
    let (alice, bob) = (user(), user());
    let first = app.create_ticket(&alice, "First", 10.0).await;
    let second = app.create_ticket(&bob, "Second", 20.5).await;
    let third = app.create_ticket(&alice, "Third", 30.0).await;

    let reply = app.get("/api/tickets").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, json!([first, second, third]));

    let order_id = new_order_id();
    let second_id = second["id"].as_str().expect("id");
    app.infra.reserve(second_id, order_id).await;

    assert_eq!(app.get("/api/tickets").await.body, json!([first, third]));
    let reserved = app.get_ticket(second_id).await;
    assert_eq!(reserved.status, StatusCode::OK);
    assert_eq!(
        reserved.body,
        json!({ "id": second_id, "title": "Second", "price": 20.5, "userId": bob.id,
                "version": 1, "orderId": order_id })
    );
}

#[tokio::test]
async fn showing_a_ticket_answers_404_for_unknown_and_malformed_ids() {
    let app = spawn_app().await;
    for id in [
        "64b7f0c2a1b2c3d4e5f60718",
        "nope",
        "12-char-str!",
        "64b7f0c2a1b2c3d4e5f6071z",
    ] {
        let reply = app.get_ticket(id).await;
        reply.expect_not_found(id);
    }
}

#[tokio::test]
async fn updating_checks_auth_then_validation_then_existence_then_reservation_then_owner() {
    let app = spawn_app().await;
    let (owner, stranger) = (user(), user());
    let good = json!({ "title": "New title", "price": 15 });
    let bad = json!({ "title": "", "price": 0 });
    let unknown = "64b7f0c2a1b2c3d4e5f60718";

    // 1. anonymous, whatever else is wrong
    for (id, body) in [(unknown, &bad), ("nope", &good)] {
        let reply = app.put_ticket(id, None, body).await;
        assert_eq!(
            (reply.status, reply.body),
            (StatusCode::UNAUTHORIZED, not_authorized())
        );
    }
    // 2. validation before existence
    let reply = app.put_ticket(unknown, Some(&stranger.cookie), &bad).await;
    assert_eq!(
        (reply.status, reply.body),
        (
            StatusCode::BAD_REQUEST,
            errors(&[
                (TITLE_REQUIRED, Some("title")),
                (PRICE_NOT_POSITIVE, Some("price"))
            ])
        )
    );
    let reply = app
        .put_ticket(
            unknown,
            Some(&stranger.cookie),
            &json!({ "title": "x".repeat(201), "price": 2e6 }),
        )
        .await;
    assert_eq!(
        reply.body,
        errors(&[
            (TITLE_TOO_LONG, Some("title")),
            (PRICE_TOO_HIGH, Some("price"))
        ])
    );
    // 3. unknown or malformed id
    for id in [unknown, "nope"] {
        let reply = app.put_ticket(id, Some(&owner.cookie), &good).await;
        reply.expect_not_found(id);
    }
    // 5. not the owner
    let ticket = app.create_ticket(&owner, "Concert", 20.0).await;
    let id = ticket["id"].as_str().expect("id");
    let reply = app.put_ticket(id, Some(&stranger.cookie), &good).await;
    assert_eq!(
        (reply.status, reply.body),
        (StatusCode::UNAUTHORIZED, not_authorized())
    );
    // 4. reserved comes before ownership (as in the original), for the owner too
    app.infra.reserve(id, new_order_id()).await;
    for cookie in [&stranger.cookie, &owner.cookie] {
        let reply = app.put_ticket(id, Some(cookie), &good).await;
        assert_eq!(
            (reply.status, reply.body),
            (StatusCode::BAD_REQUEST, errors(&[(RESERVED, None)]))
        );
    }
    let stored = app.get_ticket(id).await.body;
    assert_eq!(
        (stored["title"].clone(), stored["version"].clone()),
        (json!("Concert"), json!(1))
    );
}

#[tokio::test]
async fn an_owner_edit_bumps_the_version_and_announces_it_without_order_id() {
    let app = spawn_app().await;
    let mut updated = app.infra.observe::<TicketUpdated>().await;
    let (owner, id) = app.new_ticket().await;
    let id = id.as_str();

    let reply = app
        .put_ticket(
            id,
            Some(&owner.cookie),
            &json!({ "title": " Opera ", "price": "99.999" }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.body,
        json!({ "id": id, "title": "Opera", "price": 100, "userId": owner.id, "version": 1 })
    );
    let reply = app
        .put_ticket(
            id,
            Some(&owner.cookie),
            &json!({ "title": "Ballet", "price": 7.5 }),
        )
        .await;
    assert_eq!(reply.body["version"], 2);
    assert_eq!(app.get_ticket(id).await.body, reply.body);
    assert_eq!(
        app.infra.raw_ticket(id).await.get("priceCents"),
        Some(&Bson::Int64(750))
    );

    let expected = |version, title: &str, cents| TicketUpdated {
        id: id.parse().expect("an id"),
        version,
        title: title.into(),
        price: Price::from_cents(cents),
        user_id: owner.id.clone(),
        order_id: None,
    };
    let mut events = vec![updated.next().await, updated.next().await];
    events.sort_by_key(|e| e.version);
    assert_eq!(
        events,
        vec![expected(1, "Opera", 10_000), expected(2, "Ballet", 750)]
    );
    assert_eq!(updated.rest_before(sentinel_updated()).await, Vec::new());
}

#[tokio::test]
async fn reservations_and_releases_from_the_bus_show_as_versions_over_http() {
    let app = spawn_app().await;
    let (owner, id) = app.new_ticket().await;
    let order_id = new_order_id();
    let opera = json!({ "title": "Opera", "price": 25 });

    app.infra.publish(&order_created(&id, order_id)).await;
    let reserved = app
        .wait_for_ticket(&id, |t| t["orderId"] == order_id.to_string())
        .await;
    assert_eq!(reserved["version"], 1);
    let reply = app.put_ticket(&id, Some(&owner.cookie), &opera).await;
    assert_eq!(reply.body, errors(&[(RESERVED, None)]));

    app.infra.publish(&order_cancelled(&id, order_id)).await;
    let released = app
        .wait_for_ticket(&id, |t| t.get("orderId").is_none())
        .await;
    assert_eq!(released["version"], 2);
    assert_eq!(app.get("/api/tickets").await.body[0]["id"], id.as_str());

    let reply = app.put_ticket(&id, Some(&owner.cookie), &opera).await;
    assert_eq!(
        (reply.status, reply.body["version"].clone()),
        (StatusCode::OK, json!(3))
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_404_in_the_error_shape() {
    let app = spawn_app().await;
    let owner = user();
    let ticket = app.create_ticket(&owner, "Concert", 20.0).await;
    let path = format!("/api/tickets/{}", ticket["id"].as_str().expect("id"));
    for (method, path) in [
        (Method::DELETE, path.as_str()),
        (Method::PATCH, path.as_str()),
        (Method::POST, path.as_str()),
        (Method::PUT, "/api/tickets"),
        (Method::DELETE, "/api/tickets"),
        (Method::GET, "/api/ticket"),
        (Method::GET, "/api/tickets/a/b"),
    ] {
        let reply = app
            .request(method.clone(), path, Some(&owner.cookie), None)
            .await;
        reply.expect_not_found(&format!("{method} {path}"));
    }
    assert_eq!(
        app.get_ticket(ticket["id"].as_str().expect("id"))
            .await
            .body,
        ticket
    );
}

#[tokio::test]
async fn health_and_readiness_answer_when_the_database_and_bus_are_up() {
    let app = spawn_app().await;
    let reply = app.get("/healthz").await;
    assert_eq!(
        (reply.status, reply.body),
        (StatusCode::OK, json!({ "status": "ok" }))
    );
    let reply = app.get("/readyz").await;
    assert_eq!(
        (reply.status, reply.body),
        (
            StatusCode::OK,
            json!({
                "status": "ready",
                "deadLetters": 0,
                "readModel": { "state": "live", "tickets": 0 },
            })
        )
    );
}

#[tokio::test]
async fn the_list_pages_through_free_tickets_oldest_first_with_a_link_to_the_next_page() {
    let app = spawn_app().await;
    let owner = user();
    let mut ids = Vec::new();
    for i in 0..5 {
        let ticket = app.create_ticket(&owner, &format!("Gig {i}"), 10.0).await;
        ids.push(ticket["id"].as_str().expect("id").to_owned());
    }
    let whole = app.get("/api/tickets").await;
    assert_eq!(whole.header("link"), None, "no page asked, no link");

    let mut seen = Vec::new();
    let mut next = Some("/api/tickets?limit=2".to_owned());
    let mut pages = 0;
    while let Some(path) = next {
        let page = app.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
        let rows = page.body.as_array().expect("an array body").clone();
        assert!(rows.len() <= 2, "{path}");
        seen.extend(
            rows.iter()
                .map(|t| t["id"].as_str().expect("id").to_owned()),
        );
        next = page.header("link").map(|link| {
            let (target, rel) = link.split_once(">; ").expect("a Link header");
            assert_eq!(rel, "rel=\"next\"");
            target.trim_start_matches('<').to_owned()
        });
        pages += 1;
    }
    assert_eq!(seen, ids, "every free ticket once, oldest first");
    assert_eq!(pages, 3);
    assert_eq!(whole.body.as_array().map(Vec::len), Some(5));

    let after_second = app.get(&format!("/api/tickets?after={}", ids[1])).await;
    let rest: Vec<&str> = after_second
        .body
        .as_array()
        .expect("an array body")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(
        rest,
        ids[2..].iter().map(String::as_str).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_page_asked_for_badly_is_refused_naming_the_parameter() {
    let app = spawn_app().await;
    for (query, fields) in [
        ("limit=0", vec!["limit"]),
        ("limit=101", vec!["limit"]),
        ("limit=ten", vec!["limit"]),
        ("limit=-1", vec!["limit"]),
        ("after=nope", vec!["after"]),
        (
            "limit=&after=64b7f0c2a1b2c3d4e5f6071",
            vec!["limit", "after"],
        ),
    ] {
        let reply = app.get(&format!("/api/tickets?{query}")).await;
        reply.expect_bad_fields(&fields, query);
    }
    // Unknown parameters are ignored, as before paging existed.
    let reply = app.get("/api/tickets?page=2&sort=desc").await;
    assert_eq!((reply.status, reply.header("link")), (StatusCode::OK, None));
}

#[tokio::test]
async fn a_title_search_finds_free_tickets_in_any_case_and_matches_its_text_literally() {
    let app = spawn_app().await;
    let owner = user();
    let mut ids = Vec::new();
    for title in ["Rock night", "Jazz", "ROCK & roll (live)", "Rock.n.roll"] {
        let ticket = app.create_ticket(&owner, title, 10.0).await;
        ids.push(ticket["id"].as_str().expect("id").to_owned());
    }
    let titles = |reply: &Reply| -> Vec<String> {
        reply
            .body
            .as_array()
            .expect("an array body")
            .iter()
            .filter_map(|t| t["title"].as_str().map(str::to_owned))
            .collect()
    };

    let rock = app.get("/api/tickets?q=rock").await;
    assert_eq!(
        titles(&rock),
        ["Rock night", "ROCK & roll (live)", "Rock.n.roll"]
    );
    // Pattern characters are text: "." matches only a dot, "(live)" only those six characters.
    assert_eq!(
        titles(&app.get("/api/tickets?q=k.n").await),
        ["Rock.n.roll"]
    );
    assert_eq!(
        titles(&app.get("/api/tickets?q=%28live%29").await),
        ["ROCK & roll (live)"]
    );
    assert_eq!(
        titles(&app.get("/api/tickets?q=.*").await),
        Vec::<String>::new()
    );

    // Paging keeps the search in its next link.
    let first = app.get("/api/tickets?q=rock&limit=2").await;
    assert_eq!(titles(&first), ["Rock night", "ROCK & roll (live)"]);
    let link = first.header("link").expect("a next page");
    assert!(link.contains("q=rock"), "{link}");
    assert!(link.contains(&format!("after={}", ids[2])), "{link}");

    let long = "x".repeat(201);
    let reply = app.get(&format!("/api/tickets?q={long}")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.body["errors"][0]["field"], "q");
    // A blank search is no search: the SPEC's whole listing.
    assert_eq!(
        app.get("/api/tickets?q=%20")
            .await
            .body
            .as_array()
            .map(Vec::len),
        Some(4)
    );
}

/// The ids of a listing's tickets, in order.
fn ids_of(reply: &Reply) -> Vec<String> {
    reply
        .body
        .as_array()
        .unwrap_or_else(|| panic!("an array body, got {}", reply.body))
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn mine_lists_the_sellers_own_tickets_free_or_reserved_a_page_at_a_time() {
    let app = spawn_app().await;
    let (seller, someone) = (user(), user());
    let mut ids = Vec::new();
    for title in ["Rock night", "Jazz", "Rock opera"] {
        ids.push(id_of(&app.create_ticket(&seller, title, 10.0).await));
    }
    let other = id_of(&app.create_ticket(&someone, "Rock elsewhere", 5.0).await);
    let order_id = new_order_id();
    app.infra.reserve(&ids[1], order_id).await;
    let mine = async |path: &str| {
        app.request(Method::GET, path, Some(&seller.cookie), None)
            .await
    };

    // Every page by the listing's rules; `mine=true` alone is the first page of 20.
    let all = mine("/api/tickets?mine=true").await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    assert_eq!(ids_of(&all), ids, "the seller's tickets only, oldest first");
    assert_eq!(all.header("link"), None);
    assert_eq!(all.header("cache-control"), Some("private, no-store"));
    assert_eq!(
        all.body[1]["orderId"],
        json!(order_id.to_string()),
        "reserved ones too"
    );
    assert_eq!(all.body[1]["userId"], json!(seller.id));
    assert!(all.body[0].get("orderId").is_none(), "{}", all.body);

    let first = mine("/api/tickets?mine=true&limit=2").await;
    assert_eq!(ids_of(&first), ids[..2]);
    let link = first.header("link").expect("a next page");
    assert_eq!(
        link,
        format!(
            "</api/tickets?mine=true&limit=2&after={}>; rel=\"next\"",
            ids[1]
        )
    );
    let target = link
        .trim_start_matches('<')
        .split_once(">; ")
        .expect("a target")
        .0;
    let second = mine(target).await;
    assert_eq!(ids_of(&second), ids[2..]);
    assert_eq!(second.header("link"), None);

    // The title search applies to the seller's own tickets.
    let rock = mine("/api/tickets?mine=true&q=ROCK").await;
    assert_eq!(ids_of(&rock), [ids[0].clone(), ids[2].clone()]);
    assert!(!ids_of(&rock).contains(&other));

    // Someone else sees only their own.
    let theirs = app
        .request(
            Method::GET,
            "/api/tickets?mine=true",
            Some(&someone.cookie),
            None,
        )
        .await;
    assert_eq!(ids_of(&theirs), [other]);
}

#[tokio::test]
async fn mine_signed_out_is_a_401_in_the_error_shape_whatever_else_is_asked() {
    let app = spawn_app().await;
    app.create_ticket(&user(), "Gig", 10.0).await;
    for (query, cookie) in [
        ("mine=true", None),
        ("mine=true", Some("express:sess=garbage")),
        ("mine=true&limit=0&after=nope", None),
    ] {
        let reply = app
            .request(Method::GET, &format!("/api/tickets?{query}"), cookie, None)
            .await;
        assert_eq!(
            (reply.status, reply.body),
            (StatusCode::UNAUTHORIZED, not_authorized()),
            "{query} {cookie:?}"
        );
    }
}

#[tokio::test]
async fn a_bad_mine_is_refused_naming_it_beside_the_other_bad_parameters() {
    let app = spawn_app().await;
    let seller = user();
    for (query, fields) in [
        ("mine=yes", vec!["mine"]),
        ("mine=1", vec!["mine"]),
        ("mine=yes&limit=0", vec!["mine", "limit"]),
        ("mine=true&limit=101", vec!["limit"]),
        ("mine=true&after=nope", vec!["after"]),
    ] {
        let reply = app
            .request(
                Method::GET,
                &format!("/api/tickets?{query}"),
                Some(&seller.cookie),
                None,
            )
            .await;
        reply.expect_bad_fields(&fields, query);
        assert!(
            reply.body["errors"]
                .as_array()
                .expect("errors")
                .iter()
                .all(|e| e["message"].is_string()),
            "{}",
            reply.body
        );
    }
}

#[tokio::test]
async fn the_plain_listing_is_the_same_bytes_signed_in_or_with_mine_false() {
    let app = spawn_app().await;
    let seller = user();
    let free = id_of(&app.create_ticket(&seller, "Free", 10.0).await);
    let held = id_of(&app.create_ticket(&seller, "Held", 10.0).await);
    app.infra.reserve(&held, new_order_id()).await;

    let plain = app.get("/api/tickets").await;
    assert_eq!(ids_of(&plain), [free]);
    for (path, cookie) in [
        ("/api/tickets", Some(seller.cookie.as_str())),
        ("/api/tickets?mine=false", Some(seller.cookie.as_str())),
        ("/api/tickets?mine=", None),
    ] {
        let reply = app.request(Method::GET, path, cookie, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(reply.text, plain.text, "{path}");
        assert_eq!(reply.header("link"), None, "{path}");
        assert_eq!(reply.header("cache-control"), None, "{path}");
    }
}
