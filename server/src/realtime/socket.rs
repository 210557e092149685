//! The `/realtime` WebSocket endpoint (being built).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

pub async fn upgrade(State(_state): State<AppState>) -> Response {
    StatusCode::NOT_IMPLEMENTED.into_response()
}
