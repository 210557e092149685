//! Request extractors that answer in the contract's terms: the bearer token (401/403), JSON
//! bodies (400 for shape, 413 for size) and the `Idempotency-Key` header.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::auth::{Claims, TokenError};
use crate::error::AppError;
use crate::state::AppState;

/// A verified token from `Authorization: Bearer <jwt>`. Extracting it also makes the user known
/// to the ledger (contract: the first authenticated request credits the initial balance).
#[derive(Debug, Clone)]
pub struct Authenticated(pub Claims);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer_token(parts).ok_or(TokenError::Missing)?;
        let claims = state.auth.verify(token, state.clock.unix_seconds())?;
        state.ensure_user_known(&claims).await?;
        Ok(Authenticated(claims))
    }
}

/// The token of an `Authorization: Bearer` header, if there is one.
pub fn bearer_token(parts: &Parts) -> Option<&str> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A JSON body: 413 past the size limit, 400 when it is not JSON or not of the expected shape.
/// Also keeps the parsed value, which idempotency fingerprints are computed from.
#[derive(Debug)]
pub struct JsonBody<T> {
    pub value: T,
    pub raw: Value,
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(body_rejection)?;
        parse_json(&bytes)
    }
}

/// An optional JSON body: an empty body is `None`.
#[derive(Debug)]
pub struct OptionalJsonBody<T>(pub Option<T>);

impl<T: DeserializeOwned> FromRequest<AppState> for OptionalJsonBody<T> {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(body_rejection)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(None));
        }
        parse_json(&bytes).map(|body: JsonBody<T>| OptionalJsonBody(Some(body.value)))
    }
}

/// Public so that the fuzz crate can drive the extractors' decoding without an HTTP stack.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<JsonBody<T>, AppError> {
    let raw: Value = serde_json::from_slice(bytes)
        .map_err(|error| AppError::bad_request(format!("body is not JSON: {error}")))?;
    if !raw.is_object() {
        return Err(AppError::bad_request("body must be a JSON object"));
    }
    let value = serde_json::from_value(raw.clone())
        .map_err(|error| AppError::bad_request(error.to_string()))?;
    Ok(JsonBody { value, raw })
}

fn body_rejection(rejection: BytesRejection) -> AppError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        AppError::PayloadTooLarge
    } else {
        AppError::bad_request(rejection.body_text())
    }
}

/// The `Idempotency-Key` header: 1–255 visible ASCII characters.
#[derive(Debug, Clone)]
pub struct IdempotencyKeyHeader(pub Option<String>);

impl FromRequestParts<AppState> for IdempotencyKeyHeader {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(header) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyKeyHeader(None));
        };
        let key = header
            .to_str()
            .ok()
            .filter(|key| {
                !key.is_empty()
                    && key.len() <= 255
                    && key.bytes().all(|byte| byte.is_ascii_graphic())
            })
            .ok_or_else(|| {
                AppError::validation(
                    "INVALID_IDEMPOTENCY_KEY",
                    "Idempotency-Key must be 1–255 visible ASCII characters",
                )
            })?;
        Ok(IdempotencyKeyHeader(Some(key.to_owned())))
    }
}

/// The store's view of an `Idempotency-Key`: the key and the request it was first used for.
pub fn idempotency_key(
    key: Option<String>,
    uri: &axum::http::Uri,
    body: &Value,
) -> Option<livevote_storage::IdempotencyKey> {
    key.map(|key| livevote_storage::IdempotencyKey {
        fingerprint: request_fingerprint(uri.path(), body),
        key,
    })
}

/// A stable fingerprint of a request for idempotency: its path and its JSON body with object
/// keys sorted (serde_json's default map is ordered), so equal JSON gives equal fingerprints.
pub fn request_fingerprint(path: &str, body: &Value) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(path.as_bytes());
    hasher.update([0]);
    hasher.update(body.to_string().as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
