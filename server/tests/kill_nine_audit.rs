//! Kill -9 audit: the real `livevote-server` binary takes a vote and credit storm with
//! Idempotency-Keys, is SIGKILLed at random moments and restarted on the same SQLite file,
//! while its clients retry every unanswered request with the same key. The audit then reads the
//! database itself and checks the ledger's promises: every answered vote and credit is in it
//! exactly once, each balance is the sum of its entries and never below 0, each event's totals
//! equal its votes, and events that came due while the server was down closed once, at start-up.
//!
//! The kill moments and the clients' choices come from a seeded RNG; the seed is printed and
//! `LIVEVOTE_KILL_AUDIT_SEED=N` replays it. The checks are invariants, never timings.

mod binary_support;
mod common;
mod socket_support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use livevote_protocol::{EventResult, ServerMessage, Totals};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Row, SqliteConnection};
use tokio::sync::watch;
use uuid::Uuid;

/// Real secrets rather than `--dev`: `--dev` draws a new JWT secret at every start, and the
/// point is that clients carry on with the tokens they hold across a restart.
const JWT_SECRET: &str = "kill-nine-audit-jwt-secret-0123456789abcdef";
const API_KEY: &str = "kill-nine-audit-api-key-0123456789";
const SEED_VARIABLE: &str = "LIVEVOTE_KILL_AUDIT_SEED";

/// Kill cycles, each with an event due while the server is down. The last cycle kills the
/// restarted server once more right after it announces itself, most likely while it is closing
/// that event at start-up, so a close interrupted by a crash is audited too.
const KILLS: usize = 5;
/// The extra kill of the last cycle lands this long after the `listening on` line.
const START_UP_KILL_MS: std::ops::RangeInclusive<u64> = 0..=40;
const VOTERS: usize = 6;
const INITIAL_BALANCE: i64 = 300;
/// The options of every event; the first wins ties.
const OPTIONS: [&str; 3] = ["red", "green", "blue"];
/// Costs per vote of the two long-lived storm events and of each event due while down.
const STORM_COSTS: [i64; 2] = [1, 3];
const DUE_COST: i64 = 2;

/// The server is killed this long after the cycle's due event was created (uniformly drawn).
const KILL_DELAY_MS: std::ops::RangeInclusive<u64> = 50..=1200;
/// A due event closes this long after the kill is planned, so that the kill always lands before
/// its `closesAt` (checked, not assumed: see `Cycle::killed_at`).
const DUE_AFTER_KILL: Duration = Duration::from_millis(1000);
/// How long the storm carries on against the last server before the clients stop.
const FINAL_STORM: Duration = Duration::from_millis(400);

/// Bounds: every loop in this file stops on one of these.
const WHOLE_AUDIT: Duration = Duration::from_secs(100);
const MAX_REQUESTS_PER_CLIENT: usize = 4000;
const ANSWER_DEADLINE: Duration = Duration::from_secs(30);
const MAX_ATTEMPTS: u32 = 2000;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_PAUSE: Duration = Duration::from_millis(15);
const START_DEADLINE: Duration = Duration::from_secs(30);
const CLIENTS_FINISH: Duration = Duration::from_secs(45);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_votes_and_credits_survive_sigkill_exactly_once() {
    let seed = match std::env::var(SEED_VARIABLE) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_VARIABLE}={text} is not a u64")),
        Err(_) => rand::random::<u64>(),
    };
    println!("kill -9 audit seed {seed} (replay with {SEED_VARIABLE}={seed})");
    let report = tokio::time::timeout(WHOLE_AUDIT, run_audit(seed))
        .await
        .unwrap_or_else(|_| panic!("the audit took longer than {WHOLE_AUDIT:?} (seed {seed})"));
    println!("{}", report.summary);
    assert!(
        report.violations.is_empty(),
        "kill -9 audit (seed {seed}, replay with {SEED_VARIABLE}={seed}) found {} violation(s):\n  {}\n{}",
        report.violations.len(),
        report
            .violations
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  "),
        report.summary
    );
}

struct AuditReport {
    violations: Vec<String>,
    summary: String,
}

// ---------------------------------------------------------------------------------------------
// The server process

/// A running `livevote-server`. Dropping it kills the process, so that a failing test leaves no
/// server behind.
struct ServerProcess {
    child: Child,
    address: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// SIGKILL (what `Child::kill` sends on unix), then reaps the process: once this returns the
    /// process can write nothing more. Returns the moment it was certainly dead.
    fn kill_nine(mut self) -> DateTime<Utc> {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("reap the server");
        Utc::now()
    }
}

fn server_arguments(database_url: &str) -> Vec<String> {
    [
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        database_url,
        "--jwt-secret",
        JWT_SECRET,
        "--api-key",
        API_KEY,
        "--initial-balance",
        &INITIAL_BALANCE.to_string(),
        // The storm is a handful of users voting as fast as the node answers.
        "--vote-rate",
        "1000000",
        // Every due event of the run stays in the snapshots, so each restart can show them all.
        "--recent-closed",
        "10m",
    ]
    .iter()
    .map(|argument| argument.to_string())
    .collect()
}

/// Starts the binary and waits (bounded) for its `listening on http://ADDR` line.
fn spawn_server(database_url: &str, log: &Path) -> ServerProcess {
    let (child, address) =
        binary_support::spawn(&server_arguments(database_url), log, START_DEADLINE);
    let mut process = ServerProcess {
        child,
        address: String::new(),
    };
    match address {
        Some(address) => process.address = address,
        None => {
            let status = process.child.try_wait().ok().flatten();
            drop(process);
            panic!(
                "no `listening on` line within {START_DEADLINE:?} (exit: {status:?}); log:\n{}",
                log_tail(log)
            );
        }
    }
    process
}

