//! HTTP answers as the services' tests read them, and the error bodies of the SPEC they compare
//! them with.

use reqwest::header::{COOKIE, HeaderMap, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A response read whole: status, headers, the first `Set-Cookie`, the text and its JSON (`Null`
/// when the body is empty).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub set_cookie: Option<String>,
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// Reads the whole response; panics (showing the text) when a non-empty body is not JSON.
    pub async fn read(response: reqwest::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let set_cookie = response
            .headers()
            .get(SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await.expect("a response body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("a JSON body, got {text:?}"))
        };
        Self {
            status,
            headers,
            set_cookie,
            body,
            text,
        }
    }

    /// The `name=value` part of the session cookie, to send back as `Cookie`.
    pub fn cookie(&self) -> String {
        let set_cookie = self.set_cookie.as_deref().expect("a Set-Cookie header");
        session_pair(set_cookie).expect("a well-formed Set-Cookie")
    }

    /// The value of header `name`, if it is there and readable.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `id` of the body.
    pub fn id(&self) -> String {
        id_of(&self.body)
    }

    /// The body, after checking the status (the body is shown when it differs).
    pub fn expect(self, status: StatusCode, what: &str) -> Value {
        assert_eq!(self.status, status, "{what}: {}", self.body);
        self.body
    }

    /// Checks for 404 with the SPEC's `Not Found` body; `what` names the request in a failure.
    pub fn expect_not_found(self, what: &str) {
        assert_eq!(
            (self.status, self.body),
            (StatusCode::NOT_FOUND, not_found()),
            "{what}"
        );
    }

    /// The message of the only entry of an error body.
    pub fn message(&self) -> Option<&str> {
        match self.body["errors"].as_array().map(Vec::as_slice) {
            Some([entry]) => entry["message"].as_str(),
            _ => None,
        }
    }

    /// Checks for a 400 whose error entries name exactly `fields`, in order.
    pub fn expect_bad_fields(&self, fields: &[&str], what: &str) {
        let named: Vec<&str> = self.body["errors"]
            .as_array()
            .map(|errors| errors.iter().filter_map(|e| e["field"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(
            (self.status, named.as_slice()),
            (StatusCode::BAD_REQUEST, fields),
            "{what}: {}",
            self.body
        );
    }

    /// Checks for `status` with the error body of exactly one `message`.
    pub fn expect_error(&self, status: StatusCode, message: &str, what: &str) {
        assert_eq!(
            (self.status, self.message()),
            (status, Some(message)),
            "{what}: {}",
            self.body
        );
    }
}

/// The `name=value` of a `Set-Cookie` header value.
pub fn session_pair(set_cookie: &str) -> Option<String> {
    let cookie = cookie::Cookie::parse(set_cookie).ok()?;
    // `stripped` drops the attributes; `Display` does not percent-encode.
    Some(cookie.stripped().to_string())
}

/// Sends a request with an optional `Cookie` header and JSON body, and reads the reply.
pub async fn send(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    cookie: Option<&str>,
    body: Option<&Value>,
) -> Reply {
    let request = with_cookie_and_json(client.request(method, url), cookie, body);
    Reply::read(request.send().await.expect("the request is answered")).await
}

/// `request` with the `Cookie` header and the JSON body, each when given.
pub fn with_cookie_and_json(
    request: reqwest::RequestBuilder,
    cookie: Option<&str>,
    body: Option<&Value>,
) -> reqwest::RequestBuilder {
    let request = match cookie {
        Some(cookie) => request.header(COOKIE, cookie),
        None => request,
    };
    match body {
        Some(body) => request.json(body),
        None => request,
    }
}

/// The `name=value` of a response's `Set-Cookie` header, if any: what a browser sends back.
pub fn returned_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(session_pair)
}

/// The `id` of a JSON object.
pub fn id_of(body: &Value) -> String {
    body["id"]
        .as_str()
        .unwrap_or_else(|| panic!("an id in {body}"))
        .to_owned()
}

/// `{"errors":[...]}` from `(message, field)` pairs, as the SPEC shapes every error.
pub fn errors(entries: &[(&str, Option<&str>)]) -> Value {
    let entries: Vec<Value> = entries
        .iter()
        .map(|(message, field)| match field {
            Some(field) => json!({ "message": message, "field": field }),
            None => json!({ "message": message }),
        })
        .collect();
    json!({ "errors": entries })
}

/// The body of a 401.
pub fn not_authorized() -> Value {
    errors(&[("Not authorized", None)])
}

/// The body of a 404 (unknown route, method or resource).
pub fn not_found() -> Value {
    errors(&[("Not Found", None)])
}
