//! Cross-node messaging behind a small trait: every change a node makes (event created, totals,
//! close, balance, notice) is published here, and every node applies what it receives to its
//! in-memory state and sockets. [`MemoryBroker`] is the single-node implementation; a Redis one
//! is a second implementation of the same trait.

use async_trait::async_trait;
use livevote_protocol::{Event, EventResult, Totals};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
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
}

/// Publishes changes to every node, this one included.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    async fn publish(&self, message: BrokerMessage) -> Result<(), BrokerError>;
    /// Reachability check for `/readyz`.
    async fn ping(&self) -> Result<(), BrokerError>;
}

/// Single node: what is published is handed straight to this node's applier, in order.
#[derive(Debug)]
pub struct MemoryBroker {
    sender: mpsc::UnboundedSender<BrokerMessage>,
}

impl MemoryBroker {
    /// The broker and the receiving end the node's applier reads from.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<BrokerMessage>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (MemoryBroker { sender }, receiver)
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, message: BrokerMessage) -> Result<(), BrokerError> {
        self.sender
            .send(message)
            .map_err(|_| BrokerError::Unreachable("the node's applier has stopped".into()))
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        if self.sender.is_closed() {
            return Err(BrokerError::Unreachable(
                "the node's applier has stopped".into(),
            ));
        }
        Ok(())
    }
}
