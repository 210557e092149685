//! Throughput of durable votes: 64 concurrent tasks cast single votes for 1,000 users across
//! 10 events on a database file (WAL, synchronous=FULL), first with an Idempotency-Key on every
//! vote and then without, and print votes per second. Bounded by a vote count and a time limit.
//!
//! Run: `cargo bench -p livevote-storage`; `cargo bench -p livevote-storage --bench votes --
//! 50000 keyed` changes the count and runs only the half with keys (or `unkeyed`).
//!
//! `postgres` runs the same on a Postgres database created for the run and dropped after it
//! (server from `LIVEVOTE_BENCH_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`), and `nodes=N` spreads the tasks over N stores
//! on the one database, as N server processes would be; `tasks=N` sets the number of
//! concurrent callers (64).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use livevote_protocol::{Event, EventOption, Timestamp};
use livevote_storage::postgres::PostgresStore;
use livevote_storage::sqlite::SqliteStore;
use livevote_storage::{IdempotencyKey, Store, VoteCommand};
use sqlx::{ConnectOptions, Connection};
use uuid::Uuid;

/// Concurrent callers, each waiting for its answer before the next vote (`tasks=N` changes it).
const TASKS: u64 = 64;
const USERS: usize = 1_000;
const EVENTS: usize = 10;
const DEFAULT_VOTES: u64 = 200_000;
const TIME_LIMIT: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; a number among the arguments sets the vote count, and
    // `keyed` or `unkeyed` runs only that half.
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let votes = arguments
        .iter()
        .find_map(|argument| argument.parse().ok())
        .unwrap_or(DEFAULT_VOTES);
    let halves: Vec<bool> = [true, false]
        .into_iter()
        .filter(|with_keys| {
            let only = |word: &str| arguments.iter().any(|argument| argument == word);
            (!only("keyed") && !only("unkeyed"))
                || only(if *with_keys { "keyed" } else { "unkeyed" })
        })
        .collect();
    let nodes = arguments
        .iter()
        .find_map(|argument| argument.strip_prefix("nodes=")?.parse().ok())
        .unwrap_or(1usize)
        .max(1);
    let tasks = arguments
        .iter()
        .find_map(|argument| argument.strip_prefix("tasks=")?.parse().ok())
        .unwrap_or(TASKS)
        .max(1);
    let postgres = arguments.iter().any(|argument| argument == "postgres");
    let directory = tempfile::tempdir().expect("temporary directory");
    let database = if postgres {
        Database::postgres().await
    } else {
        Database::Sqlite(format!(
            "sqlite://{}",
            directory.path().join("bench.db").display()
        ))
    };
    let mut stores = Vec::new();
    for _ in 0..nodes {
        stores.push(database.connect().await);
    }
    let stores = Arc::new(stores);
    let store = stores[0].clone();

    let users: Arc<Vec<Uuid>> = Arc::new((0..USERS).map(|_| Uuid::new_v4()).collect());
    for user_id in users.iter() {
        store
            .ensure_user(*user_id, 1_000_000_000)
            .await
            .expect("make the user known");
    }
    let closes_at = Utc::now() + chrono::Duration::hours(1);
    let mut events = Vec::new();
    for _ in 0..EVENTS {
        let event = bench_event(closes_at);
        store
            .create_event(&event, closes_at)
            .await
            .expect("create an event");
        events.push(event.id);
    }
    let events = Arc::new(events);

    println!(
        "{votes} votes, {tasks} tasks over {nodes} store(s), {USERS} users, {EVENTS} events, {}",
        match &database {
            Database::Sqlite(url) => format!("database file {url}"),
            Database::Postgres { name, .. } => format!("Postgres database {name}"),
        }
    );
    let mut accepted = 0;
    for with_keys in halves {
        accepted += run(&stores, &users, &events, votes, tasks, with_keys).await;
    }

    let mut counted = 0;
    for event_id in events.iter() {
        let record = store
            .get_event(*event_id)
            .await
            .expect("read an event")
            .expect("the event exists");
        counted += record.totals.values().sum::<u64>();
    }
    assert_eq!(counted, accepted, "totals equal the accepted votes");
    for user_id in users.iter().take(20) {
        let balance = store
            .balance(*user_id)
            .await
            .expect("balance")
            .expect("a known user");
        let entries = store.ledger_entries(*user_id).await.expect("ledger");
        assert_eq!(
            balance,
            entries.iter().map(|entry| entry.amount).sum::<i64>(),
            "ledger sums to the balance"
        );
    }
    drop(store);
    drop(stores);
    database.drop_if_created().await;
}