async fn start_server(database_url: &str, log: &Path) -> ServerProcess {
    let database_url = database_url.to_owned();
    let log = log.to_owned();
    tokio::task::spawn_blocking(move || spawn_server(&database_url, &log))
        .await
        .expect("the spawning thread")
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let start = text.len().saturating_sub(4000);
    let start = (start..text.len())
        .find(|index| text.is_char_boundary(*index))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

// ---------------------------------------------------------------------------------------------
// Clients

/// What every client shares: where the server is now (`None` while it is down), which events to
/// vote on, and when to stop.
struct Storm {
    address: watch::Receiver<Option<String>>,
    targets: Mutex<Vec<Target>>,
    stop: AtomicBool,
}

#[derive(Debug, Clone, Copy)]
struct Target {
    event_id: Uuid,
}

/// How a request with one Idempotency-Key ended, after every retry.
#[derive(Debug, Clone)]
enum Answer {
    /// 200, with the body's balance (the balance right after this entry) and totals.
    Accepted { balance: i64 },
    /// A final 4xx: nothing was committed for this key.
    Refused { status: u16, code: String },
    /// No answer within the bounds; the audit reports it.
    Unanswered { last_error: String },
}

impl std::fmt::Display for Answer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Accepted { balance } => write!(formatter, "200, balance {balance}"),
            Answer::Refused { status, code } => write!(formatter, "{status} {code}"),
            Answer::Unanswered { last_error } => {
                write!(formatter, "no answer within the bounds; last: {last_error}")
            }
        }
    }
}

#[derive(Debug, Clone)]
struct VoteRecord {
    key: String,
    user: Uuid,
    event_id: Uuid,
    option_id: String,
    votes: i64,
    attempts: u32,
    answer: Answer,
    /// When the final answer arrived (to tell which accepted votes were committed by a process
    /// that was then killed and answered by its successor from the idempotency record).
    answered_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct CreditRecord {
    key: String,
    user: Uuid,
    amount: i64,
    reason: String,
    attempts: u32,
    answer: Answer,
}

/// The first answer the server gives, after transport errors, 5xx and 429 are retried with the
/// same key and body against whichever server is up.
struct Attempted {
    status: u16,
    body: Value,
    attempts: u32,
}

async fn current_address(
    address: &mut watch::Receiver<Option<String>>,
    deadline: tokio::time::Instant,
) -> Option<String> {
    loop {
        if let Some(current) = address.borrow_and_update().clone() {
            return Some(current);
        }
        match tokio::time::timeout_at(deadline, address.changed()).await {
            Ok(Ok(())) => continue,
            _ => return None,
        }
    }
}

async fn post_until_answered(
    http: &reqwest::Client,
    address: &mut watch::Receiver<Option<String>>,
    path: &str,
    token: &str,
    key: &str,
    body: &str,
) -> Result<Attempted, String> {
    let deadline = tokio::time::Instant::now() + ANSWER_DEADLINE;
    let mut last_error = String::from("never sent");
    for attempt in 1..=MAX_ATTEMPTS {
        let Some(base) = current_address(address, deadline).await else {
            break;
        };
        let sent = http
            .post(format!("http://{base}{path}"))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                // A body cut off by the kill is no answer either.
                match response.bytes().await {
                    Ok(bytes) if status < 500 && status != 429 => {
                        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        return Ok(Attempted {
                            status,
                            body,
                            attempts: attempt,
                        });
                    }
                    Ok(bytes) => {
                        last_error = format!("{status} {}", String::from_utf8_lossy(&bytes))
                    }
                    Err(error) => last_error = format!("{status}, body lost: {error}"),
                }
            }
            Err(error) => last_error = error.to_string(),
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    Err(last_error)
}

fn answer_of(attempted: &Result<Attempted, String>) -> (Answer, u32) {
    match attempted {
        Ok(Attempted {
            status: 200,
            body,
            attempts,
        }) => match body["balance"].as_i64() {
            Some(balance) => (Answer::Accepted { balance }, *attempts),
            None => (
                Answer::Refused {
                    status: 200,
                    code: format!("200 without a balance: {body}"),
                },
                *attempts,
            ),
        },
        Ok(Attempted {
            status,
            body,
            attempts,
        }) => (
            Answer::Refused {
                status: *status,
                code: body["error"]["code"].as_str().unwrap_or("?").to_owned(),
            },
            *attempts,
        ),
        Err(last_error) => (
            Answer::Unanswered {
                last_error: last_error.clone(),
            },
            MAX_ATTEMPTS,
        ),
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("an HTTP client")
}

/// One viewer voting as fast as it is answered, one request at a time, each with a fresh key.
/// Each request picks an event (the two storm events or the current due event), an option and
/// 1–4 votes.
async fn run_voter(
    index: usize,
    user: Uuid,
    token: String,
    storm: Arc<Storm>,
    seed: u64,
) -> Vec<VoteRecord> {
    let mut rng = StdRng::seed_from_u64(seed ^ (0x766f_7465 + index as u64));
    let http = http_client();
    let mut address = storm.address.clone();
    let mut records = Vec::new();
    for request in 0..MAX_REQUESTS_PER_CLIENT {
        if storm.stop.load(Ordering::Relaxed) {
            break;
        }
        let target = {
            let targets = storm.targets.lock().unwrap();
            targets[rng.gen_range(0..targets.len())]
        };
        let option_id = OPTIONS[rng.gen_range(0..OPTIONS.len())].to_owned();
        let votes = rng.gen_range(1..=4_i64);
        let key = format!("vote-{index}-{request}");
        let body = json!({"optionId": option_id, "votes": votes}).to_string();
        let path = format!("/api/events/{}/votes", target.event_id);
        let attempted = post_until_answered(&http, &mut address, &path, &token, &key, &body).await;
        let (answer, attempts) = answer_of(&attempted);
        records.push(VoteRecord {
            key,
            user,
            event_id: target.event_id,
            option_id,
            votes,
            attempts,
            answer,
            answered_at: Utc::now(),
        });
    }
    records
}

/// The admin crediting random voters, each credit with a fresh key and its key in the reason,
/// so that the audit can find each credit's ledger entry.
async fn run_creditor(
    token: String,
    voters: Vec<Uuid>,
    storm: Arc<Storm>,
    seed: u64,
) -> Vec<CreditRecord> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6372_6564_6974);
    let http = http_client();
    let mut address = storm.address.clone();
    let mut records = Vec::new();
    for request in 0..MAX_REQUESTS_PER_CLIENT {
        if storm.stop.load(Ordering::Relaxed) {
            break;
        }
        let user = voters[rng.gen_range(0..voters.len())];
        let amount = rng.gen_range(1..=80_i64);
        let key = format!("credit-{request}");
        let reason = format!("kill audit {key}");
        let body = json!({"userId": user, "amount": amount, "reason": reason}).to_string();
        let attempted = post_until_answered(
            &http,
            &mut address,
            "/api/ledger/credit",
            &token,
            &key,
            &body,
        )
        .await;
        let (answer, attempts) = answer_of(&attempted);
        records.push(CreditRecord {
            key,
            user,
            amount,
            reason,
            attempts,
            answer,
        });
        // Credits trail the votes' spending, so that balances run dry now and then and the
        // "never below 0" rule is exercised (402s), not only stated.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(2..=12))).await;
    }
    records
}

