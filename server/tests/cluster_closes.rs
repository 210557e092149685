//! Exactly-once close across three real `livevote-server` processes on one Postgres database
//! and one Redis: 500 events of five streamers, created through all three nodes and coming due
//! over 10 s, each armed on every node. Every socket (one per node, subscribed to all five
//! streamers) sees each EVENT_CLOSED once, no more and none missing; the nodes'
//! `livevote_events_closed_total` add up to exactly 500 (one winner per close); the SQL audit
//! holds afterwards. Skips, saying why, without Postgres or Redis.

mod binary_support;
mod cluster_support;
mod common;
mod postgres_support;
mod redis_support;
mod socket_support;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use cluster_support::{shared_redis_or_skip, Cluster};
use futures_util::StreamExt;
use livevote_protocol::ServerMessage;
use postgres_support::TestDatabase;
use serde_json::{json, Value};
use socket_support::{connect, Received};
use sqlx::{Connection, PgConnection};
use tokio::time::Instant;
use uuid::Uuid;

const NODES: usize = 3;
const STREAMERS: usize = 5;
const EVENTS: usize = 500;
/// The first event is due this long after the creating starts (time enough to create all 500
/// on a busy machine), the last one `SPREAD` later.
const FIRST_DUE: Duration = Duration::from_secs(8);
const SPREAD: Duration = Duration::from_secs(10);
/// Creations in flight at once.
const CREATING_AT_ONCE: usize = 24;
/// After the last event is due: how long every close may take to reach every socket.
const CLOSES_ARRIVE: Duration = Duration::from_secs(15);
/// After a socket has seen all 500 closes: how long it keeps reading for a repeat.
const REPEATS_WINDOW: Duration = Duration::from_millis(2000);
/// Generous: a close later than this after its `closesAt` is a missed timer, not a slow
/// machine.
const LATEST_CLOSE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_events_on_three_nodes_close_exactly_once_on_every_socket() {
    let Some(redis_url) = shared_redis_or_skip().await else {
        return;
    };
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let whole = tokio::time::timeout(Duration::from_secs(90), run(&database, &redis_url)).await;
    assert!(whole.is_ok(), "the test took longer than 90 s");
    database.audit().await;
}

