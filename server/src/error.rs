//! The one error type at the HTTP edge: every failure becomes a status and the contract's body
//! `{"error": {"code": "UPPER_SNAKE", "message": "human text"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use livevote_protocol::{ErrorBody, ErrorDetail};
use livevote_storage::{StoreError, Unavailable};

use crate::auth::TokenError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400: not JSON, a missing field, a field of the wrong JSON type, an unknown query value.
    #[error("{0}")]
    BadRequest(String),
    /// 401: a missing, invalid or expired token (or a wrong API key).
    #[error("{message}")]
    Unauthorized { code: &'static str, message: String },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// 402: not enough points.
    #[error("{0}")]
    InsufficientBalance(String),
    /// 409 with a specific code (`EVENT_CLOSED`, `CONFLICT`).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("body larger than 65536 bytes")]
    PayloadTooLarge,
    /// 422: the right JSON type but breaking a rule.
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_seconds: u64,
    },
    /// 503 `UNAVAILABLE` with `Retry-After: 1`: this node cannot serve the request now (the
    /// store's writer is stalled, stopped or its queue full; the broker is down; shutdown).
    #[error("{0}")]
    Unavailable(String),
    /// 500: our fault, never a client's. The detail is logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AppError {
    pub fn validation(code: &'static str, message: impl Into<String>) -> Self {
        AppError::Unprocessable {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        AppError::BadRequest(message.into())
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            AppError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
            AppError::Unauthorized { code, .. } => (StatusCode::UNAUTHORIZED, code),
            AppError::Forbidden(_) => (StatusCode::FORBIDDEN, "FORBIDDEN"),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            AppError::InsufficientBalance(_) => {
                (StatusCode::PAYMENT_REQUIRED, "INSUFFICIENT_BALANCE")
            }
            AppError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            AppError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
            AppError::Unprocessable { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            AppError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"),
            AppError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            AppError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            AppError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message,
            },
        };
        let mut response = (status, Json(body)).into_response();
        let retry_after_seconds = match self {
            AppError::RateLimited {
                retry_after_seconds,
                ..
            } => Some(retry_after_seconds.max(1)),
            // Every cause of a 503 is expected to pass within about a second or to take the
            // node out of rotation (readiness fails with it); a client should come back soon.
            AppError::Unavailable(_) => Some(1),
            _ => None,
        };
        if let Some(seconds) = retry_after_seconds {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<StoreError> for AppError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => AppError::NotFound("event not found".into()),
            StoreError::Conflict => AppError::Conflict {
                code: "CONFLICT",
                message: "an event with this id but a different body already exists".into(),
            },
            StoreError::EventClosed => AppError::Conflict {
                code: "EVENT_CLOSED",
                message: "the event is closed".into(),
            },
            StoreError::UnknownOption(option) => AppError::validation(
                "UNKNOWN_OPTION",
                format!("the event has no option `{option}`"),
            ),
            StoreError::InsufficientBalance { balance, needed } => AppError::InsufficientBalance(
                format!("balance {balance} is less than the {needed} this costs"),
            ),
            StoreError::IdempotencyKeyReused => AppError::validation(
                "IDEMPOTENCY_KEY_REUSED",
                "this Idempotency-Key was already used for a different request",
            ),
            StoreError::Database(detail) => AppError::Internal(detail),
            StoreError::Unavailable(reason) => {
                metrics::counter!("livevote_store_unavailable_total", "reason" => unavailable_label(reason))
                    .increment(1);
                AppError::Unavailable(format!("storage: {reason}; retry later"))
            }
        }
    }
}

fn unavailable_label(reason: Unavailable) -> &'static str {
    match reason {
        Unavailable::QueueFull => "queue_full",
        Unavailable::DeadlineExceeded => "deadline",
        Unavailable::DatabaseBusy => "database_busy",
        Unavailable::WriterStopped => "writer_stopped",
    }
}

impl From<TokenError> for AppError {
    fn from(error: TokenError) -> Self {
        let code = match error {
            TokenError::Missing => "UNAUTHORIZED",
            TokenError::Invalid => "INVALID_TOKEN",
            TokenError::Expired => "TOKEN_EXPIRED",
        };
        AppError::Unauthorized {
            code,
            message: error.to_string(),
        }
    }
}
