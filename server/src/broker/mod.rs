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

use livevote_protocol::{Event, EventResult, Totals};
use livevote_storage::StoreError;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

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

/// Why a broker asks its node to reload from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resync {
    /// The periodic pass of a node that trusts its view. No message is known to be lost; what
    /// it heals is a change nobody published (a node that died between its commit and its
    /// publish).
    Routine,
    /// The node doubted its view (a disconnection, a gap in another node's numbering, a probe
    /// that did not come back): messages were lost, and anything cached may be stale.
    AfterDoubt,
}

/// The node's side of a broker's applier: what it does with a change and how it reloads from
/// the store. The node (`AppState`, in `node.rs`) implements it, so the broker knows nothing of
/// the node's state.
#[async_trait]
pub trait ChangeApplier: Send + Sync + 'static {
    /// Applies one change, first loading from the store an event this node has not heard of;
    /// an error means the store could not be read.
    async fn apply_change(&self, message: &BrokerMessage) -> Result<(), StoreError>;
    /// Reloads live events and cached balances from the store (the truth); returns how many
    /// events the store holds live. `why` says how much of the cache may be stale.
    async fn resync_from_store(&self, why: Resync) -> Result<usize, StoreError>;
}
