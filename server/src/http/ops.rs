//! Operations endpoints (`/healthz`, `/readyz`, `/metrics`) and admin notices.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use livevote_protocol::Channel;
use serde::Deserialize;

use super::extract::{Authenticated, JsonBody};
use crate::broker::{BrokerMessage, NoticeTarget};
use crate::error::AppError;
use crate::state::AppState;

pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the store can write now (its writer runs and commits a probe within the
/// store's readiness deadline, so a stalled or dead writer takes the node out of rotation)
/// and the broker answers.
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, AppError> {
    state
        .store
        .ready()
        .await
        .map_err(|error| AppError::Unavailable(format!("database: {error}")))?;
    state
        .broker
        .ping()
        .await
        .map_err(|error| AppError::Unavailable(format!("broker: {error}")))?;
    if state.shutdown.is_cancelled() {
        return Err(AppError::Unavailable("shutting down".into()));
    }
    Ok("ready")
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    metrics::counter!("livevote_store_queries_total").absolute(state.store.query_count());
    metrics::gauge!("livevote_sockets").set(state.realtime.connection_count() as f64);
    state.metrics.run_upkeep();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
pub struct NoticeInput {
    channel: String,
    code: String,
    message: String,
}

pub async fn notice(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    body: JsonBody<NoticeInput>,
) -> Result<StatusCode, AppError> {
    if !claims.is_admin() {
        return Err(AppError::Forbidden("only admins send notices".into()));
    }
    let input = body.value;
    let target = if input.channel == "*" {
        NoticeTarget::Everyone
    } else {
        let channel: Channel = input
            .channel
            .parse()
            .map_err(|error| AppError::bad_request(format!("channel: {error}")))?;
        NoticeTarget::Channel(channel)
    };
    let code_is_valid = !input.code.is_empty()
        && input.code.len() <= 64
        && input
            .code
            .bytes()
            .all(|byte| byte.is_ascii_uppercase() || byte.is_ascii_digit() || byte == b'_');
    if !code_is_valid {
        return Err(AppError::bad_request(
            "code must be 1–64 characters of A–Z, 0–9 and _",
        ));
    }
    if input.message.chars().count() > 2000 {
        return Err(AppError::bad_request(
            "message must be at most 2000 characters",
        ));
    }
    state
        .publish(BrokerMessage::Notice {
            target,
            code: input.code,
            message: input.message,
        })
        .await?;
    Ok(StatusCode::ACCEPTED)
}
