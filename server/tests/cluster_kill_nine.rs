//! Kill -9 of one node of three, mid-storm: 20 viewers vote on a few events through three real
//! `livevote-server` processes (one Postgres database, one Redis), each vote with an
//! Idempotency-Key that a client retries on the next node when its request fails or goes
//! unanswered. One node is SIGKILLed during the storm and restarted later. Then: the SQL audit
//! holds; every answered vote is in the ledger exactly once (and nothing else is); the events
//! that came due while the node was dead (it created them) closed on time on the others; and a
//! socket that reconnected to a surviving node, as well as a fresh snapshot there and on the
//! restarted node, shows the store's totals. Bounded in votes and in time; skips, saying why,
//! without Postgres or Redis.

mod binary_support;
mod cluster_support;
mod common;
mod postgres_support;
mod redis_support;
mod socket_support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, DurationRound, SecondsFormat, Utc};
use cluster_support::{shared_redis_or_skip, Cluster};
use livevote_protocol::{ServerMessage, Totals};
use parking_lot::Mutex;
use postgres_support::TestDatabase;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use socket_support::{connect, Client, Received};
use sqlx::{Connection, PgConnection, Row};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const NODES: usize = 3;
/// The node killed mid-storm; it creates the events that come due while it is dead.
const VICTIM: usize = 2;
const VOTERS: usize = 20;
/// Bounds on the storm: votes per viewer, and the pause between one viewer's votes.
const VOTES_PER_VOTER: usize = 40;
const VOTE_PAUSE_MS: std::ops::RangeInclusive<u64> = 80..=250;
const INITIAL_BALANCE: i64 = 5000;
const OPTIONS: [&str; 3] = ["red", "green", "blue"];
/// The storm's two long-lived events (open past the test) and their costs per vote.
const STORM_COSTS: [i64; 2] = [1, 2];
/// When the due events close, the kill lands, the victim restarts and the storm stops, after
/// the storm's start.
const DUE_AFTER: [Duration; 5] = [
    Duration::from_millis(1000),
    Duration::from_millis(3000),
    Duration::from_millis(3800),
    Duration::from_millis(4600),
    Duration::from_millis(8000),
];
const DUE_COST: i64 = 3;
const KILL_AFTER: Duration = Duration::from_millis(2000);
const RESTART_AFTER: Duration = Duration::from_millis(6000);
const STORM: Duration = Duration::from_millis(9000);
/// A client's bounds on one key: attempts (each on the next node) and the time for all.
const ATTEMPTS: u32 = 60;
const ANSWER_DEADLINE: Duration = Duration::from_secs(20);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// A due event closed later than this after its `closesAt` was not closed on time.
const ON_TIME: chrono::Duration = chrono::Duration::seconds(2);
/// How long a socket's view may take to match the store once the storm is over (one
/// anti-entropy period and some).
const CONVERGES: Duration = Duration::from_secs(7);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_votes_survive_a_node_killed_mid_storm_and_due_events_close_elsewhere() {
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

/// How one key ended.
#[derive(Debug, Clone)]
enum Answer {
    Accepted { balance: i64 },
    Refused { status: u16, code: String },
    Unanswered { last_error: String },
}

#[derive(Debug, Clone)]
struct VoteRecord {
    key: String,
    user: Uuid,
    event_id: Uuid,
    option_id: String,
    votes: i64,
    /// How many nodes were tried (1 when the first answered).
    attempts: u32,
    answer: Answer,
}

/// What the viewers share: the nodes' addresses (a restarted node keeps its own), the events
/// to vote on with their `closesAt`, and when to stop.
struct Storm {
    addresses: Vec<String>,
    targets: Vec<(Uuid, DateTime<Utc>)>,
    stop: AtomicBool,
}

async fn run(database: &TestDatabase, redis_url: &str) {
    let balance = INITIAL_BALANCE.to_string();
    let mut cluster = Cluster::start(
        NODES,
        database,
        redis_url,
        &[
            "--initial-balance",
            &balance,
            "--vote-rate",
            "1000000",
            "--recent-closed",
            "10m",
        ],
    )
    .await;
    let seed: u64 = rand::random();
    println!("cluster kill -9 seed {seed}");
    let streamer = Uuid::new_v4();
    let worker = cluster.token(0, Uuid::new_v4(), "worker", None).await;

    // Whole milliseconds, as the server keeps `closesAt`.
    let storm_start = (Utc::now() + chrono::Duration::milliseconds(2500))
        .duration_trunc(chrono::Duration::milliseconds(1))
        .unwrap();
    let mut targets = Vec::new();
    for (index, cost) in STORM_COSTS.iter().enumerate() {
        let closes_at = Utc::now() + chrono::Duration::seconds(300);
        let id = create_event(
            &cluster,
            index % VICTIM,
            &worker,
            streamer,
            closes_at,
            *cost,
        )
        .await;
        targets.push((id, closes_at));
    }
    let mut due_events = Vec::new();
    for after in DUE_AFTER {
        let closes_at = storm_start + chrono::Duration::from_std(after).unwrap();
        let id = create_event(&cluster, VICTIM, &worker, streamer, closes_at, DUE_COST).await;
        due_events.push((id, closes_at));
        targets.push((id, closes_at));
    }
    let mut voters = Vec::new();
    for index in 0..VOTERS {
        let user = Uuid::new_v4();
        voters.push((
            user,
            cluster.token(index % NODES, user, "viewer", None).await,
        ));
    }
    // A viewer on the node about to die, and what its socket sees.
    let victim_viewer = cluster.token(VICTIM, Uuid::new_v4(), "viewer", None).await;
    let mut on_victim = connect(
        &cluster.nodes[VICTIM].socket_url(&format!("?streamerId={streamer}&token={victim_viewer}")),
    )
    .await;
    on_victim.until_subscribed().await;

    let storm = Arc::new(Storm {
        addresses: cluster
            .nodes
            .iter()
            .map(|node| node.address.clone())
            .collect(),
        targets,
        stop: AtomicBool::new(false),
    });
    sleep_until(storm_start).await;
    let started = Instant::now();
    let tasks: Vec<_> = voters
        .iter()
        .enumerate()
        .map(|(index, (user, token))| {
            tokio::spawn(run_voter(
                index,
                *user,
                token.clone(),
                storm.clone(),
                seed.wrapping_add(index as u64),
            ))
        })
        .collect();

    sleep_until(storm_start + chrono::Duration::from_std(KILL_AFTER).unwrap()).await;
    let killed_at = cluster.kill_nine(VICTIM);
    // Its socket ends with it; the viewer reconnects at once to a surviving node.
    let closed = tokio::time::timeout(Duration::from_secs(5), on_victim.until_closed()).await;
    assert!(closed.is_ok(), "the dead node's socket did not end");
    let reconnected = Watcher::start(&cluster, 0, streamer).await;

    sleep_until(storm_start + chrono::Duration::from_std(RESTART_AFTER).unwrap()).await;
    let restarted_at = Utc::now();
    cluster.restart(VICTIM).await;
    let ready_at = Utc::now();

    sleep_until(storm_start + chrono::Duration::from_std(STORM).unwrap()).await;
    storm.stop.store(true, Ordering::SeqCst);
    let mut votes = Vec::new();
    for task in tasks {
        votes.extend(task.await.expect("a voter"));
    }
    println!(
        "storm of {} votes over {:?}; node {VICTIM} dead from {killed_at} to {restarted_at} (ready {ready_at})",
        votes.len(),
        started.elapsed()
    );

    check_answers(&votes);
    check_ledger(database, &votes).await;
    check_due_events(database, &due_events, killed_at, restarted_at).await;

    // What the store holds now that nothing moves, and what the sockets show.
    let stored = stored_totals(database, streamer).await;
    let view = reconnected.view_when_equal(&stored, CONVERGES).await;
    assert_eq!(
        view, stored,
        "the socket that reconnected to node 0 shows other totals than the store"
    );
    reconnected.stop();
    for index in [0, VICTIM] {
        let snapshot = snapshot_when_equal(&cluster, index, streamer, &stored).await;
        assert_eq!(
            snapshot, stored,
            "a fresh snapshot on node {index} differs from the store"
        );
    }
}

async fn sleep_until(at: DateTime<Utc>) {
    if let Ok(wait) = (at - Utc::now()).to_std() {
        tokio::time::sleep(wait).await;
    }
}

async fn create_event(
    cluster: &Cluster,
    node: usize,
    worker: &str,
    streamer: Uuid,
    closes_at: DateTime<Utc>,
    cost: i64,
) -> Uuid {
    let options: Vec<Value> = OPTIONS
        .iter()
        .map(|option| json!({"id": option, "label": option.to_uppercase()}))
        .collect();
    let response = cluster
        .http
        .post(cluster.nodes[node].url("/api/events"))
        .bearer_auth(worker)
        .json(&json!({
            "streamerId": streamer,
            "gameId": null,
            "title": "Kill -9 storm",
            "options": options,
            "closesAt": closes_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            "costPerVote": cost,
        }))
        .send()
        .await
        .expect("create an event");
    let status = response.status().as_u16();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 201, "{answer}");
    answer["event"]["id"].as_str().unwrap().parse().unwrap()
}

