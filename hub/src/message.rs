//! Messages serialized once and shared: every subscriber of a channel holds the same bytes.

use bytes::Bytes;
use livevote_protocol::ServerMessage;

/// What a message is, for metrics and for deciding how an outbox keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    EventCreated,
    EventUpdated,
    EventClosed,
    BalanceUpdated,
    SystemNotice,
    Ping,
    Subscribed,
    Unsubscribed,
}

impl MessageKind {
    /// Every kind, in the order of [`MessageKind::index`].
    pub const ALL: [MessageKind; 8] = [
        MessageKind::EventCreated,
        MessageKind::EventUpdated,
        MessageKind::EventClosed,
        MessageKind::BalanceUpdated,
        MessageKind::SystemNotice,
        MessageKind::Ping,
        MessageKind::Subscribed,
        MessageKind::Unsubscribed,
    ];

    /// The wire name, also used as the `type` label of metrics.
    pub fn wire_name(self) -> &'static str {
        match self {
            MessageKind::EventCreated => "EVENT_CREATED",
            MessageKind::EventUpdated => "EVENT_UPDATED",
            MessageKind::EventClosed => "EVENT_CLOSED",
            MessageKind::BalanceUpdated => "BALANCE_UPDATED",
            MessageKind::SystemNotice => "SYSTEM_NOTICE",
            MessageKind::Ping => "PING",
            MessageKind::Subscribed => "SUBSCRIBED",
            MessageKind::Unsubscribed => "UNSUBSCRIBED",
        }
    }

    /// Position in [`MessageKind::ALL`], for per-kind counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn of(message: &ServerMessage) -> Self {
        match message {
            ServerMessage::EventCreated(_) => MessageKind::EventCreated,
            ServerMessage::EventUpdated(_) => MessageKind::EventUpdated,
            ServerMessage::EventClosed(_) => MessageKind::EventClosed,
            ServerMessage::BalanceUpdated(_) => MessageKind::BalanceUpdated,
            ServerMessage::SystemNotice(_) => MessageKind::SystemNotice,
            ServerMessage::Ping(_) => MessageKind::Ping,
            ServerMessage::Subscribed(_) => MessageKind::Subscribed,
            ServerMessage::Unsubscribed(_) => MessageKind::Unsubscribed,
        }
    }
}

/// One server message as JSON text, serialized once. Cloning shares the bytes; the bytes are
/// always valid UTF-8 because they come from `serde_json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedMessage {
    kind: MessageKind,
    bytes: Bytes,
}

impl SharedMessage {
    pub fn encode(message: &ServerMessage) -> Self {
        // Serializing plain data structs with string keys cannot fail.
        let json = serde_json::to_vec(message).expect("server messages always serialize");
        SharedMessage {
            kind: MessageKind::of(message),
            bytes: Bytes::from(json),
        }
    }

    pub fn kind(&self) -> MessageKind {
        self.kind
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use livevote_protocol::{Ping, Timestamp};

    #[test]
    fn encodes_once_and_shares_bytes() {
        let message = SharedMessage::encode(&ServerMessage::Ping(Ping {
            ts: Timestamp("2026-11-26T12:00:00.000Z".into()),
        }));
        assert_eq!(message.kind(), MessageKind::Ping);
        let copy = message.clone();
        assert_eq!(copy.bytes().as_ptr(), message.bytes().as_ptr());
        let parsed: ServerMessage = serde_json::from_slice(message.bytes()).unwrap();
        assert!(matches!(parsed, ServerMessage::Ping(_)));
    }

    #[test]
    fn kinds_index_their_table() {
        for (position, kind) in MessageKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), position);
        }
    }
}
