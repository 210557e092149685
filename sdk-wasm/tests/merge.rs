//! The SDK's merge, reconnect and clock rules, natively (`cargo test -p livevote-sdk` on the
//! host), against the protocol's golden fixtures read with serde into the protocol's types.
//! The decoder that turns `JSON.parse`d frames into those types needs a JavaScript engine and
//! is tested in headless Chromium (tests/decode.rs).
#![cfg(not(target_arch = "wasm32"))]

#[macro_use]
mod support;

use livevote_protocol::{EventStatus, EventView, ServerMessage};
use livevote_sdk::clock::ClockOffset;
use livevote_sdk::policy::{self, Backoff, CloseAction, InvalidBackoff};
use livevote_sdk::state::{Change, Store};
use uuid::Uuid;

const EVENT: &str = "3f1c2a4e-8d7b-4c1a-9e2f-5b6a7c8d9e01";
const OTHER_EVENT: &str = "7e6d5c4b-3a29-4818-a7f6-e5d4c3b2a190";
const STREAMER: &str = "a1b2c3d4-e5f6-4a5b-8c9d-0e1f2a3b4c5d";

/// A frame as the server sends it: one message or an array of them.
fn frame(text: &str) -> Vec<ServerMessage> {
    if text.trim_start().starts_with('[') {
        serde_json::from_str(text).expect("fixture is a batch of server messages")
    } else {
        vec![serde_json::from_str(text).expect("fixture is a server message")]
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

#[test]
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

#[test]
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

#[test]
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

/// Found by the `sdk_merge` fuzz target: a refreshed definition that adds an option left that
/// option without a total, which a page renders as `undefined`.
#[test]
fn an_option_added_by_a_second_event_created_starts_at_zero_and_totals_are_kept() {
    let mut store = Store::default();
    store.apply(&one(fixture!("server", "event_created")));
    store.apply(&update(5, 7));
    let refreshed = fixture!("server", "event_created").replacen(
        r#"{"id":"no","#,
        r#"{"id":"maybe","label":"Maybe"},{"id":"no","#,
        1,
    );
    assert_ne!(
        refreshed,
        fixture!("server", "event_created"),
        "fixture shape changed"
    );
    assert_eq!(store.apply(&one(&refreshed)), Change::Event(id(EVENT)));
    let state = store.get(id(EVENT)).unwrap();
    assert_eq!(state.event.options.len(), 3);
    assert_eq!(state.totals.get("maybe"), Some(&0));
    assert_eq!(
        state.totals.get("yes"),
        Some(&7),
        "votes so far survive the refresh"
    );
    assert_eq!(state.seq, Some(5));
}

#[test]
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

#[test]
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

#[test]
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

#[test]
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
    let backoff = Backoff::default();
    assert!(policy::reconnect_delay_ms(&backoff, ReconnectSlowly, 0, 0.0, None) >= 5_000.0);
    // The SERVER_RESTARTING fixture asks for 2817 ms.
    let ServerMessage::SystemNotice(notice) = one(fixture!("server", "system_notice")) else {
        panic!("the fixture is a SYSTEM_NOTICE")
    };
    let retry_after = notice.retry_after_ms.map(|ms| ms as f64);
    assert_eq!(retry_after, Some(2_817.0));
    assert!(
        policy::reconnect_delay_ms(&backoff, ReconnectAfterRestart, 0, 0.0, retry_after) >= 2_817.0
    );
    for attempt in 0..40 {
        let delay = policy::reconnect_delay_ms(&backoff, Reconnect, attempt, 0.999, None);
        assert!(delay < policy::BACKOFF_CAP_MS, "attempt {attempt}: {delay}");
    }
}

/// The defaults are the contract's: full jitter from 0.5 s doubling to 20 s.
#[test]
fn the_default_backoff_is_full_jitter_from_half_a_second_to_twenty() {
    let backoff = Backoff::default();
    assert_eq!(Backoff::new(None, None, None), Ok(backoff));
    let ceilings: Vec<f64> = (0..8)
        .map(|attempt| backoff.delay_ms(attempt, 1.0))
        .collect();
    assert_eq!(
        ceilings,
        [500.0, 1_000.0, 2_000.0, 4_000.0, 8_000.0, 16_000.0, 20_000.0, 20_000.0]
    );
    assert_eq!(backoff.delay_ms(3, 0.0), 0.0, "full jitter reaches zero");
    assert_eq!(backoff.delay_ms(3, 0.5), 2_000.0);
    assert_eq!(backoff.delay_ms(u32::MAX, 0.999_999), 19_999.0);
}

#[test]
fn reconnect_options_shape_the_backoff() {
    // No jitter: every delay is its ceiling, doubling from 100 ms up to 300 ms.
    let fixed = Backoff::new(Some(100.0), Some(300.0), Some(0.0)).unwrap();
    let delays: Vec<f64> = (0..4)
        .map(|attempt| fixed.delay_ms(attempt, 0.123))
        .collect();
    assert_eq!(delays, [100.0, 200.0, 300.0, 300.0]);
    // Half jitter: between half the ceiling and the ceiling.
    let half = Backoff::new(Some(1_000.0), None, Some(0.5)).unwrap();
    assert_eq!(half.delay_ms(0, 0.0), 500.0);
    assert_eq!(half.delay_ms(0, 0.999_999), 999.0);
    assert_eq!(half.delay_ms(10, 1.0), policy::BACKOFF_CAP_MS);
    // A minimum above the default cap, given alone, raises the cap with it.
    let slow = Backoff::new(Some(30_000.0), None, Some(0.0)).unwrap();
    assert_eq!(slow.delay_ms(5, 0.5), 30_000.0);
    // The 4008 and 1012 waits come on top of the page's backoff.
    assert_eq!(
        policy::reconnect_delay_ms(&fixed, CloseAction::ReconnectSlowly, 0, 0.5, None),
        policy::RATE_LIMITED_WAIT_MS + 100.0
    );
}

#[test]
fn bad_reconnect_options_are_refused() {
    let refused = [
        (Some(0.0), None, None, InvalidBackoff::MinDelay),
        (Some(-5.0), None, None, InvalidBackoff::MinDelay),
        (Some(f64::NAN), None, None, InvalidBackoff::MinDelay),
        (Some(f64::INFINITY), None, None, InvalidBackoff::MinDelay),
        (Some(1_000.0), Some(999.0), None, InvalidBackoff::MaxDelay),
        (None, Some(100.0), None, InvalidBackoff::MaxDelay),
        (None, Some(f64::NAN), None, InvalidBackoff::MaxDelay),
        (None, Some(7_200_000.0), None, InvalidBackoff::MaxDelay),
        (None, None, Some(1.5), InvalidBackoff::Jitter),
        (None, None, Some(-0.1), InvalidBackoff::Jitter),
        (None, None, Some(f64::NAN), InvalidBackoff::Jitter),
    ];
    for (min, max, jitter, why) in refused {
        assert_eq!(
            Backoff::new(min, max, jitter),
            Err(why),
            "{min:?} {max:?} {jitter:?}"
        );
        assert!(why.message().starts_with("options.reconnect."));
    }
}

/// The PING fixture's `ts`, arriving at two local times: the offset is the least-delayed one.
#[test]
fn the_clock_follows_the_ping_fixture() {
    let ServerMessage::Ping(ping) = one(fixture!("server", "ping")) else {
        panic!("the fixture is a PING")
    };
    assert_eq!(ping.ts.as_str(), "2026-11-26T11:59:40.000Z");
    // 2026-11-26T11:59:40Z in milliseconds since the epoch.
    let server_ms = 1_795_694_380_000.0;
    let mut clock = ClockOffset::default();
    clock.add_sample(server_ms, server_ms - 60_000.0 + 250.0);
    clock.add_sample(server_ms, server_ms - 60_000.0 + 40.0);
    assert_eq!(clock.offset_ms(), 60_000.0 - 40.0);
}
