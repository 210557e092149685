//! The SDK's decoding and merge rules against the protocol's golden fixtures, in a browser
//! (wasm-bindgen-test, headless Chromium): the fixtures go through `JSON.parse` and the SDK's
//! decoder exactly as socket frames do.
#![cfg(target_arch = "wasm32")]

use livevote_protocol::{EventStatus, EventView, ServerMessage, Timestamp};
use livevote_sdk::decode;
use livevote_sdk::policy::{self, CloseAction};
use livevote_sdk::state::{Change, Store};
use uuid::Uuid;
use wasm_bindgen::JsValue;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

macro_rules! fixture {
    ($folder:literal, $name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../protocol/tests/fixtures/",
            $folder,
            "/",
            $name,
            ".json"
        ))
    };
}

const EVENT: &str = "3f1c2a4e-8d7b-4c1a-9e2f-5b6a7c8d9e01";
const OTHER_EVENT: &str = "7e6d5c4b-3a29-4818-a7f6-e5d4c3b2a190";
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

/// EVENT_UPDATED for the fixture event with the given seq and "yes" votes.
fn update(seq: u64, yes: u64) -> ServerMessage {
    one(&format!(
        r#"{{"type":"EVENT_UPDATED","payload":{{"eventId":"{EVENT}","totals":{{"yes":{yes},"no":1}},"closesAt":null,"seq":{seq}}}}}"#
    ))
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
fn created_then_updated_then_closed() {
    let mut store = Store::default();
    assert_eq!(
        store.apply(&one(fixture!("server", "event_created"))),
        Change::Event(id(EVENT))
    );
    let state = store.get(id(EVENT)).unwrap();
    assert!(!state.closed && state.seq.is_none());
    assert_eq!(
        (state.totals["yes"], state.totals["no"]),
        (0, 0),
        "every option starts at zero"
    );

    assert_eq!(
        store.apply(&one(fixture!("server", "event_updated"))),
        Change::Event(id(EVENT))
    );
    assert_eq!(store.get(id(EVENT)).unwrap().totals["yes"], 123);

    // The batch carries seq 214 for this event and an update for an event never created.
    for message in frame(fixture!("server", "batch")) {
        store.apply(&message);
    }
    let state = store.get(id(EVENT)).unwrap();
    assert_eq!((state.seq, state.totals["yes"]), (Some(214), 125));
    assert!(
        store.get(id(OTHER_EVENT)).is_none(),
        "an update without EVENT_CREATED is not shown"
    );

    assert_eq!(
        store.apply(&one(fixture!("server", "event_closed"))),
        Change::Event(id(EVENT))
    );
    let state = store.get(id(EVENT)).unwrap();
    assert!(state.closed);
    assert_eq!(state.result.as_ref().unwrap().option_id, "yes");
    assert_eq!(
        (state.totals["yes"], state.totals["no"]),
        (456, 300),
        "the result's totals are final"
    );
}

#[wasm_bindgen_test]
fn stale_and_duplicate_updates_are_dropped() {
    let mut store = Store::default();
    store.apply(&one(fixture!("server", "event_created")));
    store.apply(&update(5, 50));
    assert_eq!(store.apply(&update(4, 40)), Change::Nothing, "older seq");
    assert_eq!(store.apply(&update(5, 99)), Change::Nothing, "same seq");
    assert_eq!(store.get(id(EVENT)).unwrap().totals["yes"], 50);
    assert_eq!(store.apply(&update(6, 60)), Change::Event(id(EVENT)));
    // A second EVENT_CREATED (a snapshot overlapping a live message) keeps totals and seq.
    assert_eq!(
        store.apply(&one(fixture!("server", "event_created"))),
        Change::Nothing
    );
    assert_eq!(store.get(id(EVENT)).unwrap().seq, Some(6));
}

#[wasm_bindgen_test]
fn closed_is_terminal() {
    let mut store = Store::default();
    store.apply(&one(fixture!("server", "event_created")));
    store.apply(&one(fixture!("server", "event_closed")));
    let closed = store.get(id(EVENT)).unwrap().clone();
    assert_eq!(
        store.apply(&update(1_000, 1)),
        Change::Nothing,
        "no update after EVENT_CLOSED"
    );
    assert_eq!(
        store.apply(&one(fixture!("server", "event_closed"))),
        Change::Nothing
    );
    assert_eq!(
        store.apply(&one(fixture!("server", "event_created"))),
        Change::Nothing
    );
    assert_eq!(store.get(id(EVENT)).unwrap(), &closed);
}

#[wasm_bindgen_test]
fn balance_follows_balance_updated() {
    let mut store = Store::default();
    assert_eq!(
        store.apply(&one(fixture!("server", "balance_updated"))),
        Change::Balance
    );
    assert_eq!(store.balance(), Some(12_345));
    assert_eq!(
        store.apply(&one(fixture!("seed", "balance_updated"))),
        Change::Nothing,
        "same value"
    );
}

/// After a reconnect: the fresh snapshot replaces the old state; an open event missing from it
/// must be verified over HTTP; a closed one stays; one no channel carries goes.
#[wasm_bindgen_test]
fn a_fresh_snapshot_replaces_the_stale_state() {
    let created = |event: &str, streamer: &str| {
        one(&format!(
            r#"{{"type":"EVENT_CREATED","payload":{{"event":{{"id":"{event}","streamerId":"{streamer}","gameId":null,"title":"t","options":[{{"id":"a","label":"A"}},{{"id":"b","label":"B"}}],"closesAt":"2026-11-26T12:00:00.000Z","costPerVote":1}}}}}}"#
        ))
    };
    let missing_open = "11111111-1111-4111-8111-111111111111";
    let missing_closed = "22222222-2222-4222-8222-222222222222";
    let uncarried = "33333333-3333-4333-8333-333333333333";
    let other_streamer = "44444444-4444-4444-8444-444444444444";
    let mut old = Store::default();
    old.apply(&one(fixture!("server", "event_created")));
    old.apply(&update(300, 1));
    old.apply(&created(missing_open, STREAMER));
    old.apply(&created(missing_closed, STREAMER));
    old.apply(&one(&format!(
        r#"{{"type":"EVENT_CLOSED","payload":{{"eventId":"{missing_closed}","result":{{"optionId":"a","totals":{{"a":3,"b":1}}}}}}}}"#
    )));
    old.apply(&created(uncarried, other_streamer));
    assert_eq!(old.mark_stale().len(), 3, "open events become stale");
    assert!(old.get(id(EVENT)).unwrap().stale);

    // The new connection's snapshot: the fixture event with a seq lower than before (a
    // restarted server may count from scratch) and a new event.
    let mut fresh = Store::default();
    fresh.apply(&one(fixture!("server", "event_created")));
    fresh.apply(&update(2, 7));
    fresh.apply(&created(OTHER_EVENT, STREAMER));

    let adoption = old.adopt(fresh, |state| {
        state.is_carried_by(&format!("streamer:{STREAMER}"))
    });
    assert_eq!(adoption.to_verify, vec![id(missing_open)]);
    assert_eq!(adoption.removed, vec![id(uncarried)]);
    assert!(adoption.changed.contains(&id(EVENT)) && adoption.changed.contains(&id(OTHER_EVENT)));
    let state = old.get(id(EVENT)).unwrap();
    assert_eq!(
        (state.seq, state.totals["yes"], state.stale),
        (Some(2), 7, false)
    );
    assert!(old.get(id(missing_closed)).unwrap().closed);
    assert!(
        old.get(id(missing_open)).unwrap().stale,
        "stays visible, stale, until verified"
    );
    assert_eq!(old.events().len(), 4);

    // GET /api/events/{id} says it closed meanwhile.
    let view = EventView {
        event: old.get(id(missing_open)).unwrap().event.clone(),
        status: EventStatus::Closed,
        totals: [("a".to_string(), 9), ("b".to_string(), 4)].into(),
        result: Some(livevote_protocol::EventResult {
            option_id: "a".into(),
            totals: [("a".to_string(), 9), ("b".to_string(), 4)].into(),
        }),
    };
    assert_eq!(old.apply_view(&view), Change::Event(id(missing_open)));
    let state = old.get(id(missing_open)).unwrap();
    assert!(state.closed && !state.stale);
    assert_eq!(state.totals["a"], 9);
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

#[wasm_bindgen_test]
fn closed_events_are_capped() {
    let mut store = Store::default();
    for index in 0..(livevote_sdk::state::MAX_CLOSED_EVENTS + 5) {
        let event = format!("00000000-0000-4000-8000-{index:012}");
        store.apply(&one(&format!(
            r#"{{"type":"EVENT_CREATED","payload":{{"event":{{"id":"{event}","streamerId":"{STREAMER}","gameId":null,"title":"t","options":[{{"id":"a","label":"A"}},{{"id":"b","label":"B"}}],"closesAt":"2026-11-26T12:00:00.000Z","costPerVote":1}}}}}}"#
        )));
        store.apply(&one(&format!(
            r#"{{"type":"EVENT_CLOSED","payload":{{"eventId":"{event}","result":{{"optionId":"a","totals":{{"a":0,"b":0}}}}}}}}"#
        )));
    }
    assert_eq!(store.prune_closed().len(), 5);
    assert_eq!(store.events().len(), livevote_sdk::state::MAX_CLOSED_EVENTS);
}

#[wasm_bindgen_test]
fn close_codes_follow_the_contract_table() {
    use CloseAction::*;
    let table = [
        (1000, Stop),
        (4003, Stop),
        (1006, Reconnect),
        (1009, Reconnect),
        (4000, Reconnect),
        (4009, Reconnect),
        (1001, Reconnect),
        (1011, Reconnect),
        (1012, ReconnectAfterRestart),
        (4008, ReconnectSlowly),
        (4002, RenewTokenThenReconnect),
        (4001, RenewTokenOnceThenStop),
    ];
    for (code, action) in table {
        assert_eq!(policy::action_for_close(code), action, "close code {code}");
    }
    assert!(policy::reconnect_delay_ms(ReconnectSlowly, 0, 0.0, None) >= 5_000.0);
    assert!(policy::reconnect_delay_ms(ReconnectAfterRestart, 0, 0.0, Some(2_817.0)) >= 2_817.0);
    for attempt in 0..40 {
        let delay = policy::reconnect_delay_ms(Reconnect, attempt, 0.999, None);
        assert!(delay < policy::BACKOFF_CAP_MS, "attempt {attempt}: {delay}");
    }
}