// ---------------------------------------------------------------------------------------------
// The controller: start, storm, kill at a random moment, restart, check the closes

/// One kill: the event that was due while the server was down, and what the restart showed.
struct Cycle {
    due_event: Uuid,
    closes_at: DateTime<Utc>,
    /// When the killed process was certainly dead.
    killed_at: DateTime<Utc>,
    /// The kill landed before `closes_at` (it always should; a machine stalled for over a
    /// second could make it late, and then the killed process may have closed the event
    /// itself, so the start-up checks do not apply to this cycle).
    killed_before_due: bool,
    /// When the replacement was spawned.
    restarted_at: DateTime<Utc>,
    /// What the socket and GET showed after the restart, and the `closed_at` the database held.
    result: Option<EventResult>,
    closed_at_nanos: Option<i64>,
}

async fn mint(
    http: &reqwest::Client,
    base: &str,
    user: Uuid,
    role: &str,
    streamer: Option<Uuid>,
) -> String {
    binary_support::mint_token(http, base, API_KEY, user, role, streamer).await
}

async fn create_event(
    http: &reqwest::Client,
    base: &str,
    worker: &str,
    streamer: Uuid,
    title: &str,
    closes_at: DateTime<Utc>,
    cost: i64,
) -> Uuid {
    let id = Uuid::new_v4();
    let options: Vec<Value> = OPTIONS
        .iter()
        .map(|option| json!({"id": option, "label": option.to_uppercase()}))
        .collect();
    let body = json!({
        "id": id,
        "streamerId": streamer,
        "gameId": null,
        "title": title,
        "options": options,
        "closesAt": closes_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "costPerVote": cost,
    });
    let response = http
        .post(format!("http://{base}/api/events"))
        .bearer_auth(worker)
        .json(&body)
        .send()
        .await
        .expect("create an event");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(status, 201, "creating {title}: {text}");
    id
}

