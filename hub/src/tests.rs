//! Unit tests of the hub: ordering, dedup, latest-value slots, bounds and registration races.

use std::sync::Arc;

use bytes::Bytes;
use livevote_protocol::{
    BalanceUpdated, Channel, ChannelList, Event, EventClosed, EventCreated, EventOption,
    EventResult, EventUpdated, ServerMessage, SystemNotice, Timestamp, Totals,
};
use uuid::Uuid;

use super::*;

const STREAMER: Uuid = Uuid::from_u128(0x5);
const GAME: Uuid = Uuid::from_u128(0x6);

fn route(event_number: u128) -> EventRoute {
    EventRoute {
        event_id: Uuid::from_u128(0xE000 + event_number),
        streamer_id: STREAMER,
        game_id: Some(GAME),
    }
}

fn created(route: EventRoute) -> SharedMessage {
    SharedMessage::encode(&ServerMessage::EventCreated(EventCreated {
        event: Event {
            id: route.event_id,
            streamer_id: route.streamer_id,
            game_id: route.game_id,
            title: "Who wins?".into(),
            options: vec![
                EventOption {
                    id: "a".into(),
                    label: "A".into(),
                },
                EventOption {
                    id: "b".into(),
                    label: "B".into(),
                },
            ],
            closes_at: Timestamp("2026-11-26T12:00:00.000Z".into()),
            cost_per_vote: 1,
            prompt_versions: None,
        },
    }))
}

fn totals(votes: u64) -> Totals {
    Totals::from([("a".to_owned(), votes), ("b".to_owned(), 0)])
}

fn updated(route: EventRoute, seq: u64) -> SharedMessage {
    SharedMessage::encode(&ServerMessage::EventUpdated(EventUpdated {
        event_id: route.event_id,
        totals: totals(seq),
        closes_at: Some(Timestamp("2026-11-26T12:00:00.000Z".into())),
        seq,
    }))
}

fn closed(route: EventRoute, votes: u64) -> SharedMessage {
    SharedMessage::encode(&ServerMessage::EventClosed(EventClosed {
        event_id: route.event_id,
        result: EventResult {
            option_id: "a".into(),
            totals: totals(votes),
        },
    }))
}

fn balance(user_id: Uuid, amount: i64) -> SharedMessage {
    SharedMessage::encode(&ServerMessage::BalanceUpdated(BalanceUpdated {
        balance: amount,
        user_id: Some(user_id),
    }))
}

fn notice(code: &str) -> SharedMessage {
    SharedMessage::encode(&ServerMessage::SystemNotice(SystemNotice {
        code: code.into(),
        message: "m".into(),
        channel: None,
        retry_after_ms: None,
    }))
}

fn update(route: EventRoute, seq: u64) -> EventUpdate {
    EventUpdate {
        route,
        seq,
        message: updated(route, seq),
    }
}

/// Offers an update to every flush phase in turn, as one update interval of the coalescer does.
fn publish_update(hub: &Hub, update: &EventUpdate) {
    for phase in 0..FLUSH_PHASES {
        let mut wakes = WakeList::new();
        hub.deliver_event_update(update, phase, &mut wakes);
        wakes.wake_all();
    }
}

/// Drains a connection and parses every message of every frame, in order; also returns the
/// number of frames.
fn drain(connection: &Connection) -> (Vec<ServerMessage>, usize) {
    let mut frames: Vec<Bytes> = Vec::new();
    connection.drain(&mut frames);
    let mut messages = Vec::new();
    for frame in &frames {
        if frame.starts_with(b"[") {
            messages.extend(serde_json::from_slice::<Vec<ServerMessage>>(frame).unwrap());
        } else {
            messages.push(serde_json::from_slice(frame).unwrap());
        }
    }
    (messages, frames.len())
}

