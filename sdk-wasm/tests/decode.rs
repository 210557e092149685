//! The SDK's decoder against the protocol's golden fixtures, in a browser (wasm-bindgen-test,
//! headless Chromium): the fixtures go through `JSON.parse` and the SDK's hand-written decoder
//! exactly as socket frames do, and must give what the protocol's own serde types read. The
//! merge and reconnect rules, which need no JavaScript, are tested natively in tests/merge.rs.
#![cfg(target_arch = "wasm32")]

#[macro_use]
mod support;

use livevote_protocol::{EventStatus, ServerMessage, Timestamp};
use livevote_sdk::decode;
use uuid::Uuid;
use wasm_bindgen::JsValue;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const EVENT: &str = "3f1c2a4e-8d7b-4c1a-9e2f-5b6a7c8d9e01";
const STREAMER: &str = "a1b2c3d4-e5f6-4a5b-8c9d-0e1f2a3b4c5d";

fn parse(text: &str) -> JsValue {
    js_sys::JSON::parse(text).expect("fixtures are JSON")
}

/// Decodes a frame as the client does: one message or an array of them.
fn frame(text: &str) -> Vec<ServerMessage> {
    let value = parse(text);
    if js_sys::Array::is_array(&value) {
        js_sys::Array::from(&value)
            .iter()
            .map(|item| decode::message(&item).expect("fixture decodes"))
            .collect()
    } else {
        vec![decode::message(&value).expect("fixture decodes")]
    }
}

fn one(text: &str) -> ServerMessage {
    frame(text).remove(0)
}

fn id(text: &str) -> Uuid {
    Uuid::parse_str(text).unwrap()
}

/// Every server fixture and the seed's, in both readers: the SDK's decoder over `JSON.parse`
/// and serde over the text. A field the decoder forgot or misreads shows up here.
#[wasm_bindgen_test]
fn the_decoder_reads_what_serde_reads() {
    let texts = [
        fixture!("server", "event_created"),
        fixture!("server", "event_updated"),
        fixture!("server", "event_closed"),
        fixture!("server", "balance_updated"),
        fixture!("server", "ping"),
        fixture!("server", "subscribed"),
        fixture!("server", "unsubscribed"),
        fixture!("server", "system_notice"),
        fixture!("server", "system_notice_subscribe_denied"),
        fixture!("server", "batch"),
        fixture!("seed", "event_created"),
        fixture!("seed", "event_updated"),
        fixture!("seed", "event_closed"),
        fixture!("seed", "balance_updated"),
        fixture!("seed", "system_notice"),
    ];
    for text in texts {
        let expected: Vec<ServerMessage> = if text.trim_start().starts_with('[') {
            serde_json::from_str(text).expect("serde reads the fixture")
        } else {
            vec![serde_json::from_str(text).expect("serde reads the fixture")]
        };
        assert_eq!(frame(text), expected, "{text}");
    }
}

#[wasm_bindgen_test]
fn every_server_fixture_decodes() {
    let texts = [
        fixture!("server", "event_created"),
        fixture!("server", "event_updated"),
        fixture!("server", "event_closed"),
        fixture!("server", "balance_updated"),
        fixture!("server", "ping"),
        fixture!("server", "subscribed"),
        fixture!("server", "unsubscribed"),
        fixture!("server", "system_notice"),
        fixture!("server", "system_notice_subscribe_denied"),
    ];
    for text in texts {
        assert_eq!(frame(text).len(), 1, "{text}");
    }
    assert_eq!(frame(fixture!("server", "batch")).len(), 2);
}

#[wasm_bindgen_test]
fn every_seed_fixture_decodes() {
    for text in [
        fixture!("seed", "event_created"),
        fixture!("seed", "event_updated"),
        fixture!("seed", "event_closed"),
        fixture!("seed", "balance_updated"),
        fixture!("seed", "system_notice"),
    ] {
        assert!(decode::message(&parse(text)).is_some(), "{text}");
    }
    // The seed's update predates `seq`; it decodes as seq 0.
    let ServerMessage::EventUpdated(update) = one(fixture!("seed", "event_updated")) else {
        panic!()
    };
    assert_eq!(update.seq, 0);
    assert_eq!(update.closes_at, None);
}

