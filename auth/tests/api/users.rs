use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{spawn_app, spawn_app_with};
use common::testing::{errors, not_found};

#[tokio::test]
async fn signup_creates_the_user_sets_the_session_cookie_and_returns_201() {
    let app = spawn_app().await;
    let reply = app.signup("Test@Test.com", "password").await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.body["email"], "test@test.com");
    let id = reply.body["id"].as_str().expect("id");
    assert_eq!(id.len(), 24);
    assert_eq!(
        reply.body.as_object().map(|o| o.len()),
        Some(2),
        "only email and id: {}",
        reply.body
    );

    let set_cookie = reply.set_cookie.clone().expect("Set-Cookie");
    assert!(set_cookie.starts_with("express:sess="), "{set_cookie}");
    for attribute in ["path=/", "httponly", "samesite=lax"] {
        assert!(
            set_cookie.contains(attribute),
            "{attribute} in {set_cookie}"
        );
    }
    assert!(
        !set_cookie.contains("secure"),
        "not secure unless configured: {set_cookie}"
    );
    // The value is base64 of {"jwt": "<token>"}, exactly like cookie-session.
    let value = reply
        .cookie()
        .trim_start_matches("express:sess=")
        .to_owned();
    let session: Value =
        serde_json::from_slice(&STANDARD.decode(value).expect("base64")).expect("json");
    assert!(
        session["jwt"]
            .as_str()
            .is_some_and(|jwt| jwt.split('.').count() == 3),
        "{session}"
    );

    let current = app.current_user(Some(&reply.cookie())).await;
    assert_eq!(current["id"], id);
    assert_eq!(current["email"], "test@test.com");
    assert!(current["iat"].is_i64());
    assert!(current["exp"].as_i64() > current["iat"].as_i64());
}

#[tokio::test]
async fn signup_reports_every_failed_rule_in_order() {
    let app = spawn_app().await;
    let both = errors(&[
        ("Email must be valid.", Some("email")),
        (
            "Password must be between 5 and 20 characters.",
            Some("password"),
        ),
    ]);
    let cases = [
        json!({}),
        json!({ "email": "not-an-email", "password": "p" }),
        json!({ "email": 42, "password": ["x"] }),
        // The password is trimmed before its length is checked.
        json!({ "email": "", "password": "   abcd   " }),
        json!({ "email": "a@b.co x", "password": "123456789012345678901" }),
    ];
    for body in cases {
        let reply = app.post_json("/api/users/signup", &body).await;
        assert_eq!(
            (reply.status, &reply.body),
            (StatusCode::BAD_REQUEST, &both),
            "{body}"
        );
        assert!(reply.set_cookie.is_none());
    }
    let reply = app.signup("ok@test.com", "1234").await;
    assert_eq!(
        reply.body,
        errors(&[(
            "Password must be between 5 and 20 characters.",
            Some("password")
        )])
    );
    let reply = app.signup("ok@test.com", "  12345678901234567890  ").await;
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "20 characters after trimming is allowed"
    );
}

#[tokio::test]
async fn an_absent_body_is_validated_like_an_empty_object() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/api/users/signup"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["errors"][0]["field"], "email");
    assert_eq!(body["errors"][1]["field"], "password");
}

#[tokio::test]
async fn malformed_or_non_json_bodies_get_the_error_shape() {
    let app = spawn_app().await;
    let cases = [
        (
            "/api/users/signup",
            "application/json",
            "{\"email\":",
            StatusCode::BAD_REQUEST,
            "Request body is not valid JSON",
        ),
        (
            "/api/users/signin",
            "text/plain",
            "email=a@b.co",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        ),
    ];
    for (path, content_type, body, status, message) in cases {
        let reply = app.post_raw(path, content_type, body).await;
        assert_eq!(
            (reply.status, reply.body),
            (status, errors(&[(message, None)])),
            "{content_type} {body:?} to {path}"
        );
    }
}

#[tokio::test]
async fn signing_up_twice_with_one_email_in_any_case_is_refused() {
    let app = spawn_app().await;
    assert_eq!(
        app.signup("dup@test.com", "password").await.status,
        StatusCode::CREATED
    );
    for email in ["dup@test.com", " DUP@test.com "] {
        let reply = app.signup(email, "password2").await;
        assert_eq!(
            (reply.status, reply.body),
            (StatusCode::BAD_REQUEST, errors(&[("Email in use", None)]))
        );
    }
}