/// One viewer: votes one at a time, each with a fresh key, starting on its own node and
/// moving to the next one on a failed or unanswered request, with the same key and body.
async fn run_voter(
    index: usize,
    user: Uuid,
    token: String,
    storm: Arc<Storm>,
    seed: u64,
) -> Vec<VoteRecord> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("an HTTP client");
    let mut records = Vec::new();
    for number in 0..VOTES_PER_VOTER {
        if storm.stop.load(Ordering::SeqCst) {
            break;
        }
        // Mostly events still open; now and then one just due, which may be refused.
        let soon = Utc::now() + chrono::Duration::milliseconds(300);
        let open: Vec<Uuid> = storm
            .targets
            .iter()
            .filter(|(_, closes_at)| *closes_at > soon || rng.gen_bool(0.05))
            .map(|(id, _)| *id)
            .collect();
        let event_id = open[rng.gen_range(0..open.len())];
        let option_id = OPTIONS[rng.gen_range(0..OPTIONS.len())].to_owned();
        let votes = rng.gen_range(1..=3_i64);
        let key = format!("storm-{index}-{number}");
        let body = json!({"optionId": option_id, "votes": votes});
        let path = format!("/api/events/{event_id}/votes");
        let (answer, attempts) = send_until_answered(
            &http,
            &storm.addresses,
            index % NODES,
            &path,
            &token,
            &key,
            &body,
        )
        .await;
        records.push(VoteRecord {
            key,
            user,
            event_id,
            option_id,
            votes,
            attempts,
            answer,
        });
        tokio::time::sleep(Duration::from_millis(rng.gen_range(VOTE_PAUSE_MS))).await;
    }
    records
}

