//! The stylesheet and scripts, compiled into the binary so it is self-contained (no CDN, no build
//! step).

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;

pub const STYLESHEET: &str = include_str!("../static/app.css");
/// Forms: price reformatting, buttons disabled while a form is in flight, the sign-out auto-submit.
pub const FORMS_SCRIPT: &str = include_str!("../static/forms.js");
/// The order page: the countdown and the Stripe.js checkout.
pub const ORDER_SCRIPT: &str = include_str!("../static/order.js");

/// A short cache: the assets change only with a new deployment.
const CACHE: &str = "public, max-age=300";

pub async fn stylesheet() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/css; charset=utf-8"),
            (CACHE_CONTROL, CACHE),
        ],
        STYLESHEET,
    )
}

pub async fn forms_script() -> impl IntoResponse {
    script(FORMS_SCRIPT)
}

pub async fn order_script() -> impl IntoResponse {
    script(ORDER_SCRIPT)
}

fn script(body: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (CACHE_CONTROL, CACHE),
        ],
        body,
    )
}