#[tokio::test]
async fn simultaneous_signups_with_one_email_create_exactly_one_account() {
    let app = spawn_app().await;
    let replies = join_all((0..12).map(|i| {
        let app = &app;
        async move { app.signup("race@test.com", &format!("password{i}")).await }
    }))
    .await;
    let created = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    let refused: Vec<&Value> = replies
        .iter()
        .filter(|r| r.status == StatusCode::BAD_REQUEST)
        .map(|r| &r.body)
        .collect();
    assert_eq!(created, 1, "exactly one signup wins");
    assert_eq!(refused.len(), 11);
    assert!(
        refused
            .iter()
            .all(|b| **b == errors(&[("Email in use", None)]))
    );
}

#[tokio::test]
async fn signin_validates_its_body() {
    let app = spawn_app().await;
    let reply = app
        .post_json(
            "/api/users/signin",
            &json!({ "email": "nope", "password": "   " }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.body,
        errors(&[
            ("Email must be valid.", Some("email")),
            ("You must provide a password.", Some("password"))
        ])
    );
}

#[tokio::test]
async fn signin_answers_the_same_for_unknown_emails_and_wrong_passwords() {
    let app = spawn_app().await;
    app.signup("known@test.com", "password").await;
    let unknown = app.signin("unknown@test.com", "password").await;
    let wrong = app.signin("known@test.com", "wrong-password").await;
    for reply in [unknown, wrong] {
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(reply.body, errors(&[("Invalid credentials.", None)]));
        assert!(reply.set_cookie.is_none());
    }
}

#[tokio::test]
async fn signin_with_the_right_password_starts_a_session() {
    let app = spawn_app().await;
    let id = app.signup("me@test.com", "password").await.body["id"].clone();
    // Email case and surrounding whitespace in the password do not matter.
    let reply = app.signin("ME@test.com", "  password ").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, json!({ "email": "me@test.com", "id": id }));
    assert_eq!(app.current_user(Some(&reply.cookie())).await["id"], id);
}

#[tokio::test]
async fn signout_clears_the_cookie_exactly_like_the_original() {
    let app = spawn_app().await;
    let cookie = app.signup("out@test.com", "password").await.cookie();
    let reply = app.signout(&cookie).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.header("set-cookie"),
        Some("express:sess=; path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT; httponly")
    );
    assert_eq!(reply.body, json!({}));
}

#[tokio::test]
async fn the_cookie_is_marked_secure_when_configured() {
    let app = spawn_app_with(&[("COOKIE_SECURE", "true"), ("JWT_TTL_SECONDS", "600")]).await;
    let set_cookie = app
        .signup("sec@test.com", "password")
        .await
        .set_cookie
        .expect("Set-Cookie");
    assert!(set_cookie.contains("; secure"), "{set_cookie}");
    assert!(set_cookie.contains("max-age=600"), "{set_cookie}");
}

#[tokio::test]
async fn currentuser_is_null_for_anonymous_garbage_forged_and_expired_sessions() {
    let app = spawn_app().await;
    assert_eq!(app.current_user(None).await, Value::Null);

    let now = chrono::Utc::now().timestamp();
    let claims = json!({ "id": "64b7f0c2a1b2c3d4e5f60718", "email": "x@test.com", "iat": now, "exp": now + 600 });
    let sign = |key: &str, claims: &Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
        )
        .expect("token")
    };
    let cookie_of = |token: &str| {
        format!(
            "express:sess={}",
            STANDARD.encode(json!({ "jwt": token }).to_string())
        )
    };

    let forged = cookie_of(&sign("another-key", &claims));
    let expired_claims =
        json!({ "id": "x", "email": "x@test.com", "iat": now - 7200, "exp": now - 3600 });
    let expired = cookie_of(&sign(common::testing::TEST_JWT_KEY, &expired_claims));
    let no_expiry = cookie_of(&sign(
        common::testing::TEST_JWT_KEY,
        &json!({ "id": "x", "email": "x@test.com", "iat": now }),
    ));
    for cookie in [
        "express:sess=garbage".to_owned(),
        "express:sess=".to_owned(),
        cookie_of("not.a.jwt"),
        forged,
        expired,
        no_expiry,
    ] {
        assert_eq!(
            app.current_user(Some(&cookie)).await,
            Value::Null,
            "{cookie}"
        );
    }
    // The genuine key does work, so the cases above fail for the right reason.
    let genuine = cookie_of(&sign(common::testing::TEST_JWT_KEY, &claims));
    assert_eq!(
        app.current_user(Some(&genuine)).await["email"],
        "x@test.com"
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_404_in_the_error_shape() {
    let app = spawn_app().await;
    let not_found = not_found();
    let reply = app.post_json("/api/users/currentuser", &json!({})).await;
    assert_eq!(
        (reply.status, &reply.body),
        (StatusCode::NOT_FOUND, &not_found)
    );
    let reply = app.get("/api/users/nothing", None).await;
    assert_eq!(
        (reply.status, &reply.body),
        (StatusCode::NOT_FOUND, &not_found)
    );
}

#[tokio::test]
async fn health_and_readiness_answer_when_the_database_is_up() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz", None).await.status, StatusCode::OK);
    let ready = app.get("/readyz", None).await;
    assert_eq!(
        (ready.status, ready.body),
        (StatusCode::OK, json!({ "status": "ready" }))
    );
}

