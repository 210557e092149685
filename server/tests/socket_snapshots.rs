//! Socket snapshots and delivery order (docs/contract.md §5 snapshots, §6 delivery guarantees):
//! snapshot then live, recently closed events, balances, one message per event across two
//! channels, and snapshots served from memory during a reconnect storm.

mod common;
mod socket_support;

use common::*;
use livevote_protocol::{Role, ServerMessage};
use socket_support::actions::{close_event, create_event, totals, vote};
use socket_support::*;
use uuid::Uuid;

fn updated_totals(message: &ServerMessage, event: Uuid) -> Option<&livevote_protocol::Totals> {
    match message {
        ServerMessage::EventUpdated(updated) if updated.event_id == event => Some(&updated.totals),
        _ => None,
    }
}

#[tokio::test]
async fn a_streamer_id_socket_gets_the_snapshot_then_live_updates_then_the_close() {
    let server = TestServer::start().await;
    let streamer = Uuid::new_v4();
    let event = create_event(&server.state, streamer, None, 600).await;
    let viewer = server.token(Role::Viewer, Uuid::new_v4());
    let mut client =
        connect(&server.socket_url(&format!("?streamerId={streamer}&token={viewer}"))).await;

    let snapshot = client.until_subscribed().await;
    assert_eq!(
        describe_all(&snapshot),
        [
            format!("EVENT_CREATED {event}"),
            format!("EVENT_UPDATED {event}"),
            format!("SUBSCRIBED streamer:{streamer}")
        ]
    );
    assert_eq!(updated_totals(&snapshot[1], event), Some(&totals(0, 0)));

    let (status, body) = vote(&server.state, event, &viewer, "red", 3).await;
    assert_eq!(status.as_u16(), 200, "{body}");
    let live = client
        .until(|message| updated_totals(message, event) == Some(&totals(3, 0)))
        .await;
    let ServerMessage::EventUpdated(update) = live.last().unwrap() else {
        unreachable!()
    };
    assert!(update.seq >= 1 && update.closes_at.is_some());

    let result = close_event(&server.state, event).await;
    let tail = client
        .until(|message| matches!(message, ServerMessage::EventClosed(_)))
        .await;
    let ServerMessage::EventClosed(closed) = tail.last().unwrap() else {
        unreachable!()
    };
    assert_eq!(closed.result, result);
    assert_eq!(closed.result.totals, totals(3, 0));
    client.close().await;
}

#[tokio::test]
async fn a_recently_closed_event_is_in_the_snapshot_as_created_then_closed() {
    let server = TestServer::start().await;
    let streamer = Uuid::new_v4();
    let open_event = create_event(&server.state, streamer, None, 600).await;
    let closed_event = create_event(&server.state, streamer, None, 600).await;
    let viewer = server.token(Role::Viewer, Uuid::new_v4());
    vote(&server.state, closed_event, &viewer, "blue", 2).await;
    // A watcher sees the close live, so the node has applied it before the snapshot below.
    let mut watcher =
        connect(&server.socket_url(&format!("?streamerId={streamer}&token={viewer}"))).await;
    watcher.until_subscribed().await;
    close_event(&server.state, closed_event).await;
    watcher
        .until(|message| matches!(message, ServerMessage::EventClosed(_)))
        .await;

    let mut client =
        connect(&server.socket_url(&format!("?streamerId={streamer}&token={viewer}"))).await;
    let snapshot = client.until_subscribed().await;
    assert_eq!(
        describe_all(&snapshot),
        [
            format!("EVENT_CREATED {open_event}"),
            format!("EVENT_UPDATED {open_event}"),
            format!("EVENT_CREATED {closed_event}"),
            format!("EVENT_CLOSED {closed_event}"),
            format!("SUBSCRIBED streamer:{streamer}"),
        ]
    );
    let ServerMessage::EventClosed(closed) = &snapshot[3] else {
        unreachable!()
    };
    assert_eq!(closed.result.totals, totals(0, 2));
    watcher.close().await;
    client.close().await;
}

#[tokio::test]
async fn the_user_channel_gets_the_balance_then_every_change() {
    let server = TestServer::start().await;
    let user = Uuid::new_v4();
    let viewer = server.token(Role::Viewer, user);
    let event = create_event(&server.state, Uuid::new_v4(), None, 600).await;
    let mut client = connect(&server.socket_url(&format!("?token={viewer}"))).await;
    client.subscribe(&[format!("user:{user}")]).await;
    let snapshot = client.until_subscribed().await;
    // Opening the socket made the user known: the initial balance is there at once.
    assert_eq!(
        describe_all(&snapshot),
        [
            "BALANCE_UPDATED 10000".to_owned(),
            format!("SUBSCRIBED user:{user}")
        ]
    );
    vote(&server.state, event, &viewer, "red", 2).await;
    client.until(|message| matches!(message, ServerMessage::BalanceUpdated(balance) if balance.balance == 9_980)).await;
    client.close().await;
}