async fn run(database: &TestDatabase, redis_url: &str) {
    let cluster = Cluster::start(
        NODES,
        database,
        redis_url,
        &["--max-open-events", "1000", "--recent-closed", "10m"],
    )
    .await;
    let streamers: Vec<Uuid> = (0..STREAMERS).map(|_| Uuid::new_v4()).collect();
    let channels: Vec<String> = streamers
        .iter()
        .map(|streamer| format!("streamer:{streamer}"))
        .collect();

    // One socket per node, subscribed to every streamer before anything is created.
    let mut readers = Vec::new();
    for index in 0..NODES {
        let token = cluster.token(index, Uuid::new_v4(), "viewer", None).await;
        let mut socket =
            connect(&cluster.nodes[index].socket_url(&format!("?token={token}"))).await;
        socket.subscribe(&channels).await;
        socket.until_subscribed().await;
        readers.push(socket);
    }

    let worker = cluster.token(0, Uuid::new_v4(), "worker", None).await;
    let started = Utc::now();
    let plans: Vec<(usize, Uuid, chrono::DateTime<Utc>)> = (0..EVENTS)
        .map(|index| {
            let offset = FIRST_DUE + SPREAD * index as u32 / EVENTS as u32;
            let closes_at = started + chrono::Duration::from_std(offset).unwrap();
            (index % NODES, streamers[index % STREAMERS], closes_at)
        })
        .collect();
    let last_due = plans.last().unwrap().2;
    let created: Vec<Uuid> = futures_util::stream::iter(plans.iter().enumerate())
        .map(|(index, (node, streamer, closes_at))| {
            let http = cluster.http.clone();
            let url = cluster.nodes[*node].url("/api/events");
            let worker = worker.clone();
            let body = json!({
                "streamerId": streamer,
                "gameId": null,
                "title": format!("Round {index}"),
                "options": [{"id": "red", "label": "Red"}, {"id": "blue", "label": "Blue"}],
                "closesAt": closes_at.to_rfc3339_opts(SecondsFormat::Millis, true),
                "costPerVote": 1,
            });
            async move {
                let response = http
                    .post(url)
                    .bearer_auth(&worker)
                    .json(&body)
                    .send()
                    .await
                    .expect("the node answers");
                let status = response.status().as_u16();
                let answer: Value = response.json().await.unwrap_or(Value::Null);
                assert_eq!(status, 201, "creating event {index}: {answer}");
                answer["event"]["id"]
                    .as_str()
                    .unwrap()
                    .parse::<Uuid>()
                    .unwrap()
            }
        })
        .buffered(CREATING_AT_ONCE)
        .collect()
        .await;
    println!(
        "created {EVENTS} events on {NODES} nodes in {:?}",
        (Utc::now() - started).to_std().unwrap_or_default()
    );

    // Every socket reads until it has seen all 500 closes (or the bound), then a while longer
    // for repeats.
    let deadline =
        Instant::now() + (last_due - Utc::now()).to_std().unwrap_or_default() + CLOSES_ARRIVE;
    let reading: Vec<_> = readers
        .into_iter()
        .map(|mut socket| {
            tokio::spawn(async move {
                let mut closes: HashMap<Uuid, usize> = HashMap::new();
                let mut until = deadline;
                while let Ok(received) = tokio::time::timeout_at(until, socket.next()).await {
                    match received {
                        Received::Message(ServerMessage::EventClosed(closed)) => {
                            *closes.entry(closed.event_id).or_default() += 1;
                            if closes.len() == EVENTS {
                                until = until.min(Instant::now() + REPEATS_WINDOW);
                            }
                        }
                        Received::Message(ServerMessage::Ping(_)) => socket.pong().await,
                        Received::Message(_) => {}
                        Received::Closed(code) => panic!("a socket closed: {code:?}"),
                    }
                }
                closes
            })
        })
        .collect();
    for (index, reader) in reading.into_iter().enumerate() {
        let closes = reader.await.expect("the reader");
        let missing = created
            .iter()
            .filter(|event| !closes.contains_key(event))
            .count();
        let repeated = closes.values().filter(|count| **count > 1).count();
        let unknown = closes.len() + missing - EVENTS;
        assert_eq!(
            (missing, repeated, unknown),
            (0, 0, 0),
            "node {index}'s socket: EVENT_CLOSED missing for {missing} events, repeated for \
             {repeated}, for {unknown} events never created"
        );
    }

    let mut closed_total = 0.0;
    for index in 0..NODES {
        let closed = cluster.metric(index, "livevote_events_closed_total").await;
        let p99 = cluster
            .metric_sample(index, "livevote_close_delay_ms", "quantile=\"0.99\"")
            .await;
        println!("node {index}: closed {closed}, close delay p99 {p99:?} ms");
        closed_total += closed;
    }
    assert_eq!(
        closed_total, EVENTS as f64,
        "each close counted once, by the node that won it"
    );

    let mut connection = PgConnection::connect(&database.url).await.unwrap();
    let (closed, latest_ms): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), max((closed_at - closes_at) / 1e6)::float8 FROM events
         WHERE status = 'closed'",
    )
    .fetch_one(&mut connection)
    .await
    .unwrap();
    connection.close().await.unwrap();
    println!("latest close after its closesAt: {latest_ms:?} ms");
    assert_eq!(closed, EVENTS as i64, "every event is closed in the store");
    assert!(
        latest_ms.unwrap_or(0.0) < LATEST_CLOSE.as_millis() as f64,
        "an event closed {latest_ms:?} ms after its closesAt"
    );
}