fn describe(messages: &[ServerMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|message| match message {
            ServerMessage::EventCreated(created) => {
                format!("created {}", created.event.id.as_u128() - 0xE000)
            }
            ServerMessage::EventUpdated(updated) => format!(
                "updated {} seq {}",
                updated.event_id.as_u128() - 0xE000,
                updated.seq
            ),
            ServerMessage::EventClosed(closed) => {
                format!("closed {}", closed.event_id.as_u128() - 0xE000)
            }
            ServerMessage::BalanceUpdated(balance) => format!("balance {}", balance.balance),
            ServerMessage::SystemNotice(notice) => format!("notice {}", notice.code),
            ServerMessage::Ping(_) => "ping".into(),
            ServerMessage::Subscribed(list) => format!("subscribed {}", list.channels.len()),
            ServerMessage::Unsubscribed(list) => format!("unsubscribed {}", list.channels.len()),
        })
        .collect()
}

fn subscribed(channels: usize) -> SharedMessage {
    SharedMessage::encode(&ServerMessage::Subscribed(ChannelList {
        channels: vec!["x".into(); channels],
    }))
}

#[test]
fn snapshot_comes_first_then_live_updates() {
    let hub = Hub::new(HubConfig::default());
    let connection = hub.connect();
    let event = route(1);
    let outcome = hub.subscribe(&connection, Channel::streamer(STREAMER), |snapshot| {
        snapshot.event_created(event, &created(event));
        snapshot.event_updated(event.event_id, 3, &updated(event, 3));
    });
    assert_eq!(outcome, SubscribeOutcome::Subscribed);
    connection.send(&subscribed(1));
    publish_update(&hub, &update(event, 4));
    let (messages, frames) = drain(&connection);
    assert_eq!(
        describe(&messages),
        [
            "created 1",
            "updated 1 seq 3",
            "subscribed 1",
            "updated 1 seq 4"
        ]
    );
    assert_eq!(frames, 1, "everything pending leaves in one frame");
}

/// Serialize once: every subscriber's frame is the very bytes encoded at publish, not a copy.
#[test]
fn every_subscriber_writes_the_same_bytes_of_one_encoding() {
    let hub = Hub::new(HubConfig::default());
    let connections: Vec<_> = (0..3).map(|_| hub.connect()).collect();
    for connection in &connections {
        hub.subscribe(connection, Channel::streamer(STREAMER), |_| {});
    }
    let event = route(1);
    let message = created(event);
    hub.publish_event_created(event, &message);
    for connection in &connections {
        let mut frames: Vec<Bytes> = Vec::new();
        connection.drain(&mut frames);
        assert_eq!(frames.len(), 1);
        assert_eq!(
            frames[0].as_ptr(),
            message.bytes().as_ptr(),
            "a lone message leaves as the shared encoding itself"
        );
    }
}

#[test]
fn a_connection_on_two_channels_gets_each_message_once() {
    let hub = Hub::new(HubConfig::default());
    let connection = hub.connect();
    hub.subscribe(&connection, Channel::streamer(STREAMER), |_| {});
    hub.subscribe(&connection, Channel::game(GAME), |_| {});
    let event = route(1);
    hub.publish_event_created(event, &created(event));
    publish_update(&hub, &update(event, 1));
    hub.publish_event_closed(event, &closed(event, 1));
    let (messages, _) = drain(&connection);
    assert_eq!(describe(&messages), ["created 1", "closed 1"]);
    assert_eq!(
        hub.stats().dropped(MessageKind::EventUpdated),
        1,
        "the update was superseded by the close"
    );
}

#[test]
fn the_second_channels_snapshot_repeats_nothing() {
    let hub = Hub::new(HubConfig::default());
    let connection = hub.connect();
    let event = route(1);
    let fill = |snapshot: &mut Snapshot<'_>| {
        snapshot.event_created(event, &created(event));
        snapshot.event_updated(event.event_id, 2, &updated(event, 2));
    };
    hub.subscribe(&connection, Channel::streamer(STREAMER), fill);
    hub.subscribe(&connection, Channel::game(GAME), fill);
    let (messages, _) = drain(&connection);
    assert_eq!(describe(&messages), ["created 1", "updated 1 seq 2"]);
}