#[tokio::test]
async fn other_users_channels_are_denied_except_to_admins() {
    let server = TestServer::start().await;
    let someone = Uuid::new_v4();
    let viewer = server.token(Role::Viewer, Uuid::new_v4());
    let mut client = connect(&server.socket_url(&format!("?token={viewer}"))).await;
    client.subscribe(&[format!("user:{someone}")]).await;
    let denied = client.until_notice("SUBSCRIBE_DENIED").await;
    assert_eq!(
        notice_of(denied.last().unwrap())
            .unwrap()
            .channel
            .as_deref(),
        Some(format!("user:{someone}").as_str())
    );
    client.assert_responsive().await;

    // The balance of a user this node has not seen is read once from the store.
    server.state.store.ensure_user(someone, 500).await.unwrap();
    let admin = server.token(Role::Admin, Uuid::new_v4());
    let mut watcher = connect(&server.socket_url(&format!("?token={admin}"))).await;
    watcher.subscribe(&[format!("user:{someone}")]).await;
    let snapshot = watcher.until_subscribed().await;
    assert_eq!(
        describe_all(&snapshot),
        [
            "BALANCE_UPDATED 500".to_owned(),
            format!("SUBSCRIBED user:{someone}")
        ]
    );
    client.close().await;
    watcher.close().await;
}

#[tokio::test]
async fn a_socket_on_two_channels_of_one_event_gets_each_message_once() {
    let mut config = test_config();
    config.vote_rate = 10_000;
    let server = TestServer::start_with(config).await;
    let streamer = Uuid::new_v4();
    let game = Uuid::new_v4();
    let viewer = server.token(Role::Viewer, Uuid::new_v4());
    let mut client = connect(&server.socket_url(&format!("?token={viewer}"))).await;
    client
        .subscribe(&[format!("streamer:{streamer}"), format!("game:{game}")])
        .await;
    client.until_subscribed().await;

    let event = create_event(&server.state, streamer, Some(game), 600).await;
    for _ in 0..20 {
        vote(&server.state, event, &viewer, "red", 1).await;
    }
    close_event(&server.state, event).await;
    let messages = client
        .until(|message| matches!(message, ServerMessage::EventClosed(_)))
        .await;
    let count = |wanted: &str| {
        describe_all(&messages)
            .iter()
            .filter(|name| name.starts_with(wanted))
            .count()
    };
    assert_eq!(count("EVENT_CREATED"), 1);
    assert_eq!(count("EVENT_CLOSED"), 1);
    let seqs: Vec<u64> = messages
        .iter()
        .filter_map(|message| match message {
            ServerMessage::EventUpdated(updated) => Some(updated.seq),
            _ => None,
        })
        .collect();
    assert!(
        seqs.windows(2).all(|pair| pair[0] < pair[1]),
        "each update once, in order: {seqs:?}"
    );
    assert!(matches!(
        messages.first(),
        Some(ServerMessage::EventCreated(_))
    ));

    // Subscribing to a second channel of a known event repeats nothing of it.
    let other_event = create_event(&server.state, streamer, Some(game), 600).await;
    let mut second =
        connect(&server.socket_url(&format!("?streamerId={streamer}&token={viewer}"))).await;
    second.until_subscribed().await;
    second.subscribe(&[format!("game:{game}")]).await;
    let again = second.until_subscribed().await;
    assert_eq!(
        describe_all(&again),
        [format!("SUBSCRIBED game:{game}")],
        "other event {other_event}"
    );
    client.close().await;
    second.close().await;
}

#[tokio::test]
async fn a_reconnect_storm_is_served_from_memory() {
    let server = TestServer::start().await;
    let streamer = Uuid::new_v4();
    for _ in 0..3 {
        create_event(&server.state, streamer, None, 600).await;
    }
    let users: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
    let tokens: Vec<String> = users
        .iter()
        .map(|user| server.token(Role::Viewer, *user))
        .collect();
    // Every user has been seen once (their first socket authenticated them).
    for token in &tokens {
        let mut client = connect(&server.socket_url(&format!("?token={token}"))).await;
        client.assert_responsive().await;
        client.close().await;
    }
    let queries_before = server.state.store.query_count();
    let mut clients = Vec::new();
    for index in 0..400 {
        let token = &tokens[index % tokens.len()];
        let user = users[index % users.len()];
        let mut client =
            connect(&server.socket_url(&format!("?streamerId={streamer}&token={token}"))).await;
        client.subscribe(&[format!("user:{user}")]).await;
        clients.push(client);
    }
    for client in &mut clients {
        let first = client.until_subscribed().await;
        assert_eq!(first.len(), 3 * 2 + 1, "three events, then SUBSCRIBED");
        let second = client.until_subscribed().await;
        assert_eq!(second.len(), 2, "the balance, then SUBSCRIBED");
    }
    assert_eq!(
        server.state.store.query_count(),
        queries_before,
        "snapshots and known users cost no query"
    );
    for client in clients {
        client.close().await;
    }
}

