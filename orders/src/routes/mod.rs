//! Every route of the service, one module per resource.

use axum::Router;

use crate::app::AppState;

pub mod orders;

pub fn router() -> Router<AppState> {
    Router::new().merge(orders::router())
}
