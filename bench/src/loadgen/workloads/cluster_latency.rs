//! Cluster latency (issue 11): how long a change committed on the first node (A) takes to reach
//! sockets on the last node (C), which hears of it only through Redis. Sockets on C (and, for
//! comparison, a few on A itself) watch one streamer's channel and their own user channel; on
//! A, round after round, the load generator creates an event, votes, credits, sends a notice
//! and closes the event, one change at a time. Each latency runs from A's HTTP answer (and,
//! in a second row, from the send) to the frame on a socket.
//!
//! tidy: long file: the rounds on A, the sockets' records and the matching of the two read
//! top to bottom; the matching depends on exactly what each round did.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::header::{HeaderName, HeaderValue};
use livevote_protocol::{CreditRequest, NoticeRequest, Role, VoteRequest};
use rand::Rng;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cluster::Cluster;
use crate::context::{joined, open_gate, realtime_path, wait_until, Bench, Progress};
use crate::histogram::{millis, Histogram};
use crate::http::{bearer, HttpConnection};
use crate::report::Report;
use crate::socket::Received;

/// The code of the notices this workload sends.
const NOTICE_CODE: &str = "BENCH_NOTICE";

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Nodes in the cluster; changes are made on the first, measured on the last.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Sockets on the last node (one user each).
    #[arg(long, default_value_t = 1_000)]
    sockets: usize,
    /// Sockets on the first node itself, for the same-node comparison (one user each).
    #[arg(long, default_value_t = 100)]
    local_sockets: usize,
    /// Rounds of create, votes, credits, notice, close.
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// Votes per round, each by the user of another socket on the last node.
    #[arg(long, default_value_t = 5)]
    votes_per_round: usize,
    /// Credits per round, each to the user of another socket on the last node.
    #[arg(long, default_value_t = 3)]
    credits_per_round: usize,
    /// The nodes' --update-interval, for the EVENT_UPDATED target (interval + 50 ms).
    #[arg(long, default_value_t = 250)]
    update_interval_ms: u64,
    /// Time allowed for opening every socket.
    #[arg(long, default_value_t = 120)]
    connect_seconds: u64,
}

/// The five kinds of change measured, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Created,
    Updated,
    Balance,
    Notice,
    Closed,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Created,
        Kind::Updated,
        Kind::Balance,
        Kind::Notice,
        Kind::Closed,
    ];

    fn message_type(self) -> &'static str {
        match self {
            Kind::Created => "EVENT_CREATED",
            Kind::Updated => "EVENT_UPDATED",
            Kind::Balance => "BALANCE_UPDATED",
            Kind::Notice => "SYSTEM_NOTICE",
            Kind::Closed => "EVENT_CLOSED",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Kind::Created => "created",
            Kind::Updated => "updated",
            Kind::Balance => "balance",
            Kind::Notice => "notice",
            Kind::Closed => "closed",
        }
    }
}

/// One change made on node A.
#[derive(Debug, Clone)]
struct Action {
    kind: Kind,
    /// The event (created, updated, closed), the notice's message, or the user (balance).
    subject: String,
    /// Totals sum after a vote, or the balance after a vote or credit.
    value: i64,
    sent: Instant,
    answered: Instant,
}

/// When a request to node A was sent and answered.
struct Timed {
    sent: Instant,
    answered: Instant,
}

/// What one socket received after subscribing, by kind.
#[derive(Debug, Default)]
struct Seen {
    /// Group 0: on the last node; 1: on the first.
    group: usize,
    user: String,
    created: HashMap<String, Instant>,
    closed: HashMap<String, Instant>,
    notices: HashMap<String, Instant>,
    /// Per event: (totals sum, when) of every EVENT_UPDATED.
    updates: HashMap<String, Vec<(u64, Instant)>>,
    /// (balance, when) of every BALANCE_UPDATED of its user.
    balances: Vec<(i64, Instant)>,
    opened: bool,
}

/// Sockets' counts of broadcasts seen, so each step can wait until every socket has it.
#[derive(Debug, Default)]
struct Counts {
    created: AtomicUsize,
    notices: AtomicUsize,
    closed: AtomicUsize,
}

/// Latency histograms of one kind for one group of sockets.
#[derive(Default)]
struct Measured {
    from_answer: Histogram,
    from_send: Histogram,
    before_answer: u64,
    never_seen: u64,
}