/// Sends until a node gives a final answer (not a 5xx, not a 429, the body read whole),
/// trying the next node after every failure.
async fn send_until_answered(
    http: &reqwest::Client,
    addresses: &[String],
    first: usize,
    path: &str,
    token: &str,
    key: &str,
    body: &Value,
) -> (Answer, u32) {
    let deadline = Instant::now() + ANSWER_DEADLINE;
    let mut last_error = String::from("never sent");
    for attempt in 0..ATTEMPTS {
        let node = (first + attempt as usize) % addresses.len();
        let sent = http
            .post(format!("http://{}{path}", addresses[node]))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Ok(bytes) if status < 500 && status != 429 => {
                        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        let answer = match (status, answer["balance"].as_i64()) {
                            (200, Some(balance)) => Answer::Accepted { balance },
                            _ => Answer::Refused {
                                status,
                                code: answer["error"]["code"].as_str().unwrap_or("?").to_owned(),
                            },
                        };
                        return (answer, attempt + 1);
                    }
                    Ok(bytes) => {
                        last_error = format!("{status} {}", String::from_utf8_lossy(&bytes))
                    }
                    Err(error) => last_error = format!("{status}, body lost: {error}"),
                }
            }
            Err(error) => last_error = error.to_string(),
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (Answer::Unanswered { last_error }, ATTEMPTS)
}

