use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::TestContext;

#[tokio::test]
async fn health_and_readiness_answer_when_redis_and_nats_are_up() {
    let ctx = TestContext::new().await;
    let app = ctx.spawn_app().await;

    assert_eq!(
        app.get("/healthz").await,
        (StatusCode::OK, json!({ "status": "ok" }))
    );
    assert_eq!(
        app.get("/readyz").await,
        (
            StatusCode::OK,
            json!({ "status": "ready", "deadLetters": 0 })
        )
    );
}

#[tokio::test]
async fn the_service_has_no_api_and_answers_404_in_the_error_shape() {
    let ctx = TestContext::new().await;
    let app = ctx.spawn_app().await;

    for path in ["/api/expiration", "/api/orders", "/"] {
        assert_eq!(
            app.get(path).await,
            (
                StatusCode::NOT_FOUND,
                json!({ "errors": [{ "message": "Not Found" }] })
            ),
            "{path}"
        );
    }
}
