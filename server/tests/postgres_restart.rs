//! Postgres restarted under a vote storm: a private Postgres (`initdb` and `pg_ctl` into a
//! temporary folder, on a free port) is stopped with `pg_ctl stop -m immediate` while clients
//! vote through two nodes (one with the memory broker when Redis does not answer), retrying
//! each vote with its Idempotency-Key. Meanwhile every vote is answered, within 10 s, and what
//! is sent while Postgres is down is 503 `UNAVAILABLE` with Retry-After; once it is back votes
//! succeed within 5 s and `/readyz` is 200 again; no vote answered 200 is lost or counted
//! twice, and the SQL audit holds. Skips, saying why, when `initdb`/`pg_ctl` are missing or
//! cannot run (as root they run as the `postgres` user through `runuser` or `su`).

mod common;
mod postgres_support;
mod redis_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use livevote_protocol::Role;
use redis_support::*;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use tokio::time::Instant;
use uuid::Uuid;

/// Clients voting at once, each as a user of its own, one vote after another.
const CLIENTS: usize = 6;
/// Votes each client casts, each with a key of its own that it retries until answered 200.
const VOTES_PER_CLIENT: usize = 60;
/// Longest any one request may take to be answered.
const ANSWER_BOUND: Duration = Duration::from_secs(10);
/// How long after Postgres is back votes must succeed again, and `/readyz` be 200.
const RECOVERY_BOUND: Duration = Duration::from_secs(5);

/// How to run Postgres's programs: as root they refuse to, so they run as `postgres`.
#[derive(Debug, Clone, Copy)]
enum RunAs {
    Myself,
    Runuser,
    Su,
}

/// A Postgres of this test's own in a temporary folder, with trust authentication, listening
/// on 127.0.0.1 and a socket in the same folder. Stopped (immediately) when dropped.
struct PrivatePostgres {
    folder: tempfile::TempDir,
    bin: PathBuf,
    run_as: RunAs,
    port: u16,
}

impl PrivatePostgres {
    /// `initdb` and the first start, or why not.
    fn start(port: u16) -> Result<PrivatePostgres, String> {
        let bin = postgres_bin()
            .ok_or("initdb and pg_ctl are not on the PATH nor in /usr/lib/postgresql/*/bin")?;
        let folder = tempfile::Builder::new()
            .prefix("livevote-postgres-")
            .tempdir()
            .map_err(|error| format!("no temporary folder: {error}"))?;
        let run_as = if is_root() {
            // The folder must belong to the user Postgres runs as.
            let owned = Command::new("chown")
                .arg("postgres:")
                .arg(folder.path())
                .status()
                .map_err(|error| format!("chown: {error}"))?;
            if !owned.success() {
                return Err(
                    "running as root and there is no `postgres` user to run Postgres as".into(),
                );
            }
            if runs(Command::new("runuser").args(["-u", "postgres", "--", "true"])) {
                RunAs::Runuser
            } else if runs(Command::new("su").args(["postgres", "-c", "true"])) {
                RunAs::Su
            } else {
                return Err(
                    "running as root, and neither runuser nor su can run as postgres".into(),
                );
            }
        } else {
            RunAs::Myself
        };
        let postgres = PrivatePostgres {
            folder,
            bin,
            run_as,
            port,
        };
        let data = postgres.data();
        postgres.run(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        postgres.resume()?;
        Ok(postgres)
    }

    fn data(&self) -> String {
        self.folder.path().join("data").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server on its folder and port, and waits until it accepts connections.
    /// `fsync=off` only spares the disk: an immediate stop kills processes, not the machine,
    /// so every commit acknowledged is still in the operating system's cache.
    fn resume(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.folder.path().display()
        );
        let log = self
            .folder
            .path()
            .join("postgres.log")
            .display()
            .to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "-t",
                "20",
                "start",
            ],
        )
        .map_err(|error| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            format!("{error}\n{log}")
        })
    }

    /// What a crash does: every server process ends at once, without a checkpoint.
    fn stop_immediately(&self) -> Result<(), String> {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        )
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let program = self.bin.join(program);
        let mut command = match self.run_as {
            RunAs::Myself => {
                let mut command = Command::new(&program);
                command.args(args);
                command
            }
            RunAs::Runuser => {
                let mut command = Command::new("runuser");
                command
                    .args(["-u", "postgres", "--"])
                    .arg(&program)
                    .args(args);
                command
            }
            RunAs::Su => {
                let line = std::iter::once(program.display().to_string())
                    .chain(args.iter().map(|arg| (*arg).to_owned()))
                    .map(|word| format!("'{}'", word.replace('\'', r"'\''")))
                    .collect::<Vec<_>>()
                    .join(" ");
                let mut command = Command::new("su");
                command.args(["postgres", "-c", &line]);
                command
            }
        };
        let output = command
            .stdin(Stdio::null())
            .output()
            .map_err(|error| format!("{}: {error}", program.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} {args:?} failed ({}): {}",
                program.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.stop_immediately();
    }
}

