//! Every route of the service, one module per resource.

use axum::Router;

use crate::app::AppState;

pub mod tickets;

pub fn router() -> Router<AppState> {
    Router::new().merge(tickets::router())
}
