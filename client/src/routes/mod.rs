//! Every route of the client, one module per group of pages.

use axum::Router;
use axum::extract::State;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::api::Forwarded;
use crate::app::AppState;
use crate::assets;
use crate::csrf::require_form_token;
use crate::page::not_found;

pub mod auth;
pub mod health;
pub mod home;
pub mod orders;
pub mod tickets;

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(home::router())
        .merge(auth::router())
        .merge(tickets::router())
        .merge(orders::router())
        .merge(health::router())
        .route("/static/app.css", get(assets::stylesheet))
        .route("/static/forms.js", get(assets::forms_script))
        .route("/static/order.js", get(assets::order_script))
        // Only on the routes above: a POST to an unknown path stays a 404 page.
        .route_layer(from_fn_with_state(state.csrf.clone(), require_form_token))
        .fallback(unknown_path)
        .method_not_allowed_fallback(unknown_path)
        .with_state(state)
}

/// The HTML 404 page, with the header of whoever is looking. The page is shown even when the API is
/// down (with a header that shows the brand only): the answer is still "no such page".
async fn unknown_path(State(state): State<AppState>, fwd: Forwarded) -> Response {
    not_found(&state.api, &fwd).await.into_response()
}
