//! Cross-site form posts are refused (login CSRF and friends): a browser tells where a form came
//! from with `Sec-Fetch-Site` (every current browser) and `Origin` (on every POST). A state-changing
//! request whose page was on another site, including a sibling subdomain that `SameSite` cookies
//! would let through, is answered 403 with an HTML page before any handler runs.
//!
//! Requests carrying neither header (API tools, tests, very old browsers) pass this check: no
//! browser that an attacker's page could drive omits both. They still need the form's CSRF token
//! (`crate::csrf`, checked after this layer).

use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::api::FormErrors;
use crate::views::{ErrorPage, Viewer, render};

/// What the refusal page says.
pub const CROSS_SITE_MESSAGE: &str =
    "This form was sent from another site. Open the page on this site and try again.";

/// Middleware: refuses unsafe methods sent from another site.
pub async fn refuse_cross_site_posts(request: Request, next: Next) -> Response {
    let unsafe_method = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if unsafe_method && let Some(reason) = cross_site(request.headers()) {
        tracing::warn!(path = %request.uri().path(), reason, "cross-site form post refused");
        return render(
            StatusCode::FORBIDDEN,
            &ErrorPage {
                viewer: Viewer::Unknown,
                heading: "Request refused".into(),
                message: CROSS_SITE_MESSAGE.into(),
                errors: FormErrors::default(),
            },
        );
    }
    next.run(request).await
}

/// Why the request comes from another site, if it does.
fn cross_site(headers: &HeaderMap) -> Option<&'static str> {
    if let Some(site) = headers.get("sec-fetch-site") {
        // `none`: typed in or bookmarked by the user; `same-origin`: our own page.
        return match site.as_bytes() {
            b"same-origin" | b"none" => None,
            _ => Some("Sec-Fetch-Site is not same-origin"),
        };
    }
    let origin = headers.get(header::ORIGIN)?;
    let Some(origin_host) = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, authority)| authority)
    else {
        // `Origin: null` (sandboxed frames, some redirects) or garbage: not provably ours.
        return Some("Origin is opaque or unreadable");
    };
    // The host the browser asked for, as our proxy saw it (X-Forwarded-Host) or as it reached us.
    let host = headers
        .get("x-forwarded-host")
        .or_else(|| headers.get(header::HOST))
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.split(',').next())
        .map(str::trim);
    match host {
        Some(host) if host.eq_ignore_ascii_case(origin_host) => None,
        _ => Some("Origin is not this site"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn our_own_pages_and_non_browsers_pass() {
        for ok in [
            headers(&[]),
            headers(&[("sec-fetch-site", "same-origin")]),
            headers(&[("sec-fetch-site", "none")]),
            headers(&[("origin", "https://ticketing.io"), ("host", "ticketing.io")]),
            headers(&[
                ("origin", "http://127.0.0.1:8080"),
                ("host", "client:3000"),
                ("x-forwarded-host", "127.0.0.1:8080"),
            ]),
        ] {
            assert_eq!(cross_site(&ok), None, "{ok:?}");
        }
    }

    #[test]
    fn other_sites_and_sibling_subdomains_are_refused() {
        for refused in [
            headers(&[("sec-fetch-site", "cross-site")]),
            headers(&[("sec-fetch-site", "same-site")]),
            headers(&[
                ("sec-fetch-site", "same-site"),
                ("origin", "https://ticketing.io"),
                ("host", "ticketing.io"),
            ]),
            headers(&[("origin", "https://evil.example"), ("host", "ticketing.io")]),
            headers(&[
                ("origin", "https://shop.ticketing.io"),
                ("host", "ticketing.io"),
            ]),
            headers(&[("origin", "null"), ("host", "ticketing.io")]),
            headers(&[("origin", "https://ticketing.io")]),
        ] {
            assert!(cross_site(&refused).is_some(), "{refused:?}");
        }
    }
}