/// The database the run writes to.
enum Database {
    Sqlite(String),
    /// Created for the run; `admin` is where it was created from.
    Postgres {
        name: String,
        url: String,
        admin: Box<sqlx::postgres::PgConnectOptions>,
    },
}

impl Database {
    async fn postgres() -> Database {
        let admin_url = std::env::var("LIVEVOTE_BENCH_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let admin: sqlx::postgres::PgConnectOptions = admin_url.parse().expect("a Postgres URL");
        let mut connection = admin.connect().await.expect("connect to Postgres");
        let name = format!("livevote_bench_{}", Uuid::new_v4().simple());
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut connection)
            .await
            .expect("create the benchmark's database");
        connection.close().await.ok();
        let url = admin.clone().database(&name).to_url_lossy().to_string();
        Database::Postgres {
            name,
            url,
            admin: Box::new(admin),
        }
    }

    async fn connect(&self) -> Arc<dyn Store> {
        match self {
            Database::Sqlite(url) => {
                Arc::new(SqliteStore::connect(url).await.expect("open the database"))
            }
            Database::Postgres { url, .. } => Arc::new(
                PostgresStore::connect(url)
                    .await
                    .expect("connect to the database"),
            ),
        }
    }

    async fn drop_if_created(self) {
        if let Database::Postgres { name, admin, .. } = self {
            // The stores' writers end once dropped; FORCE closes whatever is still connected.
            let mut connection = admin.connect().await.expect("connect to Postgres");
            sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut connection)
                .await
                .expect("drop the benchmark's database");
            connection.close().await.ok();
        }
    }
}

async fn run(
    stores: &Arc<Vec<Arc<dyn Store>>>,
    users: &Arc<Vec<Uuid>>,
    events: &Arc<Vec<Uuid>>,
    votes: u64,
    tasks: u64,
    with_keys: bool,
) -> u64 {
    let next = Arc::new(AtomicU64::new(0));
    let queries = || stores.iter().map(|store| store.query_count()).sum::<u64>();
    let queries_before = queries();
    let started = Instant::now();
    let tasks: Vec<_> = (0..tasks)
        .map(|task| {
            let store = stores[task as usize % stores.len()].clone();
            let (users, events, next) = (users.clone(), events.clone(), next.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let number = next.fetch_add(1, Ordering::Relaxed);
                    if number >= votes || started.elapsed() > TIME_LIMIT {
                        return latencies;
                    }
                    let user_id = users[(number as usize * 7_919) % USERS];
                    let idempotency = with_keys.then(|| IdempotencyKey {
                        key: format!("bench-{number}"),
                        fingerprint: format!("POST /api/events/votes {number}"),
                    });
                    let command = VoteCommand {
                        user_id,
                        event_id: events[number as usize % EVENTS],
                        option_id: ["a", "b", "c"][number as usize % 3].to_owned(),
                        votes: 1,
                        idempotency,
                        now: Utc::now(),
                        initial_balance: 0,
                    };
                    let sent = Instant::now();
                    store
                        .cast_vote(command)
                        .await
                        .expect("the vote is accepted");
                    latencies.push(sent.elapsed());
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("a voting task"));
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let cast = latencies.len() as u64;
    let percentile = |fraction: f64| latencies[((latencies.len() - 1) as f64 * fraction) as usize];
    println!(
        "{}: {cast} votes in {:.2} s = {:.0} votes/s; latency p50 {:?} p99 {:?}; {:.3} SQL statements per vote",
        if with_keys { "with Idempotency-Key" } else { "without key" },
        elapsed.as_secs_f64(),
        cast as f64 / elapsed.as_secs_f64(),
        percentile(0.50),
        percentile(0.99),
        (queries() - queries_before) as f64 / cast as f64,
    );
    cast
}

fn bench_event(closes_at: chrono::DateTime<Utc>) -> Event {
    Event {
        id: Uuid::new_v4(),
        streamer_id: Uuid::new_v4(),
        game_id: None,
        title: "Benchmark".to_owned(),
        options: ["a", "b", "c"]
            .iter()
            .map(|id| EventOption {
                id: (*id).to_owned(),
                label: id.to_uppercase(),
            })
            .collect(),
        closes_at: Timestamp(closes_at.to_rfc3339_opts(SecondsFormat::Millis, true)),
        cost_per_vote: 1,
        prompt_versions: None,
    }
}
