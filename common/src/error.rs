//! One error type for every HTTP handler, rendered as `{"errors":[{"message", "field"?}]}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mongodb::bson::oid::ObjectId;
use serde::{Deserialize, Serialize};

use crate::store::{StoreError, parse_object_id};

/// One entry of the error envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEntry {
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub field: Option<String>,
}

impl ErrorEntry {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            field: None,
        }
    }

    pub fn for_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            field: Some(field.into()),
        }
    }
}

/// The JSON envelope every error response carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub errors: Vec<ErrorEntry>,
}

pub type ApiResult<T> = Result<T, ApiError>;

pub const NOT_AUTHORIZED: &str = "Not authorized";
pub const NOT_FOUND: &str = "Not Found";
pub const SOMETHING_WENT_WRONG: &str = "Something went wrong";
pub const DATABASE_UNAVAILABLE: &str = "Error connecting to database";
pub const SERVICE_UNAVAILABLE: &str = "Service temporarily unavailable, please retry";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Request validation: one entry per failed rule, each with its field.
    #[error("request validation failed")]
    Validation(Vec<ErrorEntry>),
    /// A business rule refused the request (400, one message, no field).
    #[error("{0}")]
    BadRequest(String),
    #[error("not authorized")]
    NotAuthorized,
    #[error("not found")]
    NotFound,
    /// The record changed under us more times than we are willing to retry.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("request body too large")]
    PayloadTooLarge,
    /// A rate limit: 429 with `Retry-After`; `message` is for the user.
    #[error("too many requests")]
    TooManyRequests {
        retry_after: std::time::Duration,
        message: String,
    },
    /// A third party (Stripe) failed; `message` is safe to show to the user.
    #[error("{message}")]
    Upstream { status: StatusCode, message: String },
    /// Too much work queued (password hashing): 503 with `Retry-After`, so the client tries again
    /// shortly instead of waiting behind work it would give up on.
    #[error("overloaded")]
    Overloaded { retry_after: std::time::Duration },
    /// The database cannot be reached: 503 so clients and load balancers retry.
    #[error("database unavailable")]
    DatabaseUnavailable(#[source] anyhow::Error),
    /// The event bus cannot be reached.
    #[error("event bus unavailable")]
    BusUnavailable(#[source] anyhow::Error),
    /// Anything else: logged with its cause chain, answered with a generic 500.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest(message.into())
    }

    /// A client over its request budget, which refills in `retry_after`.
    pub fn too_many_requests(retry_after: std::time::Duration) -> Self {
        Self::TooManyRequests {
            retry_after,
            message: "Too many attempts, please wait a minute and try again".to_owned(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Validation(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotAuthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Upstream { status, .. } => *status,
            Self::DatabaseUnavailable(_) | Self::BusUnavailable(_) | Self::Overloaded { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn body(&self) -> ErrorBody {
        let errors = match self {
            Self::Validation(entries) => entries.clone(),
            Self::BadRequest(message)
            | Self::Conflict(message)
            | Self::UnsupportedMediaType(message) => vec![ErrorEntry::new(message.clone())],
            Self::NotAuthorized => vec![ErrorEntry::new(NOT_AUTHORIZED)],
            Self::NotFound => vec![ErrorEntry::new(NOT_FOUND)],
            Self::PayloadTooLarge => vec![ErrorEntry::new("Request body is too large")],
            Self::TooManyRequests { message, .. } => vec![ErrorEntry::new(message.clone())],
            Self::Upstream { message, .. } => vec![ErrorEntry::new(message.clone())],
            Self::DatabaseUnavailable(_) => vec![ErrorEntry::new(DATABASE_UNAVAILABLE)],
            Self::BusUnavailable(_) => vec![ErrorEntry::new(SERVICE_UNAVAILABLE)],
            Self::Overloaded { .. } => vec![ErrorEntry::new(
                "The service is busy, please try again in a moment",
            )],
            Self::Internal(_) => vec![ErrorEntry::new(SOMETHING_WENT_WRONG)],
        };
        ErrorBody { errors }
    }
}

impl From<mongodb::error::Error> for ApiError {
    fn from(err: mongodb::error::Error) -> Self {
        if crate::store::is_unavailable(&err) {
            Self::DatabaseUnavailable(err.into())
        } else {
            Self::Internal(err.into())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Internal(cause) => {
                tracing::error!(error = %format!("{cause:#}"), "request failed unexpectedly");
            }
            Self::DatabaseUnavailable(cause) | Self::BusUnavailable(cause) => {
                tracing::warn!(error = %format!("{cause:#}"), "dependency unavailable");
            }
            Self::Upstream { message, .. } => {
                tracing::warn!(%status, %message, "upstream failure");
            }
            Self::Overloaded { .. } => tracing::warn!("overloaded; asked the client to retry"),
            _ => {}
        }
        let mut response = (status, Json(self.body())).into_response();
        if let Self::Overloaded { retry_after } | Self::TooManyRequests { retry_after, .. } = &self
        {
            // Whole seconds, rounded up: a client that waits that long is not refused again.
            let seconds = u64::try_from(retry_after.as_millis().div_ceil(1000))
                .unwrap_or(u64::MAX)
                .max(1);
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        response
    }
}

/// Router fallback: every unmatched path (and method) is a 404 in our shape.
pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// Parses an ObjectId-like path or body id. A malformed id cannot name anything: 404.
pub fn parse_id(id: &str) -> Result<ObjectId, ApiError> {
    parse_object_id(id).ok_or(ApiError::NotFound)
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict => {
                ApiError::Conflict("The record was changed concurrently, please retry".into())
            }
            StoreError::Duplicate => ApiError::bad_request("Already exists"),
            StoreError::NotFound => ApiError::NotFound,
            StoreError::Db(e) => e.into(),
            StoreError::Other(e) => ApiError::Internal(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn a_malformed_id_names_nothing() {
        assert!(matches!(parse_id("nope"), Err(ApiError::NotFound)));
        assert!(parse_id("64b7f0c2a1b2c3d4e5f60718").is_ok());
    }

    async fn render(err: ApiError) -> (StatusCode, serde_json::Value) {
        let response = err.into_response();
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, serde_json::from_slice(&bytes).expect("json"))
    }

    #[tokio::test]
    async fn every_error_answers_in_the_spec_shape_with_its_status_and_never_leaks_a_cause() {
        let one = |message: &str| serde_json::json!({"errors": [{"message": message}]});
        let cases = [
            (
                "validation errors keep their order and fields",
                ApiError::Validation(vec![
                    ErrorEntry::for_field("email", "Email must be valid."),
                    ErrorEntry::for_field(
                        "password",
                        "Password must be between 5 and 20 characters.",
                    ),
                ]),
                StatusCode::BAD_REQUEST,
                serde_json::json!({"errors": [
                    {"message": "Email must be valid.", "field": "email"},
                    {"message": "Password must be between 5 and 20 characters.", "field": "password"}
                ]}),
            ),
            (
                "a business rule has one message and no field",
                ApiError::bad_request("Email in use"),
                StatusCode::BAD_REQUEST,
                one("Email in use"),
            ),
            (
                "not authorized, in the SPEC's words",
                ApiError::NotAuthorized,
                StatusCode::UNAUTHORIZED,
                one("Not authorized"),
            ),
            (
                "not found, in the SPEC's words",
                ApiError::NotFound,
                StatusCode::NOT_FOUND,
                one("Not Found"),
            ),
            (
                "an internal error never shows its cause",
                ApiError::Internal(anyhow::anyhow!(
                    "connection string mongodb://admin:secret@db"
                )),
                StatusCode::INTERNAL_SERVER_ERROR,
                one("Something went wrong"),
            ),
            (
                "an unreachable database is a 503 in the SPEC's words",
                ApiError::DatabaseUnavailable(anyhow::anyhow!("timeout")),
                StatusCode::SERVICE_UNAVAILABLE,
                one("Error connecting to database"),
            ),
        ];
        for (case, error, status, body) in cases {
            assert_eq!(render(error).await, (status, body), "{case}");
        }
    }

    #[tokio::test]
    async fn an_overloaded_service_answers_503_with_retry_after() {
        let response = ApiError::Overloaded {
            retry_after: std::time::Duration::from_secs(2),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get(axum::http::header::RETRY_AFTER),
            Some(&axum::http::HeaderValue::from_static("2"))
        );
    }
}
