//! Messages serialized once and shared: every subscriber of a channel holds the same bytes.

use bytes::Bytes;
use livevote_protocol::ServerMessage;

/// What a message is, for metrics and for deciding how an outbox keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// `EVENT_CREATED`: must-deliver, queued once per connection whichever channel brings it.
    EventCreated,
    /// `EVENT_UPDATED`: a live one is kept in the event's latest-value slot, so a newer one
    /// replaces it while unsent (counted in [`HubStats::dropped`](crate::HubStats::dropped())).
    /// A snapshot's is queued.
    EventUpdated,
    /// `EVENT_CLOSED`: must-deliver; empties the event's slot.
    EventClosed,
    /// `BALANCE_UPDATED`: like EVENT_UPDATED, a live one is kept in the user's latest-value
    /// slot and a snapshot's is queued.
    BalanceUpdated,
    /// `SYSTEM_NOTICE`: must-deliver.
    SystemNotice,
    /// `PING`: must-deliver.
    Ping,
    /// `SUBSCRIBED`: must-deliver; the server queues it after the snapshots it announces.
    Subscribed,
    /// `UNSUBSCRIBED`: must-deliver.
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

    /// The kind of `message`, i.e. of its `type` tag.
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
    /// Serializes `message` to its wire JSON (`{"type": ..., "payload": ...}`), once; clone
    /// the result to give it to many connections.
    pub fn encode(message: &ServerMessage) -> Self {
        // Serializing plain data structs with string keys cannot fail.
        let json = serde_json::to_vec(message).expect("server messages always serialize");
        SharedMessage {
            kind: MessageKind::of(message),
            bytes: Bytes::from(json),
        }
    }

    /// What the message is, read from the [`ServerMessage`] it was encoded from.
    pub fn kind(&self) -> MessageKind {
        self.kind
    }

    /// The JSON text, shared: ready to be one WebSocket text frame on its own.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Size of the JSON text in bytes: what it counts against a connection's must-deliver
    /// bound ([`HubConfig::max_pending_bytes`](crate::HubConfig::max_pending_bytes)).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never true for an encoded message (its JSON is at least `{}`); here for `len`'s sake.
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
