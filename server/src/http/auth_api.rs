//! `POST /api/auth`: trusted backends exchange the API key for a token.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use axum::extract::{ConnectInfo, State};
use axum::{Extension, Json};
use livevote_protocol::{AuthResponse, Role};
use serde::Deserialize;
use serde_json::Number;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::extract::JsonBody;
use crate::auth::Claims;
use crate::clock::format_timestamp;
use crate::error::AppError;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthInput {
    #[serde(default)]
    api_key: Option<String>,
    user_id: String,
    role: String,
    #[serde(default)]
    streamer_id: Option<String>,
    #[serde(default)]
    ttl_seconds: Option<Number>,
}

const DEFAULT_TTL_SECONDS: u64 = 3600;
/// A week: long enough for an overlay left running, short enough that a leaked token dies.
const MAX_TTL_SECONDS: u64 = 7 * 24 * 3600;

pub async fn mint(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: JsonBody<AuthInput>,
) -> Result<Json<AuthResponse>, AppError> {
    let input = body.value;
    // In --dev the key is not checked (docs/contract.md §2); otherwise it is compared in
    // constant time, and an address that sent too many wrong keys is held back before its key
    // is looked at.
    if !state.config.is_dev() {
        // Served by `serve`, every request carries its peer; a router driven without it (a
        // test's `oneshot`) counts as one unspecified address.
        let address = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |Extension(info)| {
            info.0.ip()
        });
        state.auth_failures.check(address, Instant::now())?;
        let expected = state
            .config
            .api_key
            .as_deref()
            .unwrap_or_default()
            .as_bytes();
        let given = input.api_key.as_deref().unwrap_or_default().as_bytes();
        // Digests of equal length are compared, so not even the key's length leaks.
        let matches = Sha256::digest(expected).ct_eq(&Sha256::digest(given));
        if !bool::from(matches) || expected.is_empty() {
            state.auth_failures.record_failure(address, Instant::now());
            return Err(AppError::Unauthorized {
                code: "INVALID_API_KEY",
                message: "wrong API key".into(),
            });
        }
    }
    // Every refusal of the body is 400: the contract calls a malformed auth body 400, with
    // no 422 case for /api/auth.
    let invalid = |message: &str| AppError::bad_request(message);
    let user_id = Uuid::try_parse(&input.user_id).map_err(|_| invalid("userId must be a uuid"))?;
    let role = match input.role.as_str() {
        "viewer" => Role::Viewer,
        "streamer" => Role::Streamer,
        "worker" => Role::Worker,
        "admin" => Role::Admin,
        _ => return Err(invalid("role must be viewer, streamer, worker or admin")),
    };
    let streamer_id = match input.streamer_id.as_deref() {
        None => None,
        Some(text) => {
            Some(Uuid::try_parse(text).map_err(|_| invalid("streamerId must be a uuid"))?)
        }
    };
    if role == Role::Streamer && streamer_id.is_none() {
        return Err(invalid("a streamer token needs streamerId"));
    }
    let ttl = match input.ttl_seconds {
        None => DEFAULT_TTL_SECONDS,
        Some(number) => number
            .as_u64()
            .filter(|ttl| (1..=MAX_TTL_SECONDS).contains(ttl))
            .ok_or_else(|| invalid("ttlSeconds must be an integer 1–604800"))?,
    };
    let now = state.clock.now();
    let issued_at = now.timestamp();
    let claims = Claims {
        sub: user_id,
        role,
        streamer_id,
        iat: issued_at,
        exp: issued_at + ttl as i64,
    };
    let token = state.auth.mint(&claims);
    Ok(Json(AuthResponse {
        token,
        expires_at: format_timestamp(claims.expires_at()),
    }))
}
