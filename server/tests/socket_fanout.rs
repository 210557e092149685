//! Fan-out under load (docs/contract.md §6): a burst of thousands of votes reaches every subscriber
//! as at most one EVENT_UPDATED flush per update interval per channel, in order, once per
//! event, never after EVENT_CLOSED, ending with the exact totals; a socket that stops reading
//! still ends with the latest state, or is closed 4009 and recovers it from the snapshot.

mod common;
mod socket_support;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use livevote_protocol::{Channel, Role, ServerMessage, Totals};
use livevote_server::broker::{BrokerMessage, NoticeTarget};
use socket_support::actions::{close_event, create_event, totals, vote};
use socket_support::*;
use uuid::Uuid;

fn load_config() -> livevote_server::config::Config {
    let mut config = test_config();
    config.vote_rate = 100_000;
    config
}

/// Casts `per_user` single votes for each of `users` viewers at once; returns the totals the
/// server accepted.
async fn vote_storm(server: &TestServer, event: Uuid, users: usize, per_user: usize) -> Totals {
    let mut tasks = Vec::new();
    for user_index in 0..users {
        let state = server.state.clone();
        let token = server.token(Role::Viewer, Uuid::new_v4());
        tasks.push(tokio::spawn(async move {
            let mut accepted = (0u64, 0u64);
            for vote_index in 0..per_user {
                let option = if (user_index + vote_index) % 3 == 0 {
                    "blue"
                } else {
                    "red"
                };
                let (status, body) = vote(&state, event, &token, option, 1).await;
                assert_eq!(status.as_u16(), 200, "{body}");
                if option == "red" {
                    accepted.0 += 1;
                } else {
                    accepted.1 += 1;
                }
            }
            accepted
        }));
    }
    let mut red = 0;
    let mut blue = 0;
    for task in tasks {
        let (task_red, task_blue) = task.await.unwrap();
        red += task_red;
        blue += task_blue;
    }
    totals(red, blue)
}

/// What one subscriber saw of one event, checked against every per-event guarantee.
fn check_event_order(messages: &[ServerMessage], event: Uuid, expected: &Totals) {
    let mine: Vec<&ServerMessage> = messages
        .iter()
        .filter(|message| match message {
            ServerMessage::EventCreated(created) => created.event.id == event,
            ServerMessage::EventUpdated(updated) => updated.event_id == event,
            ServerMessage::EventClosed(closed) => closed.event_id == event,
            _ => false,
        })
        .collect();
    assert!(
        matches!(mine.first(), Some(ServerMessage::EventCreated(_))),
        "EVENT_CREATED first"
    );
    assert!(
        matches!(mine.last(), Some(ServerMessage::EventClosed(_))),
        "EVENT_CLOSED last"
    );
    let created = mine
        .iter()
        .filter(|message| matches!(message, ServerMessage::EventCreated(_)))
        .count();
    let closed = mine
        .iter()
        .filter(|message| matches!(message, ServerMessage::EventClosed(_)))
        .count();
    assert_eq!((created, closed), (1, 1), "each once");
    let mut last_seq = None;
    let mut last_totals: BTreeMap<String, u64> = BTreeMap::new();
    for message in &mine {
        if let ServerMessage::EventUpdated(updated) = message {
            assert!(last_seq < Some(updated.seq), "seq grows");
            last_seq = Some(updated.seq);
            for (option, votes) in &updated.totals {
                assert!(
                    *votes >= last_totals.get(option).copied().unwrap_or(0),
                    "totals never go backwards"
                );
            }
            last_totals = updated.totals.clone();
        }
    }
    let ServerMessage::EventClosed(closed) = mine.last().unwrap() else {
        unreachable!()
    };
    assert_eq!(
        &closed.result.totals, expected,
        "the close carries the exact totals"
    );
}

/// Frames that carried an EVENT_UPDATED of `event`, after the subscription's snapshot.
fn update_flushes(client: &Client, event: Uuid) -> Vec<tokio::time::Instant> {
    client
        .frames
        .iter()
        .filter(|frame| {
            frame.messages.iter().any(|message| matches!(message, ServerMessage::EventUpdated(updated) if updated.event_id == event))
        })
        .map(|frame| frame.at)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_votes_is_coalesced_per_channel_and_ends_with_exact_totals() {
    let server = TestServer::start_with(load_config()).await;
    let update_interval = server.state.config.update_interval;
    let streamer = Uuid::new_v4();
    let game = Uuid::new_v4();
    let viewer = server.token(Role::Viewer, Uuid::new_v4());
    let mut readers = Vec::new();
    for channels in [
        vec![format!("streamer:{streamer}")],
        vec![format!("game:{game}")],
        vec![format!("streamer:{streamer}"), format!("game:{game}")],
    ] {
        let mut client = connect(&server.socket_url(&format!("?token={viewer}"))).await;
        client.subscribe(&channels).await;
        client.until_subscribed().await;
        readers.push(client);
    }
    let event = create_event(&server.state, streamer, Some(game), 600).await;
    let reader_tasks: Vec<_> = readers
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let messages = client
                    .until(|message| matches!(message, ServerMessage::EventClosed(_)))
                    .await;
                (client, messages)
            })
        })
        .collect();

    let expected = vote_storm(&server, event, 40, 60).await;
    assert_eq!(expected.values().sum::<u64>(), 2_400);
    let result = close_event(&server.state, event).await;
    assert_eq!(
        result.totals, expected,
        "the ledger recorded every accepted vote"
    );

    for task in reader_tasks {
        let (client, messages) = task.await.unwrap();
        check_event_order(&messages, event, &expected);
        let flushes = update_flushes(&client, event);
        assert!(!flushes.is_empty());
        let span = flushes.last().unwrap().duration_since(flushes[0]);
        // One flush per tick at most: ticks are at least an interval apart.
        let most_ticks = (span.as_secs_f64() / update_interval.as_secs_f64()).floor() as usize + 2;
        assert!(
            flushes.len() <= most_ticks,
            "{} update frames in {span:?} (interval {update_interval:?})",
            flushes.len()
        );
        let per_second_bound = (span.as_secs_f64().ceil() as usize).max(1) * 4 + 1;
        assert!(
            flushes.len() <= per_second_bound,
            "at most 4 flushes per second"
        );
        let updates: usize = messages
            .iter()
            .filter(|message| matches!(message, ServerMessage::EventUpdated(_)))
            .count();
        assert!(
            updates < 2_400 / 10,
            "intermediate totals were coalesced ({updates} updates)"
        );
    }
    assert_server_healthy(&server).await;
}