async fn get_json(http: &reqwest::Client, base: &str, path: &str, token: &str) -> (u16, Value) {
    let response = http
        .get(format!("http://{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap_or_else(|error| panic!("GET {path}: {error}"));
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A v4 uuid drawn from the seeded RNG, so that a replay uses the same users.
fn random_uuid(rng: &mut StdRng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.gen()).into_uuid()
}

fn nanos(at: DateTime<Utc>) -> i64 {
    at.timestamp_nanos_opt()
        .expect("a time within i64 nanoseconds")
}

async fn open_database(database_url: &str) -> SqliteConnection {
    SqliteConnectOptions::from_str(database_url)
        .expect("a SQLite URL")
        .connect()
        .await
        .expect("open the audited database")
}

async fn closed_at_in_database(database_url: &str, event_id: Uuid) -> Option<i64> {
    let mut connection = open_database(database_url).await;
    let closed_at =
        sqlx::query_scalar::<_, Option<i64>>("SELECT closed_at FROM events WHERE id = ?")
            .bind(event_id)
            .fetch_one(&mut connection)
            .await
            .expect("read closed_at");
    connection.close().await.ok();
    closed_at
}

/// After a restart: a socket subscribed to the streamer sees each due event closed exactly once
/// (in its snapshot, or live if it subscribed before the start-up close), with the result the
/// event's GET shows; events closed at earlier restarts show the same result as then.
async fn check_restart(
    http: &reqwest::Client,
    base: &str,
    observer: &str,
    streamer: Uuid,
    database_url: &str,
    cycles: &mut [Cycle],
    violations: &mut Vec<String>,
) {
    let latest = cycles.len() - 1;
    let due_event = cycles[latest].due_event;
    let url = format!("ws://{base}/realtime?streamerId={streamer}&token={observer}");
    let mut socket = socket_support::connect(&url).await;
    socket.patience = Duration::from_secs(10);
    let mut seen = socket.until_subscribed().await;
    let closed_in = |messages: &[ServerMessage], event_id: Uuid| {
        messages
            .iter()
            .filter_map(|message| match message {
                ServerMessage::EventClosed(closed) if closed.event_id == event_id => {
                    Some(closed.result.clone())
                }
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    if closed_in(&seen, due_event).is_empty() {
        seen.extend(
            socket
                .until(|message| {
                    matches!(message, ServerMessage::EventClosed(closed) if closed.event_id == due_event)
                })
                .await,
        );
    }
    // A second EVENT_CLOSED would come right behind the first; give it a moment to show.
    let quiet_until = tokio::time::Instant::now() + Duration::from_millis(300);
    while let Ok(received) = tokio::time::timeout_at(quiet_until, socket.next()).await {
        match received {
            socket_support::Received::Message(message) => seen.push(message),
            socket_support::Received::Closed(code) => {
                violations.push(format!(
                    "restart {latest}: the observer socket closed ({code:?})"
                ));
                break;
            }
        }
    }
    socket.close().await;

    let (status, view) = get_json(http, base, &format!("/api/events/{due_event}"), observer).await;
    let shown: Option<EventResult> = serde_json::from_value(view["result"].clone()).ok();
    if status != 200 || view["status"] != "closed" || shown.is_none() {
        violations.push(format!(
            "restart {latest}: due event {due_event} is not closed with a result after start-up: {status} {view}"
        ));
    }
    for (index, cycle) in cycles.iter_mut().enumerate() {
        let closes = closed_in(&seen, cycle.due_event);
        if closes.len() != 1 {
            violations.push(format!(
                "restart {latest}: the socket saw {} EVENT_CLOSED for due event {index} ({}), not 1",
                closes.len(),
                cycle.due_event
            ));
            continue;
        }
        if index == latest {
            if shown.as_ref() != Some(&closes[0]) {
                violations.push(format!(
                    "restart {latest}: EVENT_CLOSED result {:?} differs from GET's {shown:?}",
                    closes[0]
                ));
            }
            cycle.result = Some(closes[0].clone());
        } else if cycle.result.as_ref() != Some(&closes[0]) {
            violations.push(format!(
                "restart {latest}: due event {index} now shows result {:?}, at its own restart {:?}",
                closes[0], cycle.result
            ));
        }
    }

    let cycle = &mut cycles[latest];
    cycle.closed_at_nanos = closed_at_in_database(database_url, due_event).await;
    match cycle.closed_at_nanos {
        None => violations.push(format!(
            "restart {latest}: due event {due_event} has no closed_at in the database"
        )),
        Some(closed_at) => {
            if closed_at < nanos(cycle.closes_at) {
                violations.push(format!(
                    "restart {latest}: due event closed at {closed_at}, before its closesAt {}",
                    nanos(cycle.closes_at)
                ));
            }
            if cycle.killed_before_due && closed_at < nanos(cycle.restarted_at) {
                violations.push(format!(
                    "restart {latest}: due event closed at {closed_at}, before the restart at {} \
                     (the killed process closed it although it died before closesAt)",
                    nanos(cycle.restarted_at)
                ));
            }
        }
    }
}

struct Participants {
    voters: Vec<(Uuid, String)>,
    admin: (Uuid, String),
    observer: String,
}

async fn run_audit(seed: u64) -> AuditReport {
    let began = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let directory = tempfile::tempdir().expect("a temporary directory");
    let database: PathBuf = directory.path().join("audit.db");
    let database_url = format!("sqlite://{}", database.display());
    let log = directory.path().join("server.log");
    let http = http_client();
    let mut violations = Vec::new();

    let mut server = start_server(&database_url, &log).await;
    let (publish_address, address) = watch::channel(Some(server.address.clone()));

    let streamer = random_uuid(&mut rng);
    let worker = mint(
        &http,
        &server.address,
        random_uuid(&mut rng),
        "worker",
        None,
    )
    .await;
    let admin_id = random_uuid(&mut rng);
    let participants = Participants {
        voters: {
            let mut voters = Vec::new();
            for _ in 0..VOTERS {
                let user = random_uuid(&mut rng);
                voters.push((
                    user,
                    mint(&http, &server.address, user, "viewer", None).await,
                ));
            }
            voters
        },
        admin: (
            admin_id,
            mint(&http, &server.address, admin_id, "admin", None).await,
        ),
        observer: mint(
            &http,
            &server.address,
            random_uuid(&mut rng),
            "viewer",
            None,
        )
        .await,
    };

    let far = Utc::now() + chrono::Duration::hours(1);
    let mut costs: HashMap<Uuid, i64> = HashMap::new();
    let mut storm_events = Vec::new();
    for (index, cost) in STORM_COSTS.iter().enumerate() {
        let title = format!("storm {index}");
        let id = create_event(
            &http,
            &server.address,
            &worker,
            streamer,
            &title,
            far,
            *cost,
        )
        .await;
        costs.insert(id, *cost);
        storm_events.push(Target { event_id: id });
    }
    let storm = Arc::new(Storm {
        address,
        targets: Mutex::new(storm_events.clone()),
        stop: AtomicBool::new(false),
    });
    let voter_tasks: Vec<_> = participants
        .voters
        .iter()
        .enumerate()
        .map(|(index, (user, token))| {
            tokio::spawn(run_voter(index, *user, token.clone(), storm.clone(), seed))
        })
        .collect();
    let creditor_task = tokio::spawn(run_creditor(
        participants.admin.1.clone(),
        participants.voters.iter().map(|(user, _)| *user).collect(),
        storm.clone(),
        seed,
    ));

    let mut cycles: Vec<Cycle> = Vec::new();
    let mut start_up_close_latency = Vec::new();
    let mut start_up_killed_at = None;
    for kill in 0..KILLS {
        let delay = Duration::from_millis(rng.gen_range(KILL_DELAY_MS));
        let planned_kill = Utc::now() + chrono::Duration::from_std(delay).unwrap();
        // Whole milliseconds, as the event's `closesAt` text carries them.
        let closes_at = DateTime::from_timestamp_millis(
            (planned_kill + chrono::Duration::from_std(DUE_AFTER_KILL).unwrap()).timestamp_millis(),
        )
        .expect("a representable closesAt");
        let title = format!("due while down {kill}");
        let due_event = create_event(
            &http,
            &server.address,
            &worker,
            streamer,
            &title,
            closes_at,
            DUE_COST,
        )
        .await;
        costs.insert(due_event, DUE_COST);
        {
            let mut targets = storm.targets.lock().unwrap();
            targets.truncate(STORM_COSTS.len());
            targets.push(Target {
                event_id: due_event,
            });
        }
        let wait = (planned_kill - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
        let killed_at = server.kill_nine();
        let _ = publish_address.send(None);
        let killed_before_due = killed_at < closes_at;
        if !killed_before_due {
            println!("kill {kill} landed after its due event's closesAt; start-up checks skipped");
        }
        // Down until the event is due, so that only the next start-up can close it.
        let until_due = (closes_at - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(until_due + Duration::from_millis(50)).await;
        let restarted_at = Utc::now();
        server = start_server(&database_url, &log).await;
        let _ = publish_address.send(Some(server.address.clone()));
        if kill == KILLS - 1 {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(START_UP_KILL_MS))).await;
            start_up_killed_at = Some(server.kill_nine());
            let _ = publish_address.send(None);
            server = start_server(&database_url, &log).await;
            let _ = publish_address.send(Some(server.address.clone()));
        }
        cycles.push(Cycle {
            due_event,
            closes_at,
            killed_at,
            killed_before_due,
            restarted_at,
            result: None,
            closed_at_nanos: None,
        });
        check_restart(
            &http,
            &server.address,
            &participants.observer,
            streamer,
            &database_url,
            &mut cycles,
            &mut violations,
        )
        .await;
        if let Some(closed_at) = cycles[kill].closed_at_nanos {
            start_up_close_latency.push(Duration::from_nanos(
                u64::try_from(closed_at - nanos(restarted_at)).unwrap_or(0),
            ));
        }
    }

    tokio::time::sleep(FINAL_STORM).await;
    storm.stop.store(true, Ordering::Relaxed);
    let mut votes: Vec<VoteRecord> = Vec::new();
    let finishing = tokio::time::Instant::now() + CLIENTS_FINISH;
    for task in voter_tasks {
        let records = tokio::time::timeout_at(finishing, task)
            .await
            .expect("voters finish in time")
            .expect("a voter task");
        votes.extend(records);
    }
    let credits = tokio::time::timeout_at(finishing, creditor_task)
        .await
        .expect("the creditor finishes in time")
        .expect("the creditor task");

    // What the API says at the end, to compare with the database.
    let mut api_balances = HashMap::new();
    for (user, token) in &participants.voters {
        let (status, body) = get_json(&http, &server.address, "/api/balance", token).await;
        assert_eq!(status, 200, "balance of {user}: {body}");
        api_balances.insert(*user, body["balance"].as_i64().expect("a balance"));
    }
    let mut api_events = HashMap::new();
    for event_id in costs.keys() {
        let path = format!("/api/events/{event_id}");
        let (status, body) = get_json(&http, &server.address, &path, &participants.observer).await;
        assert_eq!(status, 200, "{path}: {body}");
        api_events.insert(*event_id, body);
    }
    // One last SIGKILL: the database is audited as a crash leaves it.
    server.kill_nine();

    let counts = audit_database(
        &database_url,
        &participants,
        &votes,
        &credits,
        &costs,
        &cycles,
        &api_balances,
        &api_events,
        &mut violations,
    )
    .await;

    let accepted_votes = votes
        .iter()
        .filter(|record| matches!(record.answer, Answer::Accepted { .. }))
        .count();
    let refused = |status: u16| {
        votes
            .iter()
            .filter(
                |record| matches!(record.answer, Answer::Refused { status: s, .. } if s == status),
            )
            .count()
    };
    let retried_votes = votes.iter().filter(|record| record.attempts > 1).count();
    let retried_credits = credits.iter().filter(|record| record.attempts > 1).count();
    // Whether the extra kill interrupted the start-up close or came after it committed.
    let start_up_kill = match (
        start_up_killed_at,
        cycles.last().and_then(|cycle| cycle.closed_at_nanos),
    ) {
        (Some(killed_at), Some(closed_at)) if closed_at < nanos(killed_at) => {
            "the start-up kill came after that process had closed its due event"
        }
        (Some(_), Some(_)) => {
            "the start-up kill came before the close; the next start-up closed it"
        }
        _ => "the start-up kill left no close to compare",
    };
    let summary = format!(
        "kill -9 audit, seed {seed}: {} kills in {:.1} s; {} vote requests ({accepted_votes} \
         accepted, {} refused 402, {} refused 409, {retried_votes} retried after a kill, {} of them committed before \
         the kill and answered from the idempotency record after it), {} \
         credits ({retried_credits} retried), {} ledger entries; start-up closes {:?} after spawn; {start_up_kill}",
        KILLS + 1,
        began.elapsed().as_secs_f64(),
        votes.len(),
        refused(402),
        refused(409),
        counts.replayed_across_a_kill,
        credits.len(),
        counts.ledger_entries,
        start_up_close_latency,
    );
    drop(directory);
    AuditReport {
        violations,
        summary,
    }
}

// ---------------------------------------------------------------------------------------------
// The audit, from the database file itself

struct LedgerRow {
    id: i64,
    user_id: Uuid,
    amount: i64,
    balance: i64,
    kind: String,
    event_id: Option<Uuid>,
    option_id: Option<String>,
    votes: Option<i64>,
    reason: Option<String>,
    created_at: i64,
}

/// What the audit counted, for the summary.
struct AuditCounts {
    ledger_entries: usize,
    /// Accepted votes committed before a kill whose answer came only after it: the case the
    /// idempotency keys exist for.
    replayed_across_a_kill: usize,
}

struct EventRow {
    id: Uuid,
    closes_at: i64,
    status: String,
    totals: Totals,
    seq: i64,
    result: Option<EventResult>,
    closed_at: Option<i64>,
}

/// The option with the most votes, the first listed on a tie (the contract's rule).
fn leading_option(totals: &Totals) -> String {
    let mut leader: Option<(&str, u64)> = None;
    for option in OPTIONS {
        let votes = totals.get(option).copied().unwrap_or(0);
        if leader.is_none_or(|(_, most)| votes > most) {
            leader = Some((option, votes));
        }
    }
    leader
        .map(|(option, _)| option.to_owned())
        .unwrap_or_default()
}

fn zero_totals() -> Totals {
    OPTIONS
        .iter()
        .map(|option| (option.to_string(), 0))
        .collect()
}

#[allow(clippy::too_many_arguments)]
async fn audit_database(
    database_url: &str,
    participants: &Participants,
    votes: &[VoteRecord],
    credits: &[CreditRecord],
    costs: &HashMap<Uuid, i64>,
    cycles: &[Cycle],
    api_balances: &HashMap<Uuid, i64>,
    api_events: &HashMap<Uuid, Value>,
    violations: &mut Vec<String>,
) -> AuditCounts {
    let mut connection = open_database(database_url).await;
    let ledger: Vec<LedgerRow> = sqlx::query(
        "SELECT id, user_id, amount, balance, kind, event_id, option_id, votes, reason, \
         created_at FROM ledger ORDER BY id",
    )
    .fetch_all(&mut connection)
    .await
    .expect("read the ledger")
    .iter()
    .map(|row| LedgerRow {
        id: row.get("id"),
        user_id: row.get("user_id"),
        amount: row.get("amount"),
        balance: row.get("balance"),
        kind: row.get("kind"),
        event_id: row.get("event_id"),
        option_id: row.get("option_id"),
        votes: row.get("votes"),
        reason: row.get("reason"),
        created_at: row.get("created_at"),
    })
    .collect();
    let events: Vec<EventRow> =
        sqlx::query("SELECT id, closes_at, status, totals, seq, result, closed_at FROM events")
            .fetch_all(&mut connection)
            .await
            .expect("read the events")
            .iter()
            .map(|row| EventRow {
                id: row.get("id"),
                closes_at: row.get("closes_at"),
                status: row.get("status"),
                totals: serde_json::from_str(row.get::<&str, _>("totals")).expect("totals JSON"),
                seq: row.get("seq"),
                result: row
                    .get::<Option<&str>, _>("result")
                    .map(|text| serde_json::from_str(text).expect("result JSON")),
                closed_at: row.get("closed_at"),
            })
            .collect();
    let stored_keys: BTreeSet<(Uuid, String, String)> =
        sqlx::query("SELECT scope, key, kind FROM idempotency_keys")
            .fetch_all(&mut connection)
            .await
            .expect("read the idempotency keys")
            .iter()
            .map(|row| (row.get("scope"), row.get("key"), row.get("kind")))
            .collect();
    let key_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&mut connection)
        .await
        .expect("count the idempotency keys");
    let known_users: BTreeSet<Uuid> = sqlx::query_scalar("SELECT user_id FROM users")
        .fetch_all(&mut connection)
        .await
        .expect("read the users")
        .into_iter()
        .collect();
    connection.close().await.ok();

    // Every key got a final answer, and only the answers a storm can earn.
    for record in votes {
        match &record.answer {
            Answer::Accepted { .. } => {}
            Answer::Refused { status: 402, code } if code == "INSUFFICIENT_BALANCE" => {}
            Answer::Refused { status: 409, code } if code == "EVENT_CLOSED" => {}
            other => violations.push(format!(
                "vote {}: unexpected final answer {other:?}",
                record.key
            )),
        }
    }
    for record in credits {
        if !matches!(record.answer, Answer::Accepted { .. }) {
            violations.push(format!(
                "credit {}: final answer {:?}",
                record.key, record.answer
            ));
        }
    }

    // Each balance is the sum of its entries, entry by entry, and never below 0; the first
    // entry of every user is its one initial credit.
    let mut by_user: BTreeMap<Uuid, Vec<&LedgerRow>> = BTreeMap::new();
    for row in &ledger {
        by_user.entry(row.user_id).or_default().push(row);
    }
    if by_user.keys().copied().collect::<BTreeSet<_>>() != known_users {
        violations.push("the users table and the ledger's users differ".to_owned());
    }
    let mut final_balances = HashMap::new();
    for (user, rows) in &by_user {
        let mut sum = 0_i64;
        for row in rows {
            sum += row.amount;
            if row.balance != sum {
                violations.push(format!(
                    "user {user}: entry {} says balance {} but its entries sum to {sum}",
                    row.id, row.balance
                ));
            }
            if sum < 0 || row.balance < 0 {
                violations.push(format!("user {user}: balance below 0 at entry {}", row.id));
            }
        }
        final_balances.insert(*user, sum);
        let initial: Vec<_> = rows
            .iter()
            .filter(|row| row.kind == "initial_credit")
            .collect();
        // Viewers get the initial balance; workers and admins, who do not watch, get 0.
        let expected_initial = if participants.voters.iter().any(|(voter, _)| voter == user) {
            INITIAL_BALANCE
        } else if *user == participants.admin.0 {
            0
        } else {
            rows[0].amount
        };
        if initial.len() != 1
            || rows[0].kind != "initial_credit"
            || rows[0].amount != expected_initial
        {
            violations.push(format!(
                "user {user}: {} initial credits (first entry {} of {})",
                initial.len(),
                rows[0].kind,
                rows[0].amount
            ));
        }
    }
    for (user, balance) in api_balances {
        if final_balances.get(user) != Some(balance) {
            violations.push(format!(
                "user {user}: GET /api/balance says {balance}, the ledger sums to {:?}",
                final_balances.get(user)
            ));
        }
    }

    // Every answered vote is in the ledger exactly once: its debit, for its event, option and
    // votes, leaving the balance the answer gave. Nothing else is.
    type VoteEntry = (Uuid, Uuid, String, i64, i64);
    let mut unmatched_debits: HashMap<VoteEntry, Vec<(i64, i64)>> = HashMap::new();
    for row in ledger.iter().filter(|row| row.kind == "vote_debit") {
        let (Some(event_id), Some(option_id), Some(count)) =
            (row.event_id, row.option_id.clone(), row.votes)
        else {
            violations.push(format!(
                "vote entry {} lacks its event, option or votes",
                row.id
            ));
            continue;
        };
        match costs.get(&event_id) {
            Some(cost) if row.amount == -count * cost => {}
            _ => violations.push(format!(
                "vote entry {}: amount {} is not -{count} × the cost of event {event_id}",
                row.id, row.amount
            )),
        }
        unmatched_debits
            .entry((row.user_id, event_id, option_id, count, row.balance))
            .or_default()
            .push((row.id, row.created_at));
    }
    let mut expected_totals: HashMap<Uuid, Totals> = costs
        .keys()
        .map(|event_id| (*event_id, zero_totals()))
        .collect();
    let mut accepted_per_event: HashMap<Uuid, i64> = HashMap::new();
    let mut replayed_across_a_kill = 0;
    for record in votes {
        let Answer::Accepted { balance } = record.answer else {
            continue;
        };
        *expected_totals
            .entry(record.event_id)
            .or_insert_with(zero_totals)
            .entry(record.option_id.clone())
            .or_default() += record.votes as u64;
        *accepted_per_event.entry(record.event_id).or_default() += 1;
        let entry = (
            record.user,
            record.event_id,
            record.option_id.clone(),
            record.votes,
            balance,
        );
        let found = unmatched_debits.get_mut(&entry).and_then(Vec::pop);
        if let Some((_, committed_at)) = found {
            let answered_at = nanos(record.answered_at);
            if cycles.iter().any(|cycle| {
                committed_at < nanos(cycle.killed_at) && nanos(cycle.killed_at) < answered_at
            }) && record.attempts > 1
            {
                replayed_across_a_kill += 1;
            }
        } else {
            violations.push(format!(
                "answered vote {} ({} × {} on {}, balance {balance}, {} attempt(s)) has no ledger entry",
                record.key, record.votes, record.option_id, record.event_id, record.attempts
            ));
        }
    }
    for (entry, ids) in &unmatched_debits {
        for (id, _) in ids {
            violations.push(format!(
                "ledger vote entry {id} {entry:?} belongs to no answered vote (counted twice, or a refused request committed)"
            ));
        }
    }

    // Every answered credit is in the ledger exactly once (found by the key in its reason).
    let mut credit_entries: HashMap<&str, Vec<&LedgerRow>> = HashMap::new();
    for row in ledger.iter().filter(|row| row.kind == "admin_credit") {
        credit_entries
            .entry(row.reason.as_deref().unwrap_or(""))
            .or_default()
            .push(row);
    }
    for record in credits {
        let Answer::Accepted { balance } = record.answer else {
            continue;
        };
        match credit_entries.remove(record.reason.as_str()).as_deref() {
            Some([row]) => {
                if row.user_id != record.user
                    || row.amount != record.amount
                    || row.balance != balance
                {
                    violations.push(format!(
                        "credit {}: entry {} is {} to {} leaving {}, the answer was {} to {} leaving {balance}",
                        record.key, row.id, row.amount, row.user_id, row.balance, record.amount, record.user
                    ));
                }
            }
            Some(rows) => violations.push(format!(
                "answered credit {} has {} ledger entries",
                record.key,
                rows.len()
            )),
            None => violations.push(format!(
                "answered credit {} ({} attempt(s)) has no ledger entry",
                record.key, record.attempts
            )),
        }
    }
    for (reason, rows) in credit_entries {
        violations.push(format!(
            "{} credit entr(ies) with reason {reason:?} belong to no answered credit",
            rows.len()
        ));
    }

    // The idempotency records are exactly the accepted requests' keys, once each.
    let admin = participants.admin.0;
    let expected_keys: BTreeSet<(Uuid, String, String)> = votes
        .iter()
        .filter(|record| matches!(record.answer, Answer::Accepted { .. }))
        .map(|record| (record.user, record.key.clone(), "vote".to_owned()))
        .chain(
            credits
                .iter()
                .filter(|record| matches!(record.answer, Answer::Accepted { .. }))
                .map(|record| (admin, record.key.clone(), "credit".to_owned())),
        )
        .collect();
    if key_rows as usize != stored_keys.len() {
        violations.push(format!(
            "{key_rows} idempotency rows for {} distinct keys",
            stored_keys.len()
        ));
    }
    for missing in expected_keys.difference(&stored_keys).take(10) {
        violations.push(format!("accepted request's key {missing:?} is not stored"));
    }
    for extra in stored_keys.difference(&expected_keys).take(10) {
        violations.push(format!(
            "stored key {extra:?} belongs to no accepted request (a refused request was remembered)"
        ));
    }

    // Each event's totals equal its votes in the ledger and the answered votes; `seq` counts
    // each accepted vote once and the close once; a closed event's result is its totals' winner.
    let mut ledger_totals: HashMap<Uuid, Totals> = HashMap::new();
    for row in ledger.iter().filter(|row| row.kind == "vote_debit") {
        if let (Some(event_id), Some(option_id), Some(count)) =
            (row.event_id, &row.option_id, row.votes)
        {
            *ledger_totals
                .entry(event_id)
                .or_insert_with(zero_totals)
                .entry(option_id.clone())
                .or_default() += count as u64;
        }
    }
    if events.len() != costs.len() {
        violations.push(format!(
            "{} events stored, {} created",
            events.len(),
            costs.len()
        ));
    }
    for event in &events {
        let from_ledger = ledger_totals
            .get(&event.id)
            .cloned()
            .unwrap_or_else(zero_totals);
        let expected = expected_totals
            .get(&event.id)
            .cloned()
            .unwrap_or_else(zero_totals);
        if event.totals != from_ledger {
            violations.push(format!(
                "event {}: stored totals {:?}, its ledger votes {from_ledger:?}",
                event.id, event.totals
            ));
        }
        if event.totals != expected {
            violations.push(format!(
                "event {}: stored totals {:?}, the answered votes {expected:?}",
                event.id, event.totals
            ));
        }
        let closed = event.status == "closed";
        let accepted = accepted_per_event.get(&event.id).copied().unwrap_or(0);
        if event.seq != accepted + i64::from(closed) {
            violations.push(format!(
                "event {}: seq {} but {accepted} accepted votes and closed = {closed}",
                event.id, event.seq
            ));
        }
        if closed {
            match &event.result {
                Some(result)
                    if result.totals == event.totals
                        && result.option_id == leading_option(&event.totals) => {}
                other => violations.push(format!(
                    "event {}: result {other:?} is not the winner of totals {:?}",
                    event.id, event.totals
                )),
            }
            if event
                .closed_at
                .is_none_or(|closed_at| closed_at < event.closes_at)
            {
                violations.push(format!(
                    "event {}: closed at {:?}, before its closesAt {}",
                    event.id, event.closed_at, event.closes_at
                ));
            }
        }
        if let Some(view) = api_events.get(&event.id) {
            let shown: Option<Totals> = serde_json::from_value(view["totals"].clone()).ok();
            if shown.as_ref() != Some(&event.totals) || view["status"] != event.status.as_str() {
                violations.push(format!(
                    "event {}: GET shows {} {:?}, the database {} {:?}",
                    event.id, view["status"], shown, event.status, event.totals
                ));
            }
        }
    }

    // Events due while the server was down closed once, at the start-up after their closesAt,
    // and no later start-up closed them again.
    if !cycles.iter().any(|cycle| cycle.killed_before_due) {
        violations.push("no kill landed before its due event's closesAt".to_owned());
    }
    for (index, cycle) in cycles.iter().enumerate() {
        let Some(event) = events.iter().find(|event| event.id == cycle.due_event) else {
            violations.push(format!("due event {index} is not stored"));
            continue;
        };
        if event.status != "closed" {
            violations.push(format!("due event {index} is still {}", event.status));
            continue;
        }
        if event.closed_at != cycle.closed_at_nanos {
            violations.push(format!(
                "due event {index}: closed_at {:?} now, {:?} right after its start-up close",
                event.closed_at, cycle.closed_at_nanos
            ));
        }
        if cycle.killed_before_due
            && event
                .closed_at
                .is_some_and(|closed_at| closed_at <= nanos(cycle.killed_at))
        {
            violations.push(format!(
                "due event {index}: closed at {:?}, before the server that was killed at {} died",
                event.closed_at,
                nanos(cycle.killed_at)
            ));
        }
        if event.result != cycle.result {
            violations.push(format!(
                "due event {index}: stored result {:?}, announced {:?}",
                event.result, cycle.result
            ));
        }
    }
    AuditCounts {
        ledger_entries: ledger.len(),
        replayed_across_a_kill,
    }
}