#[tokio::test]
async fn signin_and_signup_are_rate_limited_per_client_address() {
    let app = spawn_app_with(&[("AUTH_RATE_LIMIT_PER_MINUTE", "3")]).await;
    let attempt = async |client: &str| {
        let forwarded = [("x-forwarded-for", client)];
        app.signin_with_headers(&forwarded, "who@test.com", "guess")
            .await
    };
    for _ in 0..3 {
        assert_eq!(attempt("203.0.113.7").await.status, StatusCode::BAD_REQUEST);
    }
    let limited = attempt("203.0.113.7").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        limited.body,
        errors(&[(
            "Too many attempts, please wait a minute and try again",
            None
        )])
    );
    // Other addresses (the test client itself, another forwarded one) keep their own budgets.
    assert_eq!(
        app.signup("new@test.com", "password").await.status,
        StatusCode::CREATED
    );
    assert_eq!(attempt("203.0.113.8").await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_flood_of_bad_passwords_for_one_email_slows_that_email_only_and_never_locks_it() {
    let app = spawn_app().await;
    for email in ["victim@test.com", "bystander@test.com"] {
        let reply = app.signup(email, "password").await;
        assert_eq!(reply.status, StatusCode::CREATED, "{email}");
    }
    for _ in 0..5 {
        assert_eq!(
            app.signin("victim@test.com", "wrong").await.status,
            StatusCode::BAD_REQUEST
        );
    }

    // Even the right password waits now: the delay is the account's, whoever asks.
    let slowed = app.signin("victim@test.com", "password").await;
    assert_eq!(slowed.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(slowed.header("retry-after"), Some("1"));
    assert_eq!(
        slowed.body,
        errors(&[(
            "Too many failed sign-ins for this account, please wait 1 second and try again",
            None
        )])
    );
    // Another account from the same address is not slowed.
    assert_eq!(
        app.signin("bystander@test.com", "password").await.status,
        StatusCode::OK
    );
    // After the wait the owner signs in, which clears the failures.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        app.signin("victim@test.com", "password").await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.signin("victim@test.com", "wrong").await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn the_address_the_web_client_vouches_for_with_the_key_gets_its_own_budget() {
    const KEY: &str = "client-address-key-for-these-tests";
    let app = spawn_app_with(&[
        ("AUTH_RATE_LIMIT_PER_MINUTE", "2"),
        ("CLIENT_ADDRESS_KEY", KEY),
    ])
    .await;
    // Every call comes from the same peer and forwarded hop (the web client, as the ingress saw it).
    let attempt = async |browser: &str, key: &str| {
        let headers = [
            ("x-forwarded-for", "10.1.0.5"),
            ("x-client-address", browser),
            ("x-client-address-key", key),
        ];
        app.signin_with_headers(&headers, &format!("{browser}@test.com"), "guess")
            .await
            .status
    };
    for _ in 0..2 {
        assert_eq!(attempt("203.0.113.1", KEY).await, StatusCode::BAD_REQUEST);
    }
    assert_eq!(
        attempt("203.0.113.1", KEY).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another browser behind the same client has its own budget.
    assert_eq!(attempt("203.0.113.2", KEY).await, StatusCode::BAD_REQUEST);
    // Without the right key the header is not believed: the forwarded hop counts, and a browser
    // cannot pick a fresh address for each attempt.
    assert_eq!(
        attempt("198.51.100.1", "a-guessed-key").await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        attempt("198.51.100.2", "a-guessed-key").await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        attempt("198.51.100.3", "a-guessed-key").await,
        StatusCode::TOO_MANY_REQUESTS
    );
}
