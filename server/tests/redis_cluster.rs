//! Two real nodes sharing one Postgres database and one Redis prefix: what one node commits
//! (an event, its totals, its close, a balance) reaches a socket on the other, each event
//! closes once, and a node whose Redis went away heals from the store without a restart. After
//! each test an SQL audit checks the ledger. An event nobody armed is closed by the periodic
//! sweep. Skips, saying why, when Postgres
//! (`LIVEVOTE_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`) or
//! Redis (`LIVEVOTE_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`) does not answer; the
//! fault test also needs `redis-server` on the PATH for a private instance it can kill.

mod common;
mod postgres_support;
mod redis_support;
mod socket_support;

use std::time::Duration;

use common::*;
use livevote_protocol::{Event, EventOption, Role, ServerMessage, Timestamp};
use postgres_support::TestDatabase;
use redis_support::*;
use serde_json::json;
use socket_support::{connect, Client};
use sqlx::{Connection, PgConnection};
use tokio::time::Instant;
use uuid::Uuid;

/// An open event written straight to the store, as a node that died before publishing it
/// leaves behind.
async fn stored_event(server: &TestServer, streamer: Uuid, seconds: i64) -> Uuid {
    let closes_at = server.state.clock.now() + chrono::Duration::seconds(seconds);
    let event = Event {
        id: Uuid::new_v4(),
        streamer_id: streamer,
        game_id: None,
        title: "Never announced".into(),
        options: ["red", "blue"]
            .map(|id| EventOption {
                id: id.into(),
                label: id.into(),
            })
            .into(),
        closes_at: Timestamp(closes_at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()),
        cost_per_vote: 10,
        prompt_versions: None,
    };
    server
        .state
        .store
        .create_event(&event, closes_at)
        .await
        .expect("the store takes the event");
    event.id
}