/// Waits (bounded) until the server holds `count` sockets.
async fn until_socket_count(server: &TestServer, count: usize) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while server.state.realtime.connection_count() != count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server still holds {} sockets, not {count}",
            server.state.realtime.connection_count()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn users_with_sockets_stay_cached_through_balance_sweeps() {
    let server = TestServer::start().await;
    let (staying, leaving) = (Uuid::new_v4(), Uuid::new_v4());
    let staying_token = server.token(Role::Viewer, staying);
    let leaving_token = server.token(Role::Viewer, leaving);
    let mut open = connect(&server.socket_url(&format!("?token={staying_token}"))).await;
    open.assert_responsive().await;
    let mut gone = connect(&server.socket_url(&format!("?token={leaving_token}"))).await;
    gone.assert_responsive().await;
    gone.close().await;
    until_socket_count(&server, 1).await;
    // Long enough for an unused user to be dropped.
    for _ in 0..4 {
        server.state.realtime.sweep_balances();
    }
    assert!(server.state.realtime.is_user_known(staying));
    assert!(!server.state.realtime.is_user_known(leaving));

    let queries_before = server.state.store.query_count();
    let mut again = connect(&server.socket_url(&format!("?token={staying_token}"))).await;
    again.assert_responsive().await;
    assert_eq!(
        server.state.store.query_count(),
        queries_before,
        "a user with a socket here reconnects from memory"
    );
    let mut back = connect(&server.socket_url(&format!("?token={leaving_token}"))).await;
    back.assert_responsive().await;
    assert!(
        server.state.store.query_count() > queries_before,
        "a dropped user is looked up once more"
    );
    assert!(server.state.realtime.is_user_known(leaving));
    for client in [open, again, back] {
        client.close().await;
    }
}

/// An event body whose `promptVersions` is as large as the limits allow (about 6 KB of JSON).
fn bulky_event_body(server: &TestServer, streamer: Uuid) -> serde_json::Value {
    let mut body = event_body(&server.state, streamer, 600);
    let versions: serde_json::Map<String, serde_json::Value> = (0..32)
        .map(|index| {
            (
                format!("{index:02}{}", "k".repeat(62)),
                serde_json::Value::String("v".repeat(128)),
            )
        })
        .collect();
    body["promptVersions"] = serde_json::Value::Object(versions);
    body
}

#[tokio::test]
async fn a_snapshot_larger_than_the_slow_consumer_bound_is_delivered_whole() {
    let server = TestServer::start().await;
    let streamer = Uuid::new_v4();
    let worker = server.token(Role::Worker, Uuid::new_v4());
    // 100 open events and 100 recently closed ones, each ~6 KB: a snapshot of about 1.3 MB,
    // past the 1 MiB that closes a socket that does not keep up with live traffic.
    let mut closed = 0;
    for round in 0..2 {
        for _ in 0..100 {
            let body = bulky_event_body(&server, streamer);
            let (status, answer) =
                call(&server.state, post("/api/events", Some(&worker), &body)).await;
            assert_eq!(status.as_u16(), 201, "{answer}");
            if round == 0 {
                let id: Uuid = answer["event"]["id"].as_str().unwrap().parse().unwrap();
                close_event(&server.state, id).await;
                closed += 1;
            }
        }
    }
    assert_eq!(closed, 100);
    let viewer = server.token(Role::Viewer, Uuid::new_v4());
    let mut client =
        connect(&server.socket_url(&format!("?streamerId={streamer}&token={viewer}"))).await;
    let snapshot = client.until_subscribed().await;
    let created = snapshot
        .iter()
        .filter(|message| matches!(message, ServerMessage::EventCreated(_)))
        .count();
    let closed_messages = snapshot
        .iter()
        .filter(|message| matches!(message, ServerMessage::EventClosed(_)))
        .count();
    assert_eq!((created, closed_messages), (200, 100));
    client.assert_responsive().await;
    client.close().await;
}
