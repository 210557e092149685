//! Packing drained messages into as few WebSocket text frames as possible: a lone message is
//! sent as its shared bytes (no copy); several become one JSON array, up to a size cap.

use bytes::{BufMut, Bytes, BytesMut};

use crate::message::SharedMessage;

/// Packs `messages`, in order, into frames of at most `max_frame_bytes` (a single message
/// larger than the cap gets a frame of its own). Every frame is valid UTF-8 JSON: one message
/// object, or an array of them.
pub fn pack_frames(messages: &[SharedMessage], max_frame_bytes: usize, frames: &mut Vec<Bytes>) {
    let mut group_start = 0;
    // Bytes of the array `[a,b,...]` holding messages[group_start..index].
    let mut group_bytes = 0;
    for (index, message) in messages.iter().enumerate() {
        let with_this = if index == group_start {
            message.len() + 2
        } else {
            group_bytes + message.len() + 1
        };
        if index > group_start && with_this > max_frame_bytes {
            push_group(&messages[group_start..index], group_bytes, frames);
            group_start = index;
            group_bytes = message.len() + 2;
        } else {
            group_bytes = with_this;
        }
    }
    if group_start < messages.len() {
        push_group(&messages[group_start..], group_bytes, frames);
    }
}

fn push_group(group: &[SharedMessage], array_bytes: usize, frames: &mut Vec<Bytes>) {
    if let [lone] = group {
        frames.push(lone.bytes().clone());
        return;
    }
    let mut array = BytesMut::with_capacity(array_bytes);
    array.put_u8(b'[');
    for (position, message) in group.iter().enumerate() {
        if position > 0 {
            array.put_u8(b',');
        }
        array.put_slice(message.bytes());
    }
    array.put_u8(b']');
    frames.push(array.freeze());
}

#[cfg(test)]
mod tests {
    use super::*;
    use livevote_protocol::{ServerMessage, SystemNotice};

    fn notice(text_length: usize) -> SharedMessage {
        SharedMessage::encode(&ServerMessage::SystemNotice(SystemNotice {
            code: "MAINTENANCE".into(),
            message: "x".repeat(text_length),
            channel: None,
            retry_after_ms: None,
        }))
    }

    #[test]
    fn a_lone_message_is_its_own_bytes() {
        let message = notice(10);
        let mut frames = Vec::new();
        pack_frames(std::slice::from_ref(&message), 65_536, &mut frames);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].as_ptr(), message.bytes().as_ptr());
    }

    #[test]
    fn several_messages_become_one_array() {
        let messages = vec![notice(1), notice(2), notice(3)];
        let mut frames = Vec::new();
        pack_frames(&messages, 65_536, &mut frames);
        assert_eq!(frames.len(), 1);
        let parsed: Vec<ServerMessage> = serde_json::from_slice(&frames[0]).unwrap();
        assert_eq!(parsed.len(), 3);
    }

    #[test]
    fn frames_respect_the_cap_and_keep_order() {
        let messages: Vec<SharedMessage> = (0..50).map(|index| notice(100 + index)).collect();
        let mut frames = Vec::new();
        pack_frames(&messages, 1_000, &mut frames);
        assert!(frames.len() > 1);
        let mut seen = Vec::new();
        for frame in &frames {
            assert!(
                frame.len() <= 1_000 || !frame.starts_with(b"["),
                "an array frame exceeded the cap"
            );
            if frame.starts_with(b"[") {
                let parsed: Vec<ServerMessage> = serde_json::from_slice(frame).unwrap();
                seen.extend(parsed);
            } else {
                seen.push(serde_json::from_slice(frame).unwrap());
            }
        }
        let lengths: Vec<usize> = seen
            .iter()
            .map(|message| match message {
                ServerMessage::SystemNotice(notice) => notice.message.len(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            lengths,
            (0..50).map(|index| 100 + index).collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_oversized_message_travels_alone() {
        let messages = vec![notice(10), notice(5_000), notice(10)];
        let mut frames = Vec::new();
        pack_frames(&messages, 1_000, &mut frames);
        assert_eq!(frames.len(), 3);
    }
}