pub async fn run(cluster: &Cluster, options: &Options, label: &str) -> anyhow::Result<Report> {
    let mut report = Report::new(
        format!("Cluster latency, node A → node C — {label}"),
        format!("{label}.cluster_latency"),
    );
    cluster.describe(&mut report);
    let benches = &cluster.benches;
    let node_a = benches[0].clone();
    let node_c = benches[benches.len() - 1].clone();
    let mut connection = node_a.http(0);
    let worker = node_a
        .mint(&mut connection, Uuid::new_v4(), Role::Worker, None)
        .await?;
    let admin = node_a
        .mint(&mut connection, Uuid::new_v4(), Role::Admin, None)
        .await?;
    let streamer = Uuid::new_v4();
    let remote = options.sockets.max(1);
    let total_sockets = remote + options.local_sockets;
    let users: Vec<Uuid> = (0..total_sockets).map(|_| Uuid::new_v4()).collect();
    let tokens = node_a.mint_many(&users, Role::Viewer).await?;

    let stop = CancellationToken::new();
    let progress = Arc::new(Progress::default());
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let connect_deadline = started + Duration::from_secs(options.connect_seconds);
    let end = connect_deadline + Duration::from_secs(options.rounds as u64 * 30 + 60);
    let gates = [open_gate(&node_c), open_gate(&node_a)];
    let mut tasks = Vec::with_capacity(total_sockets);
    for index in 0..total_sockets {
        let group = usize::from(index >= remote);
        let bench = if group == 0 {
            node_c.clone()
        } else {
            node_a.clone()
        };
        let user = users[index].to_string();
        let path = realtime_path(streamer, &tokens[index]);
        let (stop, progress, counts, gate) = (
            stop.clone(),
            progress.clone(),
            counts.clone(),
            gates[group].clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut seen = Seen {
                group,
                user: user.clone(),
                ..Seen::default()
            };
            watch(
                &bench,
                gate,
                index,
                &path,
                &user,
                connect_deadline,
                end,
                &stop,
                &progress,
                &counts,
                &mut seen,
            )
            .await;
            seen
        }));
    }
    let ready = progress
        .wait_for_sockets(
            "cluster latency sockets subscribed",
            total_sockets,
            total_sockets,
            connect_deadline,
            &mut report,
        )
        .await;
    report.row(
        "sockets on node C (last) / on node A (first, same-node comparison)",
        format!("{remote} / {}", options.local_sockets),
    );
    report.row(
        "rounds × (create, votes, credits, notice, close)",
        format!(
            "{} × (1, {}, {}, 1, 1)",
            options.rounds, options.votes_per_round, options.credits_per_round
        ),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    let meter_before = cluster.samples();
    let rounds_started = Instant::now();
    let mut driver = Driver {
        connection,
        worker,
        admin: bearer(&admin)?,
        streamer,
        tokens: &tokens,
        users: &users,
        remote,
        actions: Vec::new(),
        failures: HashMap::new(),
        node_a: &node_a,
    };
    for round in 0..options.rounds {
        driver.round(round, options, &counts, ready).await?;
    }
    let rounds_wall = rounds_started.elapsed().as_secs_f64().max(1e-9);
    let nodes_cpu = crate::cluster::cpu_between(&meter_before, &cluster.samples());
    // Late frames still count: give the last ones a moment before the sockets stop.
    tokio::time::sleep(Duration::from_millis(options.update_interval_ms + 500)).await;
    stop.cancel();
    let mut seens = Vec::with_capacity(tasks.len());
    for task in tasks {
        seens.push(joined(task.await)?);
    }

    let measured = measure(&driver.actions, &seens);
    let interval = options.update_interval_ms as f64;
    for kind in Kind::ALL {
        let target = if kind == Kind::Updated {
            interval + 50.0
        } else {
            50.0
        };
        let name = kind.message_type();
        let remote = &measured[&(kind, 0)];
        report.row(
            format!("{name} on node C, from A's answer: p50 / p99 / max (ms)"),
            remote.from_answer.summary_ms(),
        );
        report.row(
            format!("{name} on node C, from the send to A: p50 / p99 / max (ms)"),
            remote.from_send.summary_ms(),
        );
        report.row(
            format!(
                "{name} on node C: samples / seen before A's answer (counted as 0) / never seen"
            ),
            format!(
                "{} / {} / {}",
                remote.from_answer.count(),
                remote.before_answer,
                remote.never_seen
            ),
        );
        if let Some(p99) = remote.from_answer.quantile(0.99) {
            let p99 = millis(p99);
            report.key(&format!("{}.p99_ms", kind.key()), format!("{p99:.1}"));
            if let Some(p50) = remote.from_answer.quantile(0.5) {
                report.key(
                    &format!("{}.p50_ms", kind.key()),
                    format!("{:.1}", millis(p50)),
                );
            }
            report.row(
                format!("{name} p99 target ({target:.0} ms)"),
                if p99 <= target && remote.never_seen == 0 {
                    "met".to_string()
                } else if p99 <= target {
                    format!("p99 met, but {} never seen", remote.never_seen)
                } else {
                    "MISSED".to_string()
                },
            );
        }
        report.key(&format!("{}.never_seen", kind.key()), remote.never_seen);
        if options.local_sockets > 0 {
            let local = &measured[&(kind, 1)];
            report.row(
                format!(
                    "{name} on node A itself, from A's answer: p50 / p99 / max (ms; never seen)"
                ),
                format!("{} ({})", local.from_answer.summary_ms(), local.never_seen),
            );
        }
    }
    report.row(
        "requests to node A that failed (kind: count)",
        if driver.failures.is_empty() {
            "none".to_string()
        } else {
            let mut failures: Vec<_> = driver.failures.iter().collect();
            failures.sort();
            failures
                .iter()
                .map(|(what, count)| format!("{what}: {count}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    report.row(
        "CPU of all nodes during the rounds (cores)",
        format!("{:.3}", nodes_cpu.as_secs_f64() / rounds_wall),
    );
    report.row(
        "sockets closed by the server (close codes)",
        progress.close_summary(),
    );
    Ok(report)
}

/// Opens one socket, subscribes it to its user's channel too, and records what it receives
/// until `end` or `stop`.
#[allow(clippy::too_many_arguments)]
async fn watch(
    bench: &Bench,
    gate: Arc<tokio::sync::Semaphore>,
    index: usize,
    path: &str,
    user: &str,
    connect_deadline: Instant,
    end: Instant,
    stop: &CancellationToken,
    progress: &Progress,
    counts: &Counts,
    seen: &mut Seen,
) {
    let permit = gate.acquire_owned().await;
    let mut opened = bench
        .open_subscribed(index, path, connect_deadline, stop, progress, |_, _| {})
        .await;
    let subscribed = match &mut opened {
        Some(socket) => {
            socket
                .subscribe(&[format!("user:{user}")], connect_deadline, stop)
                .await
        }
        None => false,
    };
    drop(permit);
    let (Some(mut socket), true) = (opened, subscribed) else {
        progress.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    progress.ready.fetch_add(1, Ordering::Relaxed);
    seen.opened = true;
    loop {
        let outcome = socket
            .receive(end, stop, |at, message| record(seen, counts, at, message))
            .await;
        match outcome {
            Received::Frame => continue,
            Received::Stopped => break,
            Received::Closed(code) => {
                progress.server_closed(code);
                return;
            }
        }
    }
    socket.close().await;
}

fn record(seen: &mut Seen, counts: &Counts, at: Instant, message: &crate::socket::WireMessage<'_>) {
    match message.kind.as_ref() {
        "EVENT_CREATED" => {
            if let Some(event) = message.event_id() {
                if seen.created.insert(event.to_owned(), at).is_none() {
                    counts.created.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        "EVENT_CLOSED" => {
            if let Some(event) = message.event_id() {
                if seen.closed.insert(event.to_owned(), at).is_none() {
                    counts.closed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        "EVENT_UPDATED" => {
            if let (Some(event), Some(totals)) = (message.event_id(), message.payload.totals) {
                seen.updates
                    .entry(event.to_owned())
                    .or_default()
                    .push((totals.0, at));
            }
        }
        "BALANCE_UPDATED" => {
            let own = message
                .payload
                .user_id
                .as_deref()
                .is_none_or(|user| user == seen.user);
            if let (true, Some(balance)) = (own, message.payload.balance) {
                seen.balances.push((balance, at));
            }
        }
        "SYSTEM_NOTICE" if message.payload.code.as_deref() == Some(NOTICE_CODE) => {
            if let Some(text) = message.payload.message.as_deref() {
                if seen.notices.insert(text.to_owned(), at).is_none() {
                    counts.notices.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        _ => {}
    }
}

/// Makes the changes on node A and remembers when each was sent and answered.
struct Driver<'a> {
    connection: HttpConnection,
    worker: String,
    admin: HeaderValue,
    streamer: Uuid,
    tokens: &'a [String],
    users: &'a [Uuid],
    remote: usize,
    actions: Vec<Action>,
    failures: HashMap<String, u64>,
    node_a: &'a Arc<Bench>,
}

impl Driver<'_> {
    async fn round(
        &mut self,
        round: usize,
        options: &Options,
        counts: &Counts,
        sockets: usize,
    ) -> anyhow::Result<()> {
        let expected = sockets * (round + 1);
        // A fresh event: EVENT_CREATED to every socket of the streamer's channel.
        let closes_at = chrono::Utc::now() + chrono::Duration::seconds(600);
        let sent = Instant::now();
        let event = self
            .node_a
            .create_event(
                &mut self.connection,
                &self.worker,
                self.streamer,
                closes_at,
                &format!("Cluster latency round {round}"),
            )
            .await?;
        let created = Timed {
            sent,
            answered: Instant::now(),
        };
        self.record(Kind::Created, event.to_string(), 0, &created);
        wait_until(
            "EVENT_CREATED seen",
            expected,
            Instant::now() + Duration::from_secs(5),
            || counts.created.load(Ordering::Relaxed),
        )
        .await;

        // Votes, each at a random moment of the update interval: EVENT_UPDATED to everyone,
        // BALANCE_UPDATED to the voter's socket on C.
        let path = format!("/api/events/{event}/votes");
        for vote in 0..options.votes_per_round {
            pause(50, options.update_interval_ms + 150).await;
            let index = (round * options.votes_per_round + vote) % self.remote;
            let body = serde_json::to_vec(&VoteRequest {
                option_id: if vote % 2 == 0 { "a" } else { "b" }.into(),
                votes: 1,
            })?;
            let key = HeaderValue::from_str(&Uuid::new_v4().to_string())?;
            let Some((answer, timed)) = self
                .timed(
                    "vote",
                    &path,
                    bearer(&self.tokens[index])?,
                    Some((HeaderName::from_static("idempotency-key"), key)),
                    Some(body),
                )
                .await
            else {
                continue;
            };
            let parsed: livevote_protocol::VoteResponse = serde_json::from_slice(&answer)?;
            let sum: u64 = parsed.totals.values().sum();
            self.record(
                Kind::Updated,
                event.to_string(),
                i64::try_from(sum)?,
                &timed,
            );
            self.record(
                Kind::Balance,
                self.users[index].to_string(),
                parsed.balance,
                &timed,
            );
        }
        // Let the last coalesced flush go out before the credits.
        tokio::time::sleep(Duration::from_millis(options.update_interval_ms + 200)).await;

        for credit in 0..options.credits_per_round {
            pause(50, 200).await;
            // Users other than this round's voters, so one change at a time reaches a socket.
            let index =
                (round * options.credits_per_round + credit + self.remote / 2) % self.remote;
            let body = serde_json::to_vec(&CreditRequest {
                user_id: self.users[index].to_string(),
                amount: 1,
                reason: "cluster latency".into(),
            })?;
            let admin = self.admin.clone();
            let Some((answer, timed)) = self
                .timed("credit", "/api/ledger/credit", admin, None, Some(body))
                .await
            else {
                continue;
            };
            let parsed: livevote_protocol::BalanceResponse = serde_json::from_slice(&answer)?;
            self.record(
                Kind::Balance,
                self.users[index].to_string(),
                parsed.balance,
                &timed,
            );
        }

        // A notice to the streamer's channel.
        pause(50, 200).await;
        let message = format!("cluster latency round {round}");
        let body = serde_json::to_vec(&NoticeRequest {
            channel: format!("streamer:{}", self.streamer),
            code: NOTICE_CODE.into(),
            message: message.clone(),
        })?;
        let admin = self.admin.clone();
        if let Some((_, timed)) = self
            .timed("notice", "/api/notices", admin, None, Some(body))
            .await
        {
            self.record(Kind::Notice, message, 0, &timed);
        }
        wait_until(
            "SYSTEM_NOTICE seen",
            expected,
            Instant::now() + Duration::from_secs(5),
            || counts.notices.load(Ordering::Relaxed),
        )
        .await;

        // The close: EVENT_CLOSED to everyone.
        pause(50, 200).await;
        let worker = bearer(&self.worker)?;
        let close = format!("/api/events/{event}/close");
        if let Some((_, timed)) = self.timed("close", &close, worker, None, None).await {
            self.record(Kind::Closed, event.to_string(), 0, &timed);
        }
        wait_until(
            "EVENT_CLOSED seen",
            expected,
            Instant::now() + Duration::from_secs(5),
            || counts.closed.load(Ordering::Relaxed),
        )
        .await;
        Ok(())
    }

    /// POSTs `body` to `path` on node A: the 2xx answer's body and when the request was sent
    /// and answered; a failure is counted under `what` (see [`Driver::accepted`]) and gives
    /// `None`.
    async fn timed(
        &mut self,
        what: &str,
        path: &str,
        authorization: HeaderValue,
        header: Option<(HeaderName, HeaderValue)>,
        body: Option<Vec<u8>>,
    ) -> Option<(bytes::Bytes, Timed)> {
        let sent = Instant::now();
        let answer = self
            .connection
            .request_with_headers(
                hyper::Method::POST,
                path,
                Some(authorization),
                header,
                body.map(bytes::Bytes::from),
            )
            .await;
        let answered = Instant::now();
        let body = self.accepted(what, answer)?;
        Some((body, Timed { sent, answered }))
    }

    fn record(&mut self, kind: Kind, subject: String, value: i64, timed: &Timed) {
        self.actions.push(Action {
            kind,
            subject,
            value,
            sent: timed.sent,
            answered: timed.answered,
        });
    }

    /// The body of a 2xx answer; anything else is counted under `what` and gives `None`.
    fn accepted(
        &mut self,
        what: &str,
        answer: anyhow::Result<crate::http::Answer>,
    ) -> Option<bytes::Bytes> {
        match answer {
            Ok(answer) if answer.status.is_success() => Some(answer.body),
            Ok(answer) => {
                *self
                    .failures
                    .entry(format!("{what} {}", answer.status.as_u16()))
                    .or_default() += 1;
                None
            }
            Err(_) => {
                *self.failures.entry(format!("{what} error")).or_default() += 1;
                None
            }
        }
    }
}

/// Sleeps a random time from `low` to `high` ms, so changes land at random moments of the
/// nodes' timers.
async fn pause(low: u64, high: u64) {
    let millis = rand::thread_rng().gen_range(low..high.max(low + 1));
    tokio::time::sleep(Duration::from_millis(millis)).await;
}

/// Matches every action with what each socket it should reach saw.
fn measure(actions: &[Action], seens: &[Seen]) -> HashMap<(Kind, usize), Measured> {
    let mut measured: HashMap<(Kind, usize), Measured> = HashMap::new();
    for kind in Kind::ALL {
        for group in 0..2 {
            measured.insert((kind, group), Measured::default());
        }
    }
    for seen in seens.iter().filter(|seen| seen.opened) {
        for action in actions {
            let arrival = match action.kind {
                Kind::Created => Some(seen.created.get(&action.subject).copied()),
                Kind::Closed => Some(seen.closed.get(&action.subject).copied()),
                Kind::Notice => Some(seen.notices.get(&action.subject).copied()),
                Kind::Updated => Some(seen.updates.get(&action.subject).and_then(|updates| {
                    updates
                        .iter()
                        .find(|(sum, _)| i64::try_from(*sum).unwrap_or(i64::MAX) >= action.value)
                        .map(|&(_, at)| at)
                })),
                // Only the user's own socket gets its balance.
                Kind::Balance if action.subject == seen.user => Some(
                    seen.balances
                        .iter()
                        .find(|&&(balance, at)| balance == action.value && at >= action.sent)
                        .map(|&(_, at)| at),
                ),
                Kind::Balance => None,
            };
            let Some(arrival) = arrival else { continue };
            let Some(entry) = measured.get_mut(&(action.kind, seen.group)) else {
                continue;
            };
            match arrival {
                Some(at) => {
                    entry
                        .from_send
                        .record(at.saturating_duration_since(action.sent));
                    if at < action.answered {
                        entry.before_answer += 1;
                    }
                    entry
                        .from_answer
                        .record(at.saturating_duration_since(action.answered));
                }
                None => entry.never_seen += 1,
            }
        }
    }
    measured
}