/// Votes `votes` for red; returns the answer's balance.
async fn vote_on(server: &TestServer, voter: Uuid, event: Uuid, votes: u32) -> i64 {
    let token = server.token(Role::Viewer, voter);
    let (status, answer) = send(
        reqwest::Client::new()
            .post(server.http(&format!("/api/events/{event}/votes")))
            .bearer_auth(&token)
            .header("idempotency-key", Uuid::new_v4().to_string())
            .json(&json!({"optionId": "red", "votes": votes})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    answer["balance"].as_i64().unwrap()
}

/// A socket on `server` of `viewer`, subscribed to the streamer's channel and its own.
async fn watcher(server: &TestServer, streamer: Uuid, viewer: Uuid) -> Client {
    let token = server.token(Role::Viewer, viewer);
    let mut socket =
        connect(&server.socket_url(&format!("?streamerId={streamer}&token={token}"))).await;
    socket.until_subscribed().await;
    socket.subscribe(&[format!("user:{viewer}")]).await;
    socket.until_subscribed().await;
    socket.patience = Duration::from_secs(10);
    socket
}

fn red_total(message: &ServerMessage, event: Uuid) -> Option<u64> {
    match message {
        ServerMessage::EventUpdated(updated) if updated.event_id == event => {
            updated.totals.get("red").copied()
        }
        _ => None,
    }
}

/// Reads for `window` and returns what came (the socket stays open).
async fn read_for(socket: &mut Client, window: Duration) -> Vec<ServerMessage> {
    let deadline = Instant::now() + window;
    let mut seen = Vec::new();
    while let Ok(received) = tokio::time::timeout_at(deadline, socket.next()).await {
        match received {
            socket_support::Received::Message(message) => seen.push(message),
            socket_support::Received::Closed(code) => panic!("the socket closed: {code:?}"),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_node_a_commits_reaches_a_socket_on_node_b_and_each_event_closes_once() {
    let Some(redis_url) = shared_redis_or_skip().await else {
        return;
    };
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let (node_a, node_b) = two_ready_nodes(&database.url, &redis_url).await;

    let streamer = Uuid::new_v4();
    let viewer = Uuid::new_v4();
    let mut on_b = watcher(&node_b, streamer, viewer).await;
    let mut on_a = watcher(&node_a, streamer, Uuid::new_v4()).await;

    let event = create_event_on(&node_a, streamer, 3).await;
    on_b.until(|message| {
        matches!(message, ServerMessage::EventCreated(created) if created.event.id == event)
    })
    .await;

    let balance = vote_on(&node_a, viewer, event, 3).await;
    assert_eq!(balance, 10_000 - 30);
    let (mut saw_totals, mut saw_balance) = (false, false);
    on_b.until(|message| {
        saw_totals |= red_total(message, event) == Some(3);
        saw_balance |= matches!(message, ServerMessage::BalanceUpdated(updated)
            if updated.balance == balance && updated.user_id == Some(viewer));
        saw_totals && saw_balance
    })
    .await;

    // An admin's credit and notice, both through A.
    let admin = node_a.token(Role::Admin, Uuid::new_v4());
    let (status, credited) = send(
        reqwest::Client::new()
            .post(node_a.http("/api/ledger/credit"))
            .bearer_auth(&admin)
            .json(&json!({"userId": viewer, "amount": 500, "reason": "cross-node test"})),
    )
    .await;
    assert_eq!(status, 200, "{credited}");
    on_b.until(|message| {
        matches!(message, ServerMessage::BalanceUpdated(updated) if updated.balance == balance + 500)
    })
    .await;
    let (status, _) = send(
        reqwest::Client::new()
            .post(node_a.http("/api/notices"))
            .bearer_auth(&admin)
            .json(&json!({"channel": format!("streamer:{streamer}"), "code": "MAINTENANCE", "message": "back in 5"})),
    )
    .await;
    assert_eq!(status, 202);
    on_b.until(|message| {
        matches!(message, ServerMessage::SystemNotice(notice) if notice.code == "MAINTENANCE")
    })
    .await;

    // Both nodes armed the event; the store's conditional close lets one of them win, and
    // every socket sees EVENT_CLOSED once, with the votes in it.
    for (name, socket) in [("B", &mut on_b), ("A", &mut on_a)] {
        let seen = socket
            .until(|message| matches!(message, ServerMessage::EventClosed(closed) if closed.event_id == event))
            .await;
        let Some(ServerMessage::EventClosed(closed)) = seen.last() else {
            unreachable!()
        };
        assert_eq!(closed.result.totals.get("red"), Some(&3), "node {name}");
        let later = read_for(socket, Duration::from_millis(1500)).await;
        let again = later
            .iter()
            .filter(|message| matches!(message, ServerMessage::EventClosed(closed) if closed.event_id == event))
            .count();
        assert_eq!(again, 0, "node {name}'s socket saw EVENT_CLOSED twice");
    }
    let mut connection = PgConnection::connect(&database.url).await.unwrap();
    let status: String = sqlx::query_scalar("SELECT status FROM events WHERE id = $1")
        .bind(event)
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(status, "closed");
    connection.close().await.unwrap();

    // Created on A, then voted on through B at once: B may apply its own vote's totals
    // before A's EVENT_CREATED arrives, and must not drop them.
    let raced = create_event_on(&node_a, streamer, 3).await;
    let balance = vote_on(&node_b, viewer, raced, 2).await;
    assert_eq!(balance, 10_000 + 500 - 50);
    let quickly = Instant::now();
    for socket in [&mut on_b, &mut on_a] {
        socket
            .until(|message| red_total(message, raced) == Some(2))
            .await;
    }
    assert!(
        quickly.elapsed() < Duration::from_secs(3),
        "the raced totals came only after {:?} (an anti-entropy pass, not the broker)",
        quickly.elapsed()
    );

    // Committed by a node that died before publishing it (written here straight to the
    // store): no node has heard of the event when a vote on B changes its totals. B loads it
    // from the store rather than dropping the change, and its socket sees both at once.
    let unheard = stored_event(&node_a, streamer, 3).await;
    vote_on(&node_b, viewer, unheard, 4).await;
    let quickly = Instant::now();
    let seen = on_b
        .until(|message| red_total(message, unheard) == Some(4))
        .await;
    assert!(
        quickly.elapsed() < Duration::from_secs(3),
        "the unheard-of event came only after {:?} (an anti-entropy pass, not the vote)",
        quickly.elapsed()
    );
    assert!(seen.iter().any(
        |message| matches!(message, ServerMessage::EventCreated(created) if created.event.id == unheard)
    ));

    // A stops before the events are due: B armed it too when A's EVENT_CREATED arrived, so it
    // closes on time without A.
    node_a.stop().await;
    let seen = on_b
        .until(|message| matches!(message, ServerMessage::EventClosed(closed) if closed.event_id == raced))
        .await;
    let Some(ServerMessage::EventClosed(closed)) = seen.last() else {
        unreachable!()
    };
    assert_eq!(closed.result.totals.get("red"), Some(&2));
    on_b.until(|message| matches!(message, ServerMessage::EventClosed(closed) if closed.event_id == unheard))
        .await;

    node_b.stop().await;
    database.audit().await;
}

/// A balance change that no node published (committed straight to the store, as by a node
/// that died between COMMIT and PUBLISH) reaches the user's socket on another node through the
/// periodic resync, which reads balances back with their ledger versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balance_change_nobody_published_reaches_the_socket_by_the_periodic_resync() {
    let Some(redis_url) = shared_redis_or_skip().await else {
        return;
    };
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let (node_a, node_b) = two_ready_nodes(&database.url, &redis_url).await;

    let viewer = Uuid::new_v4();
    let mut on_b = watcher(&node_b, Uuid::new_v4(), viewer).await;
    let receipt = node_a
        .state
        .store
        .credit(livevote_storage::CreditCommand {
            admin_id: Uuid::new_v4(),
            user_id: viewer,
            amount: 77,
            reason: "committed, never published".into(),
            idempotency: None,
            initial_balance: 0,
        })
        .await
        .expect("the store takes the credit");
    // Bounded well past one anti-entropy period (5 s), whatever else the socket receives.
    let arrived = tokio::time::timeout(
        Duration::from_secs(15),
        on_b.until(|message| {
            matches!(message, ServerMessage::BalanceUpdated(update)
                if update.balance == receipt.balance)
        }),
    )
    .await;
    assert!(arrived.is_ok(), "the credit never reached B's socket");
    node_a.stop().await;
    node_b.stop().await;
    database.audit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_redis_restarted_or_whose_subscription_was_killed_heals_from_the_store() {
    let Some(mut redis) = PrivateRedis::start_or_skip().await else {
        return;
    };
    let port = redis.port;
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let (node_a, node_b) = two_ready_nodes(&database.url, &redis.url()).await;

    let streamer = Uuid::new_v4();
    let viewer = Uuid::new_v4();
    let mut on_b = watcher(&node_b, streamer, viewer).await;
    let event = create_event_on(&node_a, streamer, 600).await;
    vote_on(&node_a, viewer, event, 1).await;
    on_b.until(|message| red_total(message, event) == Some(1))
        .await;

    // Redis dies: B says it cannot trust its view, while A goes on taking votes that Redis
    // cannot carry.
    redis.kill();
    wait_for_readiness(&node_b, 503, Duration::from_secs(5)).await;
    // A notice is in no store, so no reload could carry it: while Redis cannot take it the
    // admin is told 503 with Retry-After, rather than A's sockets alone seeing it.
    let notice = reqwest::Client::new()
        .post(node_a.http("/api/notices"))
        .bearer_auth(node_a.token(Role::Admin, Uuid::new_v4()))
        .json(&json!({"channel": "*", "code": "MAINTENANCE", "message": "not while Redis is away"}))
        .send()
        .await
        .expect("the server answers");
    assert_eq!(notice.status(), 503);
    assert_eq!(
        notice
            .headers()
            .get("retry-after")
            .map(|value| value.as_bytes()),
        Some(&b"1"[..])
    );
    let mut balance_after_outage = 0;
    for _ in 0..4 {
        balance_after_outage = vote_on(&node_a, viewer, event, 1).await;
    }
    // Longer than the broker's command timeout: A's publications of those votes are given up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarted = Instant::now();
    let _redis = PrivateRedis::start(port)
        .await
        .expect("redis-server restarts");
    // Within 5 s of Redis coming back B is ready again and its socket shows the votes that
    // were never carried: reloaded from the store.
    wait_for_readiness(&node_b, 200, Duration::from_secs(5)).await;
    let seen = on_b
        .until(|message| red_total(message, event) == Some(5))
        .await;
    assert!(
        restarted.elapsed() < Duration::from_secs(6),
        "healed only after {:?}",
        restarted.elapsed()
    );
    // The viewer's balance too: its BALANCE_UPDATED was lost with the votes, and the resync
    // reads it back from the ledger with its version.
    let balance_is = |message: &ServerMessage| {
        matches!(message, ServerMessage::BalanceUpdated(update)
            if update.balance == balance_after_outage)
    };
    if !seen.iter().any(balance_is) {
        on_b.until(balance_is).await;
    }
    let mut last = 1;
    for total in seen.iter().filter_map(|message| red_total(message, event)) {
        assert!(total >= last, "totals went backwards: {last} then {total}");
        last = total;
    }

    wait_for_readiness(&node_a, 200, Duration::from_secs(5)).await;

    // A subscription killed under the node (the connection manager reconnects and
    // resubscribes); a vote meanwhile still reaches B, by the broker or by the reload.
    let mut admin = redis::Client::open(_redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(
        killed >= 2,
        "both nodes' subscriptions were killed ({killed})"
    );
    vote_on(&node_a, viewer, event, 2).await;
    let killed_at = Instant::now();
    on_b.until(|message| red_total(message, event) == Some(7))
        .await;
    assert!(killed_at.elapsed() < Duration::from_secs(5));
    wait_for_readiness(&node_b, 200, Duration::from_secs(5)).await;

    node_a.stop().await;
    node_b.stop().await;
    database.audit().await;
}

/// The sweep closes what nobody armed: an event committed by a node that died before its
/// EVENT_CREATED (written here straight to the store), and one every node heard of but armed
/// no timer for (its EVENT_CREATED carried a `closesAt` no node could read), both close soon
/// after they are due, by the periodic reload arming every open event it finds, and
/// EVENT_CLOSED reaches a socket on the other node once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_sweep_closes_events_nobody_armed() {
    let Some(redis_url) = shared_redis_or_skip().await else {
        return;
    };
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let (node_a, node_b) = two_ready_nodes(&database.url, &redis_url).await;
    let streamer = Uuid::new_v4();
    let mut on_b = watcher(&node_b, streamer, Uuid::new_v4()).await;

    let never_announced = stored_event(&node_a, streamer, 1).await;
    let unarmed = stored_event(&node_a, streamer, 1).await;
    let mut heard = node_a
        .state
        .store
        .get_event(unarmed)
        .await
        .unwrap()
        .expect("stored")
        .event;
    heard.closes_at = Timestamp("not a time".into());
    node_a
        .state
        .broker
        .publish(livevote_server::broker::BrokerMessage::EventCreated { event: heard })
        .await
        .expect("published");
    on_b.until(|message| {
        matches!(message, ServerMessage::EventCreated(created) if created.event.id == unarmed)
    })
    .await;

    // Due in 1 s; one anti-entropy period (5 s) later every node has armed both.
    let started = Instant::now();
    let mut closed: Vec<Uuid> = Vec::new();
    let waited = tokio::time::timeout(Duration::from_secs(12), async {
        while closed.len() < 2 {
            if let ServerMessage::EventClosed(event) = on_b.message().await {
                closed.push(event.event_id);
            }
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "after {:?} B's socket had seen EVENT_CLOSED only for {closed:?} (unannounced {never_announced}, unarmed {unarmed})",
        started.elapsed()
    );
    closed.sort();
    let mut expected = vec![never_announced, unarmed];
    expected.sort();
    assert_eq!(closed, expected, "each event closed once");
    let again = read_for(&mut on_b, Duration::from_millis(1500))
        .await
        .into_iter()
        .filter(|message| matches!(message, ServerMessage::EventClosed(_)))
        .count();
    assert_eq!(again, 0, "an EVENT_CLOSED came twice");
    println!(
        "both unarmed events closed within {:?} of their creation",
        started.elapsed()
    );

    let mut connection = PgConnection::connect(&database.url).await.unwrap();
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE status = 'open'")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(open, 0);
    connection.close().await.unwrap();
    node_a.stop().await;
    node_b.stop().await;
    database.audit().await;
}