#[test]
fn never_an_update_after_close_nor_a_stale_seq() {
    let hub = Hub::new(HubConfig::default());
    let connection = hub.connect();
    hub.subscribe(&connection, Channel::streamer(STREAMER), |_| {});
    let event = route(1);
    hub.publish_event_created(event, &created(event));
    publish_update(&hub, &update(event, 5));
    let (messages, _) = drain(&connection);
    assert_eq!(describe(&messages), ["created 1", "updated 1 seq 5"]);
    publish_update(&hub, &update(event, 4));
    publish_update(&hub, &update(event, 5));
    assert!(
        drain(&connection).0.is_empty(),
        "stale or repeated seqs are dropped"
    );
    hub.publish_event_closed(event, &closed(event, 6));
    publish_update(&hub, &update(event, 7));
    hub.publish_event_closed(event, &closed(event, 6));
    let (messages, _) = drain(&connection);
    assert_eq!(describe(&messages), ["closed 1"]);
}

#[test]
fn a_slow_connection_keeps_only_the_latest_update() {
    let hub = Hub::new(HubConfig::default());
    let connection = hub.connect();
    hub.subscribe(&connection, Channel::streamer(STREAMER), |_| {});
    let first = route(1);
    let second = route(2);
    hub.publish_event_created(first, &created(first));
    hub.publish_event_created(second, &created(second));
    for seq in 1..=100 {
        publish_update(&hub, &update(first, seq));
        publish_update(&hub, &update(second, seq * 2));
    }
    let (messages, frames) = drain(&connection);
    assert_eq!(
        describe(&messages),
        [
            "created 1",
            "created 2",
            "updated 1 seq 100",
            "updated 2 seq 200"
        ]
    );
    assert_eq!(frames, 1);
    assert_eq!(hub.stats().dropped(MessageKind::EventUpdated), 198);
    assert_eq!(hub.stats().sent(MessageKind::EventUpdated), 2);
}

#[test]
fn a_newer_snapshot_update_empties_an_older_slot() {
    let hub = Hub::new(HubConfig::default());
    let connection = hub.connect();
    let event = route(1);
    hub.subscribe(&connection, Channel::streamer(STREAMER), |snapshot| {
        snapshot.event_created(event, &created(event))
    });
    publish_update(&hub, &update(event, 3));
    hub.subscribe(&connection, Channel::game(GAME), |snapshot| {
        snapshot.event_created(event, &created(event));
        snapshot.event_updated(event.event_id, 4, &updated(event, 4));
    });
    let (messages, _) = drain(&connection);
    assert_eq!(
        describe(&messages),
        ["created 1", "updated 1 seq 4"],
        "seq 3 must not follow seq 4"
    );
}

#[test]
fn balances_keep_the_latest_version() {
    let hub = Hub::new(HubConfig::default());
    let connection = hub.connect();
    let user = Uuid::from_u128(9);
    hub.subscribe(&connection, Channel::user(user), |snapshot| {
        snapshot.balance(user, 2, &balance(user, 80))
    });
    hub.publish_balance(user, 1, &balance(user, 90));
    hub.publish_balance(user, 3, &balance(user, 70));
    hub.publish_balance(user, 4, &balance(user, 60));
    let (messages, _) = drain(&connection);
    assert_eq!(describe(&messages), ["balance 80", "balance 60"]);
    assert_eq!(hub.stats().dropped(MessageKind::BalanceUpdated), 1);
}