/// Every key got a final answer the storm can earn, and the kill made some clients move on to
/// another node (else the test did not test what it says).
fn check_answers(votes: &[VoteRecord]) {
    let mut unexpected = Vec::new();
    for record in votes {
        match &record.answer {
            Answer::Accepted { .. } => {}
            Answer::Refused { status: 409, code } if code == "EVENT_CLOSED" => {}
            Answer::Refused { status, code } => {
                unexpected.push(format!("{}: {status} {code}", record.key))
            }
            Answer::Unanswered { last_error } => unexpected.push(format!(
                "{}: unanswered after {} attempts, last {last_error}",
                record.key, record.attempts
            )),
        }
    }
    assert!(
        unexpected.is_empty(),
        "{} votes without an expected answer: {:?}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(10)]
    );
    let accepted = votes
        .iter()
        .filter(|record| matches!(record.answer, Answer::Accepted { .. }))
        .count();
    let moved = votes.iter().filter(|record| record.attempts > 1).count();
    println!(
        "{accepted} accepted, {} refused as closed, {moved} answered only by another node",
        votes.len() - accepted
    );
    assert!(moved > 0, "no vote had to move to another node");
    assert!(accepted > votes.len() / 2, "most votes are accepted");
}

/// Each accepted vote is one debit in the ledger (its user, event, option, votes, and the
/// balance its answer gave, which is unique per user since every vote costs something) and
/// its key is recorded; no other debit exists.
async fn check_ledger(database: &TestDatabase, votes: &[VoteRecord]) {
    let mut connection = PgConnection::connect(&database.url).await.unwrap();
    type Debit = (Uuid, Uuid, String, i64, i64);
    let mut debits: HashMap<Debit, usize> = HashMap::new();
    for row in sqlx::query(
        "SELECT user_id, event_id, option_id, votes, balance FROM ledger WHERE kind = 'vote_debit'",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap()
    {
        let debit = (
            row.get("user_id"),
            row.get("event_id"),
            row.get("option_id"),
            row.get("votes"),
            row.get("balance"),
        );
        *debits.entry(debit).or_default() += 1;
    }
    let keys: std::collections::HashSet<(Uuid, String)> =
        sqlx::query("SELECT scope, key FROM idempotency_keys WHERE kind = 'vote'")
            .fetch_all(&mut connection)
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get("scope"), row.get("key")))
            .collect();
    connection.close().await.unwrap();

    let mut problems = Vec::new();
    for record in votes {
        let Answer::Accepted { balance } = record.answer else {
            continue;
        };
        let debit = (
            record.user,
            record.event_id,
            record.option_id.clone(),
            record.votes,
            balance,
        );
        match debits.remove(&debit) {
            Some(1) => {}
            Some(count) => problems.push(format!("{} is in the ledger {count} times", record.key)),
            None => problems.push(format!(
                "{} ({} attempts) is not in the ledger",
                record.key, record.attempts
            )),
        }
        if !keys.contains(&(record.user, record.key.clone())) {
            problems.push(format!("{}'s key is not recorded", record.key));
        }
    }
    for (debit, count) in &debits {
        problems.push(format!(
            "{count} debit(s) {debit:?} answer no accepted vote"
        ));
    }
    assert!(
        problems.is_empty(),
        "the ledger and the answers differ: {:?}",
        &problems[..problems.len().min(10)]
    );
}

/// Every due event closed on time, the ones due while the victim was dead included (at
/// least two of them, or the kill missed its moment).
async fn check_due_events(
    database: &TestDatabase,
    due_events: &[(Uuid, DateTime<Utc>)],
    killed_at: DateTime<Utc>,
    restarted_at: DateTime<Utc>,
) {
    let mut connection = PgConnection::connect(&database.url).await.unwrap();
    let mut while_dead = 0;
    for (event_id, closes_at) in due_events {
        let row = sqlx::query("SELECT status, closes_at, closed_at FROM events WHERE id = $1")
            .bind(event_id)
            .fetch_one(&mut connection)
            .await
            .unwrap();
        let status: String = row.get("status");
        let stored_closes_at = DateTime::from_timestamp_nanos(row.get("closes_at"));
        let closed_at = row
            .get::<Option<i64>, _>("closed_at")
            .map(DateTime::from_timestamp_nanos);
        assert_eq!(status, "closed", "due event {event_id}");
        assert_eq!(stored_closes_at, *closes_at);
        let late = closed_at.unwrap() - stored_closes_at;
        let dead = killed_at < *closes_at && *closes_at < restarted_at;
        while_dead += usize::from(dead);
        println!(
            "due event {event_id}: closed {} ms after its closesAt{}",
            late.num_milliseconds(),
            if dead { " (its creator was dead)" } else { "" }
        );
        assert!(
            late < ON_TIME,
            "due event {event_id} closed {late} after its closesAt"
        );
    }
    connection.close().await.unwrap();
    assert!(
        while_dead >= 2,
        "only {while_dead} events came due while the node was dead"
    );
}

