//! The bodies of livevote's fuzz targets, as plain functions: `fuzz_targets/*.rs` hands them
//! libFuzzer's inputs, and `tests/corpus.rs` replays every committed corpus file through them
//! on stable Rust. Each asserts a property of the contract, not only "does not panic".

use std::collections::HashSet;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use livevote_protocol::{
    AuthRequest, Channel, ChannelError, ClientCommand, CloseRequest, CreditRequest, NoticeRequest,
    VoteRequest, MAX_CLIENT_FRAME_BYTES,
};
use livevote_server::error::AppError;
use livevote_server::http::extract::parse_json;
use livevote_server::http::{
    check_closing_window, AuthInput, CreditInput, EventInput, NoticeInput, VoteInput,
    MAX_PROMPT_VERSIONS, MAX_PROMPT_VERSION_KEY, MAX_PROMPT_VERSION_VALUE,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

mod sdk_merge;
pub use sdk_merge::sdk_merge;

/// Every target by name, for the corpus replay and `cargo xtask fuzz`.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("client_command", client_command),
    ("channel_name", channel_name),
    ("event_validation", event_validation),
    ("http_bodies", http_bodies),
    ("sdk_merge", sdk_merge),
];

/// A socket text frame, decoded the way the session does (`serde_json::from_str::<ClientCommand>`).
/// A command that parses serializes back to the same command, and every channel it names is
/// judged by [`Channel::from_str`] alone (one bad name must not be fatal to the others).
pub fn client_command(data: &[u8]) {
    // WebSocket text frames are UTF-8 by the time the session sees them; larger ones are closed
    // with 1009 before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.len() > MAX_CLIENT_FRAME_BYTES {
        return;
    }
    let Ok(command) = serde_json::from_str::<ClientCommand>(text) else {
        return;
    };
    assert_round_trips(&command);
    if let ClientCommand::Subscribe { channels } | ClientCommand::Unsubscribe { channels } =
        &command
    {
        for name in channels {
            check_channel(name);
        }
    }
}

/// A channel name as a client spells it.
pub fn channel_name(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_channel(text);
}

/// A parsed channel prints canonically (`kind:` + a lower-case hyphenated uuid), parses back to
/// itself, and survives serde as a JSON string; an over-long name is always refused.
fn check_channel(text: &str) {
    match Channel::from_str(text) {
        Ok(channel) => {
            let canonical = channel.to_string();
            let (kind, id) = canonical
                .split_once(':')
                .expect("canonical names hold a colon");
            assert_eq!(kind, channel.kind.prefix());
            assert!(text.starts_with(kind) && text.as_bytes()[kind.len()] == b':');
            assert_eq!(id.len(), 36, "{canonical}");
            assert!(id.bytes().all(|byte| byte == b'-'
                || byte.is_ascii_digit()
                || (b'a'..=b'f').contains(&byte)));
            assert_eq!(Channel::from_str(&canonical), Ok(channel));
            let json = serde_json::to_string(&channel).expect("a channel serializes");
            assert_eq!(json, format!("\"{canonical}\""));
            assert_eq!(serde_json::from_str::<Channel>(&json).ok(), Some(channel));
        }
        Err(error) => {
            if text.len() > 64 {
                assert_eq!(error, ChannelError::Malformed);
            }
        }
    }
}