#[test]
fn a_snapshot_larger_than_the_queue_bound_is_delivered_and_live_traffic_stays_bounded() {
    let hub = Hub::new(HubConfig {
        max_pending_bytes: 10_000,
        ..HubConfig::default()
    });
    let connection = hub.connect();
    let channel = Channel::streamer(STREAMER);
    // Far more state than the bound allows: 400 events, each created and updated.
    let routes: Vec<EventRoute> = (0..400).map(route).collect();
    hub.subscribe(&connection, channel, |snapshot| {
        for route in &routes {
            snapshot.event_created(*route, &created(*route));
            snapshot.event_updated(route.event_id, 1, &updated(*route, 1));
        }
    });
    assert_eq!(
        connection.take_close_request(),
        None,
        "the snapshot closed the socket"
    );
    let (messages, _) = drain(&connection);
    assert_eq!(messages.len(), 800);
    // The staged events were merged: a live update of any of them reaches the connection,
    // an older one does not.
    let phase = connection.flush_phase();
    let mut wakes = WakeList::new();
    for (route, seq) in [(routes[399], 2), (routes[0], 1)] {
        let update = EventUpdate {
            route,
            seq,
            message: updated(route, seq),
        };
        hub.deliver_event_update(&update, phase, &mut wakes);
    }
    wakes.wake_all();
    assert_eq!(describe(&drain(&connection).0), ["updated 399 seq 2"]);
    // Live traffic after the snapshot still counts against the bound.
    let message = notice("MAINTENANCE");
    for _ in 0..(10_000 / message.len() + 2) {
        hub.publish_to_channel(&channel, &message);
    }
    let request = connection
        .take_close_request()
        .expect("a close was requested");
    assert_eq!(request.code, livevote_protocol::close_codes::TOO_SLOW);
}

#[test]
fn a_snapshot_repeats_nothing_another_channel_already_delivered_in_either_order() {
    let hub = Hub::new(HubConfig::default());
    let connection = hub.connect();
    let routes: Vec<EventRoute> = (0..50).rev().map(route).collect();
    hub.subscribe(&connection, Channel::game(GAME), |snapshot| {
        for route in routes.iter().step_by(2) {
            snapshot.event_created(*route, &created(*route));
        }
    });
    hub.subscribe(&connection, Channel::streamer(STREAMER), |snapshot| {
        for route in &routes {
            snapshot.event_created(*route, &created(*route));
            snapshot.event_closed(route.event_id, &closed(*route, 0));
            snapshot.event_closed(route.event_id, &closed(*route, 0));
        }
    });
    let described = describe(&drain(&connection).0);
    let created_count = described
        .iter()
        .filter(|line| line.starts_with("created"))
        .count();
    let closed_count = described
        .iter()
        .filter(|line| line.starts_with("closed"))
        .count();
    assert_eq!((created_count, closed_count), (50, 50));
}

#[test]
fn an_overflowing_queue_asks_for_close_4009_and_frees_memory() {
    let hub = Hub::new(HubConfig {
        max_pending_bytes: 10_000,
        ..HubConfig::default()
    });
    let connection = hub.connect();
    let channel = Channel::streamer(STREAMER);
    hub.subscribe(&connection, channel, |_| {});
    let message = notice("MAINTENANCE");
    for _ in 0..(10_000 / message.len() + 2) {
        hub.publish_to_channel(&channel, &message);
    }
    let request = connection
        .take_close_request()
        .expect("a close was requested");
    assert_eq!(request.code, livevote_protocol::close_codes::TOO_SLOW);
    assert!(!request.deliver_pending);
    assert_eq!(connection.queued_bytes(), 0);
    assert_eq!(hub.stats().queue_overflows(), 1);
    hub.publish_to_channel(&channel, &message);
    assert!(
        drain(&connection).0.is_empty(),
        "a closing connection accepts nothing"
    );
    assert_eq!(
        connection.take_close_request(),
        None,
        "the request is handed out once"
    );
}