/// Each event of the streamer and its totals, as the store holds them.
async fn stored_totals(database: &TestDatabase, streamer: Uuid) -> BTreeMap<Uuid, Totals> {
    let mut connection = PgConnection::connect(&database.url).await.unwrap();
    let rows = sqlx::query("SELECT id, totals FROM events WHERE streamer_id = $1")
        .bind(streamer)
        .fetch_all(&mut connection)
        .await
        .unwrap();
    connection.close().await.unwrap();
    rows.iter()
        .map(|row| {
            let totals: &str = row.get("totals");
            (row.get("id"), serde_json::from_str(totals).unwrap())
        })
        .collect()
}

/// Folds one message into a view of each event's totals.
fn fold(view: &mut BTreeMap<Uuid, Totals>, message: &ServerMessage) {
    match message {
        ServerMessage::EventCreated(created) => {
            view.entry(created.event.id).or_insert_with(|| {
                created
                    .event
                    .options
                    .iter()
                    .map(|option| (option.id.clone(), 0))
                    .collect()
            });
        }
        ServerMessage::EventUpdated(updated) => {
            view.insert(updated.event_id, updated.totals.clone());
        }
        ServerMessage::EventClosed(closed) => {
            view.insert(closed.event_id, closed.result.totals.clone());
        }
        _ => {}
    }
}

/// A socket subscribed to the streamer on one node, read by a task of its own that keeps the
/// totals it was shown.
struct Watcher {
    view: Arc<Mutex<BTreeMap<Uuid, Totals>>>,
    stop: CancellationToken,
    reader: tokio::task::JoinHandle<()>,
}

impl Watcher {
    async fn start(cluster: &Cluster, node: usize, streamer: Uuid) -> Watcher {
        let token = cluster.token(node, Uuid::new_v4(), "viewer", None).await;
        let mut socket: Client = connect(
            &cluster.nodes[node].socket_url(&format!("?streamerId={streamer}&token={token}")),
        )
        .await;
        socket.patience = Duration::from_secs(60);
        let view = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = CancellationToken::new();
        let (shown, stopping) = (view.clone(), stop.clone());
        let reader = tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    () = stopping.cancelled() => return,
                    received = socket.next() => received,
                };
                match received {
                    Received::Message(ServerMessage::Ping(_)) => socket.pong().await,
                    Received::Message(message) => fold(&mut shown.lock(), &message),
                    Received::Closed(code) => panic!("the reconnected socket closed: {code:?}"),
                }
            }
        });
        Watcher { view, stop, reader }
    }

    /// The view once it equals `stored`, or as it is after `limit`.
    async fn view_when_equal(
        &self,
        stored: &BTreeMap<Uuid, Totals>,
        limit: Duration,
    ) -> BTreeMap<Uuid, Totals> {
        let started = Instant::now();
        loop {
            assert!(
                !self.reader.is_finished(),
                "the reconnected socket's reader ended (see its panic above)"
            );
            let view = self.view.lock().clone();
            if &view == stored || started.elapsed() > limit {
                return view;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stop(&self) {
        self.stop.cancel();
    }
}

/// A fresh subscription's snapshot on node `index` (the messages up to SUBSCRIBED), taken
/// again until it equals `stored` or `CONVERGES` has passed.
async fn snapshot_when_equal(
    cluster: &Cluster,
    index: usize,
    streamer: Uuid,
    stored: &BTreeMap<Uuid, Totals>,
) -> BTreeMap<Uuid, Totals> {
    let started = Instant::now();
    loop {
        let token = cluster.token(index, Uuid::new_v4(), "viewer", None).await;
        let mut socket = connect(
            &cluster.nodes[index].socket_url(&format!("?streamerId={streamer}&token={token}")),
        )
        .await;
        let mut snapshot = BTreeMap::new();
        for message in socket.until_subscribed().await {
            fold(&mut snapshot, &message);
        }
        socket.close().await;
        if &snapshot == stored || started.elapsed() > CONVERGES {
            return snapshot;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