/// `POST /api/events`: the extractor's decoding, then [`EventInput::validate`] and
/// [`check_closing_window`]. The first 8 bytes pick "now"; the rest is the body. Whatever
/// validation accepts obeys the contract's rules; whatever it refuses is a 422, never a 500.
pub fn event_validation(data: &[u8]) {
    let (now, body) = match data.split_first_chunk::<8>() {
        Some((head, body)) => (instant_from(*head), body),
        None => return,
    };
    let Ok(parsed) = parse_json::<EventInput>(body) else {
        return;
    };
    let (event, closes_at) = match parsed.value.validate() {
        Ok(valid) => valid,
        Err(error) => {
            assert!(
                matches!(
                    error,
                    AppError::Unprocessable {
                        code: "VALIDATION_FAILED",
                        ..
                    }
                ),
                "validation refused with {error:?}"
            );
            return;
        }
    };
    let title_length = event.title.chars().count();
    assert!((1..=200).contains(&title_length) && !event.title.trim().is_empty());
    assert!((2..=10).contains(&event.options.len()));
    let mut seen = HashSet::new();
    for option in &event.options {
        assert!((1..=64).contains(&option.id.chars().count()));
        assert!((1..=100).contains(&option.label.chars().count()));
        assert!(
            seen.insert(option.id.as_str()),
            "duplicate option id accepted"
        );
    }
    assert!((1..=1_000_000).contains(&event.cost_per_vote));
    if let Some(versions) = &event.prompt_versions {
        assert!(versions.len() <= MAX_PROMPT_VERSIONS);
        for (key, value) in versions {
            assert!((1..=MAX_PROMPT_VERSION_KEY).contains(&key.chars().count()));
            assert!(value.chars().count() <= MAX_PROMPT_VERSION_VALUE);
        }
    }
    // What clients see is what is stored: millisecond precision, UTC, and it parses back.
    assert_eq!(closes_at.timestamp_subsec_nanos() % 1_000_000, 0);
    let wire = DateTime::parse_from_rfc3339(event.closes_at.as_str())
        .expect("closesAt on the wire parses");
    assert_eq!(wire.with_timezone(&Utc), closes_at);
    assert!(event.closes_at.as_str().ends_with('Z'));
    // The event as served round-trips through its wire form.
    assert_round_trips(&event);

    let window = check_closing_window(closes_at, now);
    let allowed = closes_at > now && closes_at <= now + chrono::Duration::hours(24);
    match window {
        Ok(()) => assert!(allowed, "closesAt {closes_at} accepted at {now}"),
        Err(error) => {
            assert!(!allowed, "closesAt {closes_at} refused at {now}");
            assert!(matches!(error, AppError::Unprocessable { .. }));
        }
    }
}

/// "Now" for [`event_validation`]: within ±2^40 ms (about ±35 years) of 2026-01-01, so that a
/// fuzzed body's `closesAt` can land on either side of the window.
fn instant_from(bytes: [u8; 8]) -> DateTime<Utc> {
    let offset = i64::from_le_bytes(bytes) % (1 << 40);
    let base = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("a fixed, valid instant");
    base + chrono::Duration::milliseconds(offset)
}

/// Every other JSON body: the first byte picks which, the rest is the body. The server's
/// extractor answers 400 (never a panic or another status) for what it cannot decode, accepts
/// only JSON objects; the protocol's request types round-trip what they accept.
pub fn http_bodies(data: &[u8]) {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    match selector % 6 {
        0 => {
            server_body::<AuthInput>(body);
            protocol_body::<AuthRequest>(body);
        }
        1 => {
            server_body::<VoteInput>(body);
            protocol_body::<VoteRequest>(body);
        }
        2 => {
            server_body::<CreditInput>(body);
            protocol_body::<CreditRequest>(body);
        }
        3 => {
            server_body::<NoticeInput>(body);
            protocol_body::<NoticeRequest>(body);
        }
        4 => {
            server_body::<CloseRequest>(body);
            protocol_body::<CloseRequest>(body);
        }
        _ => server_body::<EventInput>(body),
    }
}

fn server_body<T: DeserializeOwned>(body: &[u8]) {
    match parse_json::<T>(body) {
        Ok(parsed) => {
            assert!(parsed.raw.is_object(), "a non-object body was accepted");
            // What the extractor keeps for idempotency fingerprints is the body itself.
            let again: serde_json::Value =
                serde_json::from_slice(body).expect("an accepted body is JSON");
            assert_eq!(again, parsed.raw);
        }
        Err(error) => assert!(
            matches!(error, AppError::BadRequest(_)),
            "a body was refused with {error:?}, not 400"
        ),
    }
}

fn protocol_body<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(body: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<T>(body) {
        assert_round_trips(&value);
    }
}

/// Serialize → parse gives the same value.
fn assert_round_trips<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(value: &T) {
    let json = serde_json::to_string(value).expect("a parsed value serializes");
    let again: T = serde_json::from_str(&json).expect("what was serialized parses");
    assert_eq!(&again, value, "{json}");
}