#[test]
fn the_channel_limit_counts_every_channel() {
    let hub = Hub::new(HubConfig {
        max_channels_per_connection: 3,
        ..HubConfig::default()
    });
    let connection = hub.connect();
    for number in 0..3 {
        assert_eq!(
            hub.subscribe(&connection, Channel::game(Uuid::from_u128(number)), |_| {}),
            SubscribeOutcome::Subscribed
        );
    }
    assert_eq!(
        hub.subscribe(&connection, Channel::game(Uuid::from_u128(1)), |_| {}),
        SubscribeOutcome::AlreadySubscribed
    );
    assert_eq!(
        hub.subscribe(&connection, Channel::game(Uuid::from_u128(99)), |_| {}),
        SubscribeOutcome::LimitReached
    );
    assert_eq!(hub.subscriber_count(&Channel::game(Uuid::from_u128(99))), 0);
    assert_eq!(hub.subscription_count(), 3);
    assert!(hub.unsubscribe(&connection, Channel::game(Uuid::from_u128(0))));
    assert!(!hub.unsubscribe(&connection, Channel::game(Uuid::from_u128(0))));
    assert_eq!(
        hub.subscribe(&connection, Channel::game(Uuid::from_u128(99)), |_| {}),
        SubscribeOutcome::Subscribed
    );
}

#[test]
fn unsubscribing_forgets_so_resubscribing_sends_the_snapshot_again() {
    let hub = Hub::new(HubConfig::default());
    let connection = hub.connect();
    let event = EventRoute {
        game_id: None,
        ..route(1)
    };
    let channel = Channel::streamer(STREAMER);
    let fill = |snapshot: &mut Snapshot<'_>| {
        snapshot.event_created(event, &created(event));
        snapshot.event_updated(event.event_id, 1, &updated(event, 1));
    };
    hub.subscribe(&connection, channel, fill);
    drain(&connection);
    hub.unsubscribe(&connection, channel);
    publish_update(&hub, &update(event, 2));
    assert!(drain(&connection).0.is_empty());
    hub.subscribe(&connection, channel, fill);
    let (messages, _) = drain(&connection);
    assert_eq!(describe(&messages), ["created 1", "updated 1 seq 1"]);
}

#[test]
fn keeping_one_of_two_channels_keeps_the_events_it_carries() {
    let hub = Hub::new(HubConfig::default());
    let connection = hub.connect();
    let event = route(1);
    hub.subscribe(&connection, Channel::streamer(STREAMER), |snapshot| {
        snapshot.event_created(event, &created(event))
    });
    hub.subscribe(&connection, Channel::game(GAME), |_| {});
    hub.unsubscribe(&connection, Channel::streamer(STREAMER));
    hub.publish_event_created(event, &created(event));
    publish_update(&hub, &update(event, 1));
    let (messages, _) = drain(&connection);
    assert_eq!(describe(&messages), ["created 1", "updated 1 seq 1"]);
}

#[test]
fn disconnect_leaves_every_channel_and_the_node() {
    let hub = Hub::new(HubConfig::default());
    let connection = hub.connect();
    let other = hub.connect();
    hub.subscribe(&connection, Channel::streamer(STREAMER), |_| {});
    hub.subscribe(&connection, Channel::game(GAME), |_| {});
    hub.subscribe(&other, Channel::game(GAME), |_| {});
    assert_eq!(hub.subscription_count(), 3);
    hub.disconnect(&connection);
    assert_eq!(hub.connection_count(), 1);
    assert_eq!(hub.subscription_count(), 1);
    assert_eq!(hub.subscriber_count(&Channel::streamer(STREAMER)), 0);
    assert_eq!(hub.subscriber_count(&Channel::game(GAME)), 1);
    assert_eq!(
        hub.subscribe(&connection, Channel::streamer(STREAMER), |_| {}),
        SubscribeOutcome::Closed
    );
    hub.disconnect(&other);
    assert_eq!(hub.connection_count(), 0);
    // An emptied channel is taken out of the registry and can be joined again.
    let third = hub.connect();
    assert_eq!(
        hub.subscribe(&third, Channel::game(GAME), |_| {}),
        SubscribeOutcome::Subscribed
    );
    assert_eq!(hub.subscriber_count(&Channel::game(GAME)), 1);
}