/// Makes the socket's writer block: must-deliver notices bigger than the socket buffers.
fn stuff_channel(server: &TestServer, channel: Channel, count: usize, bytes_each: usize) {
    for _ in 0..count {
        server.state.realtime.apply(&BrokerMessage::Notice {
            target: NoticeTarget::Channel(channel),
            code: "MAINTENANCE".into(),
            message: "x".repeat(bytes_each),
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_stops_reading_still_ends_with_the_latest_totals_and_the_close() {
    let server = TestServer::start_with(load_config()).await;
    let streamer = Uuid::new_v4();
    let viewer = server.token(Role::Viewer, Uuid::new_v4());
    let url = server.socket_url(&format!("?streamerId={streamer}&token={viewer}"));
    let mut slow = try_connect_with(&url, &[], Some(4_096)).await.unwrap();
    slow.until_subscribed().await;
    let event = create_event(&server.state, streamer, None, 600).await;
    // The reader stops here. Notices pile up until the socket's writer is blocked behind
    // them (the kernel's buffers are full and the outbox starts holding bytes).
    let stalled_connection = server.state.realtime.hub().connections().pop().unwrap();
    let mut stuffed = 0;
    while stalled_connection.queued_bytes() == 0 {
        assert!(stuffed < 400, "the socket never blocked");
        stuff_channel(&server, Channel::streamer(streamer), 1, 64 * 1024);
        stuffed += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let queued_before_storm = stalled_connection.queued_bytes();
    let expected = vote_storm(&server, event, 20, 30).await;
    // Let several ticks pass while the reader is stalled.
    tokio::time::sleep(server.state.config.update_interval * 4).await;
    // Updates wait in a latest-value slot, never in the queue: however many ticks flushed
    // totals meanwhile, the queued bytes did not grow (they shrink if the kernel took some).
    assert!(
        stalled_connection.queued_bytes() <= queued_before_storm,
        "updates queued up behind a stalled reader"
    );
    close_event(&server.state, event).await;

    let (messages, close) = tokio::time::timeout(Duration::from_secs(30), async {
        let mut seen = Vec::new();
        loop {
            match slow.next().await {
                Received::Message(message) => {
                    let done = matches!(&message, ServerMessage::EventClosed(_));
                    seen.push(message);
                    if done {
                        return (seen, None);
                    }
                }
                Received::Closed(code) => return (seen, Some(code)),
            }
        }
    })
    .await
    .unwrap();
    match close {
        None => {
            check_event_order(&messages, event, &expected);
            assert_eq!(
                notices(&messages, "MAINTENANCE").count(),
                stuffed,
                "no notice is lost"
            );
        }
        Some(code) => {
            assert_eq!(code, Some(4009));
            let mut again = connect(&url).await;
            let snapshot = again.until_subscribed().await;
            check_event_order(&snapshot, event, &expected);
        }
    }
    assert_server_healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_whose_queue_passes_one_mebibyte_is_closed_4009_and_recovers_from_the_snapshot() {
    let server = TestServer::start_with(load_config()).await;
    let streamer = Uuid::new_v4();
    let viewer = server.token(Role::Viewer, Uuid::new_v4());
    let event = create_event(&server.state, streamer, None, 600).await;
    let url = server.socket_url(&format!("?streamerId={streamer}&token={viewer}"));
    let mut slow = try_connect_with(&url, &[], Some(4_096)).await.unwrap();
    slow.until_subscribed().await;
    let expected = vote_storm(&server, event, 5, 10).await;
    close_event(&server.state, event).await;

    let stats = server.state.realtime.hub().stats();
    let overflows_before = stats.queue_overflows();
    for _ in 0..400 {
        if stats.queue_overflows() > overflows_before {
            break;
        }
        stuff_channel(&server, Channel::streamer(streamer), 4, 64 * 1024);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        stats.queue_overflows() > overflows_before,
        "the queue overflowed"
    );
    let (_, code) = slow.until_closed().await;
    assert_eq!(code, Some(4009));

    let mut again = connect(&url).await;
    let snapshot = again.until_subscribed().await;
    check_event_order(&snapshot, event, &expected);
    again.close().await;
    assert_server_healthy(&server).await;
}
