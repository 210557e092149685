//! Cross-node messaging behind a small trait: every change a node makes (event created, totals,
//! close, balance, notice) is published here, and every node applies what it receives to its
//! in-memory state and sockets. [`MemoryBroker`] is the single-node implementation and
//! [`RedisBroker`] the one for several nodes. What a node does when it cannot trust that it saw
//! every change (reload what is live from the store) is here too, shared by both.

mod memory;
pub mod redis;

pub use memory::MemoryBroker;
pub use redis::RedisBroker;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use livevote_protocol::{Event, EventResult, EventStatus, Totals};
use livevote_storage::{EventRecord, StoreError};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::state::AppState;

/// Where a notice goes: one channel, or every socket of every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "channel")]
pub enum NoticeTarget {
    Everyone,
    Channel(livevote_protocol::Channel),
}

/// A change that every node must apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum BrokerMessage {
    EventCreated {
        event: Event,
    },
    TotalsChanged {
        event_id: Uuid,
        totals: Totals,
        seq: u64,
    },
    /// `closed_at_ms` is unix milliseconds; `seq` the event's final seq.
    EventClosed {
        event_id: Uuid,
        result: EventResult,
        seq: u64,
        closed_at_ms: i64,
    },
    /// `version` is the ledger entry behind `balance`: a larger one is newer, so a change that
    /// arrives after a later one is dropped instead of showing a stale balance.
    BalanceChanged {
        user_id: Uuid,
        balance: i64,
        version: u64,
    },
    Notice {
        target: NoticeTarget,
        code: String,
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unreachable: {0}")]
    Unreachable(String),
    /// Connected, but this node may have missed changes and is reloading them from the store.
    #[error("broker resyncing: {0}")]
    Resyncing(String),
    #[error("broker configuration: {0}")]
    Configuration(String),
}

/// Publishes changes to every node, this one included.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    async fn publish(&self, message: BrokerMessage) -> Result<(), BrokerError>;
    /// Reachability check for `/readyz`.
    async fn ping(&self) -> Result<(), BrokerError>;
}

/// The events of one stored record as broker messages, applied so that a node that missed
/// them ends where the store is: created (arming the timer if open) when this node does not
/// know the event, the newer totals, and the close. Everything is gated in the cache (a known
/// event is not created twice, totals only move forward, a close is shown once), so applying
/// a record the node already holds changes nothing.
pub(crate) fn apply_record(state: &AppState, record: EventRecord) {
    let event_id = record.event.id;
    let open = record.status == EventStatus::Open;
    if !state.realtime.knows_event(event_id) {
        let created = BrokerMessage::EventCreated {
            event: record.event,
        };
        if open {
            // Through the node's apply: it arms the timer, so every node closes on time.
            state.apply(&created);
        } else {
            state.realtime.apply(&created);
        }
    }
    if open {
        state.realtime.apply(&BrokerMessage::TotalsChanged {
            event_id,
            totals: record.totals,
            seq: record.seq,
        });
    } else if let Some(result) = record.result {
        let closed_at = record.closed_at.unwrap_or(record.closes_at);
        state.realtime.apply(&BrokerMessage::EventClosed {
            event_id,
            result,
            seq: record.seq,
            closed_at_ms: closed_at.timestamp_millis(),
        });
    }
}

/// Reloads what is live from the store (the truth) into this node's caches and sockets.
/// Returns how many events the store holds live.
pub(crate) async fn resync_from_store(state: &AppState) -> Result<usize, StoreError> {
    let live = state.store.live_events(closed_since(state)).await?;
    let count = live.len();
    for record in live {
        apply_record(state, record);
    }
    // Balances too: a lost BALANCE_UPDATED would otherwise show until the user's next change.
    // Each comes with its ledger version, so the cache keeps it only where it is newer.
    let users = state.realtime.cached_balance_users();
    for found in state.store.balances(&users).await? {
        state.realtime.apply(&BrokerMessage::BalanceChanged {
            user_id: found.user_id,
            balance: found.balance,
            version: found.version,
        });
    }
    Ok(count)
}

/// Applies one message; a change to an event this node has not heard of yet (its
/// EVENT_CREATED is still on its way from another node, or was lost) first loads that event
/// from the store, so the change is not dropped. Events closed longer ago than snapshots show
/// them are left alone.
pub(crate) async fn apply_loading_unknown(
    state: &AppState,
    message: &BrokerMessage,
) -> Result<(), StoreError> {
    if let BrokerMessage::EventCreated { event } = message {
        if state.realtime.knows_event(event.id) {
            // Already loaded from the store (a change to it came first) and armed then: a
            // second arm would only cost a second close attempt.
            return Ok(());
        }
    }
    let unknown = match message {
        BrokerMessage::TotalsChanged { event_id, .. }
        | BrokerMessage::EventClosed { event_id, .. } => {
            Some(*event_id).filter(|event_id| !state.realtime.knows_event(*event_id))
        }
        _ => None,
    };
    if let Some(event_id) = unknown {
        if let Some(record) = state.store.get_event(event_id).await? {
            let expired = record
                .closed_at
                .is_some_and(|closed_at| closed_at < closed_since(state));
            if !expired {
                apply_record(state, record);
            }
        }
    }
    state.apply(message);
    Ok(())
}

fn closed_since(state: &AppState) -> DateTime<Utc> {
    let recent_closed =
        chrono::Duration::from_std(state.config.recent_closed).unwrap_or(chrono::Duration::MAX);
    state.clock.now() - recent_closed
}