#[test]
fn broadcast_reaches_unsubscribed_connections() {
    let hub = Hub::new(HubConfig::default());
    let lonely = hub.connect();
    let subscribed_one = hub.connect();
    hub.subscribe(&subscribed_one, Channel::streamer(STREAMER), |_| {});
    hub.broadcast(&notice("MAINTENANCE"));
    assert_eq!(describe(&drain(&lonely).0), ["notice MAINTENANCE"]);
    assert_eq!(describe(&drain(&subscribed_one).0), ["notice MAINTENANCE"]);
}

#[test]
fn ping_rounds_hold_only_connections_that_were_pinged() {
    let hub = Hub::new(HubConfig::default());
    let answers = hub.connect();
    let silent = hub.connect();
    let (round, pinged) = hub.start_ping_round();
    assert_eq!(pinged.len(), 2);
    let late = hub.connect();
    answers.record_pong();
    let missed: Vec<ConnectionId> = hub
        .missed_ping(round)
        .iter()
        .map(|connection| connection.id())
        .collect();
    assert_eq!(missed, [silent.id()]);
    assert!(!late.missed_ping(round));
}

#[tokio::test]
async fn a_publish_wakes_the_writer_once_per_drain() {
    let hub = Hub::new(HubConfig::default());
    let connection = hub.connect();
    hub.subscribe(&connection, Channel::streamer(STREAMER), |_| {});
    hub.publish_to_channel(&Channel::streamer(STREAMER), &notice("A"));
    hub.publish_to_channel(&Channel::streamer(STREAMER), &notice("B"));
    tokio::time::timeout(std::time::Duration::from_secs(5), connection.notified())
        .await
        .unwrap();
    assert_eq!(describe(&drain(&connection).0), ["notice A", "notice B"]);
    let second_wake =
        tokio::time::timeout(std::time::Duration::from_millis(50), connection.notified()).await;
    assert!(
        second_wake.is_err(),
        "two messages before a drain wake the writer once"
    );
}

#[tokio::test(start_paused = true)]
async fn wait_until_empty_returns_when_the_last_connection_leaves() {
    let hub = Arc::new(Hub::new(HubConfig::default()));
    let connection = hub.connect();
    let waiter = tokio::spawn({
        let hub = hub.clone();
        async move {
            hub.wait_until_empty(tokio::time::Instant::now() + std::time::Duration::from_secs(10))
                .await
        }
    });
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    hub.disconnect(&connection);
    assert!(waiter.await.unwrap());
    let connection = hub.connect();
    assert!(
        !hub.wait_until_empty(tokio::time::Instant::now() + std::time::Duration::from_secs(1))
            .await
    );
    hub.disconnect(&connection);
}