#[wasm_bindgen_test]
fn decoded_fields_match_the_fixtures() {
    let ServerMessage::EventCreated(created) = one(fixture!("server", "event_created")) else {
        panic!()
    };
    let event = created.event;
    assert_eq!(event.id, id(EVENT));
    assert_eq!(event.streamer_id, id(STREAMER));
    assert_eq!(
        event.game_id,
        Some(id("0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e"))
    );
    assert_eq!(event.options.len(), 2);
    assert_eq!(event.options[0].id, "yes");
    assert_eq!(event.options[1].label, "No, wipe again");
    assert_eq!(event.cost_per_vote, 100);
    assert_eq!(
        event.closes_at,
        Timestamp("2026-11-26T12:00:00.000Z".into())
    );
    assert_eq!(
        event
            .prompt_versions
            .unwrap()
            .get("session")
            .map(String::as_str),
        Some("v12")
    );

    let ServerMessage::EventUpdated(update) = one(fixture!("server", "event_updated")) else {
        panic!()
    };
    assert_eq!(
        (update.seq, update.totals["yes"], update.totals["no"]),
        (210, 123, 87)
    );

    let ServerMessage::SystemNotice(notice) = one(fixture!("server", "system_notice")) else {
        panic!()
    };
    assert_eq!(
        (notice.code.as_str(), notice.retry_after_ms),
        ("SERVER_RESTARTING", Some(2817))
    );
    let ServerMessage::SystemNotice(denied) =
        one(fixture!("server", "system_notice_subscribe_denied"))
    else {
        panic!()
    };
    assert_eq!(
        denied.channel.as_deref(),
        Some("user:9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a")
    );
    let ServerMessage::Subscribed(list) = one(fixture!("server", "subscribed")) else {
        panic!()
    };
    assert_eq!(list.channels.len(), 2);
}

#[wasm_bindgen_test]
fn unknown_types_and_malformed_payloads_are_dropped() {
    assert!(decode::message(&parse(r#"{"type":"FEATURE_FLAGS","payload":{}}"#)).is_none());
    assert!(decode::message(&parse(
        r#"{"type":"EVENT_UPDATED","payload":{"eventId":"nope","totals":{}}}"#
    ))
    .is_none());
    assert!(decode::message(&parse(
        r#"{"type":"EVENT_UPDATED","payload":{"eventId":"3f1c2a4e-8d7b-4c1a-9e2f-5b6a7c8d9e01","totals":{"a":1.5}}}"#
    ))
    .is_none());
    assert!(decode::message(&parse(
        r#"{"type":"BALANCE_UPDATED","payload":{"balance":"12"}}"#
    ))
    .is_none());
    assert!(decode::message(&parse("[]")).is_none());
    // Unknown fields are ignored.
    assert!(decode::message(&parse(
        r#"{"type":"PING","payload":{"ts":"2026-11-26T11:59:40.000Z","extra":[1]}}"#
    ))
    .is_some());
}

#[wasm_bindgen_test]
fn an_event_view_decodes() {
    let text = format!(
        r#"{{"event":{},"status":"closed","totals":{{"yes":456,"no":300}},"result":{{"optionId":"yes","totals":{{"yes":456,"no":300}}}}}}"#,
        &fixture!("server", "event_created")[r#"{"type":"EVENT_CREATED","payload":{"event":"#.len()
            ..fixture!("server", "event_created").trim_end().len() - 2]
    );
    let view = decode::event_view(&parse(&text)).expect("decodes");
    assert_eq!(view.status, EventStatus::Closed);
    assert_eq!(view.result.unwrap().option_id, "yes");
    assert!(decode::vote_response(&parse(r#"{"balance":900,"totals":{"yes":1}}"#)).is_some());
}