/// The folder holding `initdb` and `pg_ctl`: the PATH's, else the newest Debian-style one.
fn postgres_bin() -> Option<PathBuf> {
    let has_both =
        |folder: &Path| folder.join("initdb").is_file() && folder.join("pg_ctl").is_file();
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(folder) = on_path.into_iter().find(|folder| has_both(folder)) {
        return Some(folder);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
        .filter(|folder| has_both(folder))
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}

fn runs(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// One attempt at one vote, as a client saw it.
#[derive(Debug, Clone)]
struct Attempt {
    sent: Instant,
    answered: Instant,
    /// The status, or `None` when no answer came within [`ANSWER_BOUND`].
    status: Option<u16>,
    /// What was wrong with the answer, if anything: an unexpected status, a 503 without the
    /// contract's body or Retry-After, no answer.
    problem: Option<String>,
}

/// One vote attempt through `base` with `key`.
async fn attempt(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    event: Uuid,
    key: &str,
) -> Attempt {
    let sent = Instant::now();
    let answer = client
        .post(format!("{base}/api/events/{event}/votes"))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .timeout(ANSWER_BOUND)
        .json(&json!({"optionId": "red"}))
        .send()
        .await;
    let response = match answer {
        Ok(response) => response,
        Err(error) => {
            return Attempt {
                sent,
                answered: Instant::now(),
                status: None,
                problem: Some(format!("no answer: {error}")),
            }
        }
    };
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").cloned();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let problem = match status {
        200 => None,
        503 if body["error"]["code"] == "UNAVAILABLE" && retry_after.is_some() => None,
        _ => Some(format!(
            "answered {status} {body} (Retry-After {retry_after:?})"
        )),
    };
    Attempt {
        sent,
        answered: Instant::now(),
        status: Some(status),
        problem,
    }
}

/// A client's whole run: each vote retried with its key (through the other node, when there
/// is one) until answered 200, within `deadline`.
struct ClientRun {
    voter: Uuid,
    answered_keys: Vec<String>,
    attempts: Vec<Attempt>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_restart_during_a_vote_storm_answers_503_loses_no_vote_and_recovers() {
    let postgres = match PrivatePostgres::start(free_port()) {
        Ok(postgres) => postgres,
        Err(error) => {
            eprintln!("skipping: no private Postgres: {error}");
            return;
        }
    };
    let mut config = test_config();
    config.database_url = postgres.url();
    config.vote_rate = 100_000;
    let nodes = match shared_redis_or_skip().await {
        Some(redis_url) => {
            config.broker_url = redis_url;
            config.broker_prefix = fresh_prefix();
            let (node_a, node_b) = ready_nodes(config).await;
            vec![node_a, node_b]
        }
        None => {
            eprintln!("one node with the memory broker instead of two");
            vec![TestServer::start_with(config).await]
        }
    };
    let event = create_event_on(&nodes[0], Uuid::new_v4(), 600).await;
    let bases: Arc<Vec<String>> = Arc::new(nodes.iter().map(|node| node.http("")).collect());

    let answered = Arc::new(AtomicUsize::new(0));
    let unavailable = Arc::new(AtomicUsize::new(0));
    let storm_deadline = Instant::now() + Duration::from_secs(90);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client_number| {
            let voter = Uuid::new_v4();
            let token = nodes[0].token(Role::Viewer, voter);
            let (bases, answered, unavailable) =
                (bases.clone(), answered.clone(), unavailable.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut run = ClientRun {
                    voter,
                    answered_keys: Vec::new(),
                    attempts: Vec::new(),
                };
                for _ in 0..VOTES_PER_CLIENT {
                    let key = Uuid::new_v4().to_string();
                    for retry in 0.. {
                        if Instant::now() > storm_deadline {
                            return run;
                        }
                        let base = &bases[(client_number + retry) % bases.len()];
                        let tried = attempt(&client, base, &token, event, &key).await;
                        let status = tried.status;
                        let gave_up = tried.problem.is_some();
                        run.attempts.push(tried);
                        if status == Some(200) {
                            run.answered_keys.push(key);
                            answered.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        if gave_up {
                            return run;
                        }
                        unavailable.fetch_add(1, Ordering::SeqCst);
                        // Sooner than Retry-After asks, so that the storm goes on while
                        // Postgres is down.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                run
            })
        })
        .collect();

    // A quarter of the storm in, Postgres goes away.
    let total = CLIENTS * VOTES_PER_CLIENT;
    let waited = Instant::now();
    while answered.load(Ordering::SeqCst) < total / 4 {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "the storm did not get going"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let data = postgres.data();
    let stop = {
        let postgres = &postgres;
        tokio::task::block_in_place(|| postgres.stop_immediately())
    };
    stop.unwrap_or_else(|error| panic!("pg_ctl stop: {error}"));
    let stopped = Instant::now();
    let answered_before_stop = answered.load(Ordering::SeqCst);
    let waited = Instant::now();
    while unavailable.load(Ordering::SeqCst) == 0 {
        assert!(
            waited.elapsed() < ANSWER_BOUND,
            "no vote was refused while Postgres was down"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarting = Instant::now();
    tokio::task::block_in_place(|| postgres.resume())
        .unwrap_or_else(|error| panic!("pg_ctl start on {data}: {error}"));
    let back = Instant::now();

    // Votes succeed again within 5 s of Postgres being back, and every node is ready.
    let probe_voter = Uuid::new_v4();
    let probe_token = nodes[0].token(Role::Viewer, probe_voter);
    let probe_key = Uuid::new_v4().to_string();
    let client = reqwest::Client::new();
    loop {
        let tried = attempt(&client, &bases[0], &probe_token, event, &probe_key).await;
        if tried.status == Some(200) {
            break;
        }
        assert!(tried.problem.is_none(), "after the restart: {tried:?}");
        assert!(
            back.elapsed() < RECOVERY_BOUND,
            "votes still fail {:?} after Postgres came back",
            back.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let votes_back_after = back.elapsed();
    for node in &nodes {
        wait_for_readiness(node, 200, RECOVERY_BOUND.saturating_sub(back.elapsed())).await;
    }
    let ready_after = back.elapsed();

    let mut runs = Vec::new();
    for client in clients {
        runs.push(client.await.expect("a storm client panicked"));
    }
    let attempts: Vec<&Attempt> = runs.iter().flat_map(|run| &run.attempts).collect();
    let problems: Vec<&Attempt> = attempts
        .iter()
        .copied()
        .filter(|tried| tried.problem.is_some())
        .collect();
    assert!(
        problems.is_empty(),
        "{} bad answers, the first: {:?}",
        problems.len(),
        problems.first()
    );
    for run in &runs {
        assert_eq!(
            run.answered_keys.len(),
            VOTES_PER_CLIENT,
            "a client's votes were not all answered within the storm's 90 s"
        );
    }
    // What was sent after Postgres stopped and answered before it was started again could not
    // have been committed: it must be a 503.
    let while_down: Vec<&Attempt> = attempts
        .iter()
        .copied()
        .filter(|tried| tried.sent > stopped && tried.answered < restarting)
        .collect();
    assert!(
        !while_down.is_empty(),
        "no vote was sent while Postgres was down"
    );
    assert!(
        while_down.iter().all(|tried| tried.status == Some(503)),
        "a vote sent while Postgres was down was answered {:?}",
        while_down.iter().find(|tried| tried.status != Some(503))
    );
    let slowest = attempts
        .iter()
        .map(|tried| tried.answered - tried.sent)
        .max()
        .unwrap_or_default();
    eprintln!(
        "{} attempts ({} refused 503 while down), {answered_before_stop} votes answered before \
         the stop, votes back {votes_back_after:?} and every node ready {ready_after:?} after \
         Postgres was, slowest answer {slowest:?}",
        attempts.len(),
        while_down.len(),
    );

    for node in nodes {
        node.stop().await;
    }
    // Every key answered 200 is one vote in the ledger and one stored answer, whichever node
    // answered it and however often it was retried.
    let mut connection = PgConnection::connect(&postgres.url()).await.unwrap();
    for run in &runs {
        let votes: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM ledger WHERE user_id = $1 AND kind = 'vote_debit'",
        )
        .bind(run.voter)
        .fetch_one(&mut connection)
        .await
        .unwrap();
        assert_eq!(votes, VOTES_PER_CLIENT as i64, "one vote per answered key");
        let keys: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM idempotency_keys WHERE scope = $1 AND key = ANY($2)",
        )
        .bind(run.voter)
        .bind(&run.answered_keys)
        .fetch_one(&mut connection)
        .await
        .unwrap();
        assert_eq!(
            keys, VOTES_PER_CLIENT as i64,
            "each answered key stored once"
        );
    }
    let red: String = sqlx::query_scalar("SELECT totals FROM events WHERE id = $1")
        .bind(event)
        .fetch_one(&mut connection)
        .await
        .unwrap();
    let red: serde_json::Value = serde_json::from_str(&red).unwrap();
    assert_eq!(
        red["red"],
        json!(total + 1),
        "the storm's votes and the probe's"
    );
    connection.close().await.unwrap();
    postgres_support::audit_database(&postgres.url()).await;
}
