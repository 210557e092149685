//! Idempotency keys as the rules see them: what a key remembers of its first answer, and the one
//! `replay` that votes and credits share.

use std::collections::HashMap;

use livevote_protocol::Totals;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{CreditReceipt, IdempotencyKey, StoreError, VoteReceipt};

/// SHA-256 of a request's fingerprint, as kept with its idempotency key: whatever the caller
/// puts in a fingerprint, a stored key costs the same few bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The digest of a request's fingerprint text.
    pub fn of(fingerprint: &str) -> Self {
        Fingerprint(Sha256::digest(fingerprint.as_bytes()).into())
    }

    /// A digest as a store kept it; `None` if it is not 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Fingerprint)
    }

    /// The digest's bytes, as a store keeps them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The first answer to a request with an idempotency key: what a repeat gets back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredResponse {
    /// A vote's answer.
    Vote {
        /// The balance after the vote.
        balance: i64,
        /// The event's totals after the vote.
        totals: Totals,
        /// The event's `seq` after the vote.
        seq: u64,
    },
    /// A credit's answer.
    Credit {
        /// The balance after the credit.
        balance: i64,
    },
}

/// A key's record: the request it answered (by fingerprint) and the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Fingerprint of the request that first used the key.
    pub fingerprint: Fingerprint,
    /// What that request was answered.
    pub response: StoredResponse,
    /// True when this batch made the answer (it still has to be written), false when a store
    /// loaded it.
    pub fresh: bool,
}

/// The answers a batch knows, by `(scope, key)`: those a store loaded for the batch's keys and
/// those the batch made, so that a repeat within one batch replays too.
pub type Answers = HashMap<(Uuid, String), Answer>;

/// A receipt that a stored answer can stand in for.
pub(super) trait Replayable: Sized {
    /// The receipt a repeat gets, or `None` if the stored answer is of another kind of request.
    fn from_stored(response: &StoredResponse) -> Option<Self>;
}

impl Replayable for VoteReceipt {
    fn from_stored(response: &StoredResponse) -> Option<Self> {
        match response {
            StoredResponse::Vote {
                balance,
                totals,
                seq,
            } => Some(VoteReceipt {
                balance: *balance,
                totals: totals.clone(),
                seq: *seq,
                balance_version: 0,
                replayed: true,
            }),
            StoredResponse::Credit { .. } => None,
        }
    }
}

impl Replayable for CreditReceipt {
    fn from_stored(response: &StoredResponse) -> Option<Self> {
        match response {
            StoredResponse::Credit { balance } => Some(CreditReceipt {
                balance: *balance,
                balance_version: 0,
                replayed: true,
            }),
            StoredResponse::Vote { .. } => None,
        }
    }
}

/// The answer to a repeat of `key` within `scope`: `None` when the key is new (the request
/// runs), the first answer for the same request, and `IdempotencyKeyReused` for a key that
/// answered another request (another body, or another kind of request).
pub(super) fn replay<Receipt: Replayable>(
    answers: &Answers,
    scope: Uuid,
    key: &IdempotencyKey,
) -> Option<Result<Receipt, StoreError>> {
    let answer = answers.get(&(scope, key.key.clone()))?;
    if answer.fingerprint != Fingerprint::of(&key.fingerprint) {
        return Some(Err(StoreError::IdempotencyKeyReused));
    }
    Some(Receipt::from_stored(&answer.response).ok_or(StoreError::IdempotencyKeyReused))
}

/// Records the first answer of a request with `key`, for its repeats.
pub(super) fn remember(
    answers: &mut Answers,
    scope: Uuid,
    key: IdempotencyKey,
    response: StoredResponse,
) {
    answers.insert(
        (scope, key.key),
        Answer {
            fingerprint: Fingerprint::of(&key.fingerprint),
            response,
            fresh: true,
        },
    );
}
