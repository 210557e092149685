//! `/api/balance` and `/api/ledger/credit`.

use axum::extract::{OriginalUri, State};
use axum::Json;
use livevote_protocol::BalanceResponse;
use livevote_storage::CreditCommand;
use serde::Deserialize;
use serde_json::Number;
use uuid::Uuid;

use super::extract::{idempotency_key, Authenticated, IdempotencyKeyHeader, JsonBody};
use crate::broker::BrokerMessage;
use crate::error::AppError;
use crate::state::AppState;

pub async fn balance(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
) -> Result<Json<BalanceResponse>, AppError> {
    let balance = state
        .store
        .ensure_user(
            claims.sub,
            claims.initial_balance(state.config.initial_balance),
        )
        .await?;
    Ok(Json(BalanceResponse {
        user_id: claims.sub,
        balance,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreditInput {
    user_id: String,
    amount: Number,
    reason: String,
}

/// Largest single credit; keeps every balance far from i64 overflow.
const MAX_CREDIT: i64 = 1_000_000_000_000;

pub async fn credit(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    OriginalUri(uri): OriginalUri,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    body: JsonBody<CreditInput>,
) -> Result<Json<BalanceResponse>, AppError> {
    if !claims.is_admin() {
        return Err(AppError::Forbidden("only admins credit balances".into()));
    }
    let user_id = Uuid::try_parse(&body.value.user_id)
        .map_err(|_| AppError::validation("VALIDATION_FAILED", "userId must be a uuid"))?;
    let amount = body
        .value
        .amount
        .as_i64()
        .filter(|amount| (1..=MAX_CREDIT).contains(amount))
        .ok_or_else(|| AppError::validation("INVALID_AMOUNT", "amount must be an integer ≥ 1"))?;
    let reason = body.value.reason.trim().to_owned();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(AppError::validation(
            "VALIDATION_FAILED",
            "reason must be 1–500 characters",
        ));
    }
    let idempotency = idempotency_key(key, &uri, &body.raw);
    let command = CreditCommand {
        admin_id: claims.sub,
        user_id,
        amount,
        reason,
        idempotency,
        initial_balance: state.config.initial_balance,
    };
    let committing = state.clone();
    let receipt = state
        .commit(async move {
            let receipt = committing.store.credit(command).await?;
            if !receipt.replayed {
                committing
                    .publish_committed([BrokerMessage::BalanceChanged {
                        user_id,
                        balance: receipt.balance,
                        version: receipt.balance_version,
                    }])
                    .await;
            }
            Ok(receipt)
        })
        .await?;
    Ok(Json(BalanceResponse {
        user_id,
        balance: receipt.balance,
    }))
}
