//! The single-node broker: what is published is handed straight to this node's applier.

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{Broker, BrokerError, BrokerMessage};

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