/// Publishers and subscribers race on many threads; every connection must see, per event,
/// CREATED first, strictly growing seqs, CLOSED last, nothing after it, and the final state.
#[test]
fn concurrent_subscribes_and_publishes_keep_every_guarantee() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let hub = Arc::new(Hub::new(HubConfig::default()));
    let event = route(1);
    // The "cache": current seq, and whether the event is closed. Updated before publishing,
    // read by snapshots, exactly as the server does.
    let current_seq = Arc::new(AtomicU64::new(0));
    let is_closed = Arc::new(AtomicBool::new(false));
    let created_message = created(event);
    let final_seq = 2_000;
    let connections: Vec<Arc<Connection>> = (0..64).map(|_| hub.connect()).collect();
    let received: Arc<Mutex<HashMap<ConnectionId, Vec<ServerMessage>>>> = Arc::default();

    std::thread::scope(|scope| {
        scope.spawn(|| {
            for seq in 1..=final_seq {
                current_seq.store(seq, Ordering::SeqCst);
                publish_update(&hub, &update(event, seq));
            }
            is_closed.store(true, Ordering::SeqCst);
            hub.publish_event_closed(event, &closed(event, final_seq));
        });
        for (index, connection) in connections.iter().enumerate() {
            let hub = &hub;
            let current_seq = &current_seq;
            let is_closed = &is_closed;
            let created_message = &created_message;
            let received = &received;
            scope.spawn(move || {
                let channel = if index % 2 == 0 {
                    Channel::streamer(STREAMER)
                } else {
                    Channel::game(GAME)
                };
                hub.subscribe(connection, channel, |snapshot| {
                    snapshot.event_created(event, created_message);
                    let seq = current_seq.load(Ordering::SeqCst);
                    if is_closed.load(Ordering::SeqCst) {
                        snapshot.event_closed(event.event_id, &closed(event, seq));
                    } else {
                        snapshot.event_updated(event.event_id, seq, &updated(event, seq));
                    }
                });
                // Drain while the publisher runs, as a writer would.
                for _ in 0..50 {
                    let (messages, _) = drain(connection);
                    received
                        .lock()
                        .entry(connection.id())
                        .or_default()
                        .extend(messages);
                    std::thread::yield_now();
                }
            });
        }
    });
    for connection in &connections {
        let (messages, _) = drain(connection);
        received
            .lock()
            .entry(connection.id())
            .or_default()
            .extend(messages);
    }
    let received = received.lock();
    for connection in &connections {
        let messages = &received[&connection.id()];
        assert!(
            matches!(messages.first(), Some(ServerMessage::EventCreated(_))),
            "CREATED first"
        );
        assert!(
            matches!(messages.last(), Some(ServerMessage::EventClosed(_))),
            "CLOSED last"
        );
        let created_count = messages
            .iter()
            .filter(|message| matches!(message, ServerMessage::EventCreated(_)))
            .count();
        let closed_count = messages
            .iter()
            .filter(|message| matches!(message, ServerMessage::EventClosed(_)))
            .count();
        assert_eq!((created_count, closed_count), (1, 1));
        let seqs: Vec<u64> = messages
            .iter()
            .filter_map(|message| match message {
                ServerMessage::EventUpdated(updated) => Some(updated.seq),
                _ => None,
            })
            .collect();
        assert!(
            seqs.windows(2).all(|pair| pair[0] < pair[1]),
            "seqs grow: {seqs:?}"
        );
    }
}

#[test]
fn a_flush_phase_reaches_its_own_connections_and_every_phase_reaches_all() {
    let hub = Hub::new(HubConfig::default());
    let connections: Vec<_> = (0..3 * FLUSH_PHASES).map(|_| hub.connect()).collect();
    for connection in &connections {
        hub.subscribe(connection, Channel::streamer(STREAMER), |_| {});
    }
    let event = route(1);
    hub.publish_event_created(event, &created(event));
    for connection in &connections {
        drain(connection);
    }
    let first_update = update(event, 1);
    let mut wakes = WakeList::new();
    let visited = hub.deliver_event_update(&first_update, 3, &mut wakes);
    assert_eq!(visited, 3, "only phase 3's connections were visited");
    assert_eq!(wakes.len(), 3);
    wakes.wake_all();
    for connection in &connections {
        let (messages, _) = drain(connection);
        if connection.flush_phase() == 3 {
            assert_eq!(describe(&messages), ["updated 1 seq 1"]);
        } else {
            assert!(messages.is_empty(), "another phase waits for its turn");
        }
    }
    let phases: std::collections::BTreeSet<usize> =
        connections.iter().map(|c| c.flush_phase()).collect();
    assert_eq!(
        phases.len(),
        FLUSH_PHASES,
        "consecutive connections fill every phase"
    );
    publish_update(&hub, &update(event, 2));
    for connection in &connections {
        let (messages, frames) = drain(connection);
        assert_eq!(describe(&messages), ["updated 1 seq 2"]);
        assert_eq!(frames, 1);
    }
}
