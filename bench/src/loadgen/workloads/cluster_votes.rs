//! Cluster votes (issue 11): votes with Idempotency-Keys on one hot event, spread over several
//! nodes that share one PostgreSQL database, at rising offered rates (open loop). Measures
//! durable votes per second, vote latency, what the nodes, the load generator and the whole
//! machine spent, and ends with an exact audit: totals = Σ ledger votes, each balance = Σ its
//! entries, votes answered 200 = votes in the ledger (in all and per voter), and a vote sent
//! again with its key to another node gets the first answer and changes nothing.
//! During the step at the target rate, events close under the storm (`cluster_closes`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::header::{HeaderName, HeaderValue};
use livevote_protocol::{Role, VoteRequest};
use uuid::Uuid;

use super::cluster_closes;
use crate::cluster::{cpu_between, machine_busy, sample_pids, Audit, Cluster};
use crate::context::Bench;
use crate::histogram::{millis, Histogram};
use crate::http::bearer;
use crate::report::Report;
use crate::system::own_cpu;

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Server counters read before and after each step: the store's queries (how well the
/// writers batch), and the broker's resyncs and gaps (how often a node reloaded from Postgres
/// because it missed something).
const STEP_METRICS: [&str; 3] = [
    "livevote_store_queries_total",
    "livevote_broker_resyncs_total",
    "livevote_broker_gaps_total",
];

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Nodes sharing the database and the Redis prefix.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Distinct voters (one token each); vote k of a step is cast by voter k mod voters.
    #[arg(long, default_value_t = 10_000)]
    voters: usize,
    /// Offered vote rates per second, one step each (open loop, one vote per request).
    #[arg(long, value_delimiter = ',', default_value = "2500,5000,10000,20000")]
    rates: Vec<u32>,
    /// Length of each step.
    #[arg(long, default_value_t = 8)]
    step_seconds: u64,
    /// Keep-alive HTTP connections casting votes, per node (the most requests in flight on it).
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// Every Nth vote, once accepted, is sent again with the same key and body to the next node; it
    /// must get the first answer and change nothing (0: never).
    #[arg(long, default_value_t = 50)]
    replay_every: u64,
    /// The offered rate whose step the targets are judged at.
    #[arg(long, default_value_t = 10_000)]
    target_rate: u32,
    /// Events closing during the target rate's step, and the sockets watching them.
    #[command(flatten)]
    closes: cluster_closes::Options,
}

/// What one voting connection did in one step.
#[derive(Debug, Default)]
struct VoteLog {
    sent: u64,
    accepted: u64,
    statuses: HashMap<String, u64>,
    per_voter: HashMap<usize, u64>,
    last_answer: Option<Instant>,
    /// The slowest answer (µs) of the votes scheduled in each second of the step: a tail made
    /// of one stall shows as one bad second, a steady queue as every second.
    slowest_by_second: Vec<u64>,
    replay_same: u64,
    replay_different: u64,
    replay_failed: u64,
}

impl VoteLog {
    fn absorb(&mut self, other: VoteLog) {
        self.sent += other.sent;
        self.accepted += other.accepted;
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        if self.slowest_by_second.len() < other.slowest_by_second.len() {
            self.slowest_by_second
                .resize(other.slowest_by_second.len(), 0);
        }
        for (slowest, theirs) in self
            .slowest_by_second
            .iter_mut()
            .zip(&other.slowest_by_second)
        {
            *slowest = (*slowest).max(*theirs);
        }
        for (voter, count) in other.per_voter {
            *self.per_voter.entry(voter).or_default() += count;
        }
        self.last_answer = self.last_answer.max(other.last_answer);
        self.replay_same += other.replay_same;
        self.replay_different += other.replay_different;
        self.replay_failed += other.replay_failed;
    }
}

/// The fixed inputs of every vote request of a run.
struct Plan {
    path: String,
    authorizations: Vec<HeaderValue>,
    bodies: [bytes::Bytes; 2],
}

pub async fn run(cluster: &Cluster, options: &Options, label: &str) -> anyhow::Result<Report> {
    let mut report = Report::new(
        format!("Cluster votes on one hot event — {label}"),
        format!("{label}.cluster_votes"),
    );
    cluster.describe(&mut report);
    let benches = &cluster.benches;
    let first = &benches[0];
    let mut connection = first.http(0);
    let worker = first
        .mint(&mut connection, Uuid::new_v4(), Role::Worker, None)
        .await?;
    let streamer = Uuid::new_v4();
    let run_seconds = options.step_seconds * options.rates.len() as u64;
    let closes_at = chrono::Utc::now() + chrono::Duration::seconds((run_seconds + 3_600) as i64);
    let event = first
        .create_event(
            &mut connection,
            &worker,
            streamer,
            closes_at,
            "Cluster hot event",
        )
        .await?;
    let voters: Vec<Uuid> = (0..options.voters.max(1)).map(|_| Uuid::new_v4()).collect();
    let tokens = first.mint_many(&voters, Role::Viewer).await?;
    // Each voter's first request makes it known to the ledger (its initial credit); done
    // before the steps so that they measure votes only.
    let initial = warm_up(benches, &tokens).await?;
    let votes_at_most: u64 = options
        .rates
        .iter()
        .map(|rate| u64::from(*rate) * options.step_seconds)
        .sum::<u64>()
        .div_ceil(voters.len() as u64);
    let poorest = initial.iter().copied().min().unwrap_or(0);
    if poorest < i64::try_from(votes_at_most)? {
        anyhow::bail!("a voter starts with {poorest} but may cast {votes_at_most} votes: give the nodes --initial-balance {votes_at_most} or more");
    }
    report.row(
        "hot event / voters / vote connections per node",
        format!(
            "1 (cost 1 per vote) / {} / {}",
            voters.len(),
            options.connections
        ),
    );
    report.row(
        "voters' balance before the steps (from --initial-balance)",
        poorest.to_string(),
    );
    let plan = Arc::new(Plan {
        path: format!("/api/events/{event}/votes"),
        authorizations: tokens
            .iter()
            .map(|token| bearer(token))
            .collect::<anyhow::Result<_>>()?,
        bodies: ["a", "b"].map(|option| {
            bytes::Bytes::from(
                serde_json::to_vec(&VoteRequest {
                    option_id: option.into(),
                    votes: 1,
                })
                .unwrap_or_default(),
            )
        }),
    });
    let run_id = Uuid::new_v4().simple().to_string();

    let mut total = VoteLog::default();
    let mut best_rate = 0.0f64;
    for (step, &rate) in options.rates.iter().enumerate() {
        let number = step + 1;
        eprintln!("cluster votes: step {number}, {rate} votes/s offered");
        // Planned to close from 4 s from now (after they are created and the step has begun)
        // to 1 s before the step ends, while its votes are still arriving.
        let closing = if rate == options.target_rate && options.closes.closing_events > 0 {
            Some(
                cluster_closes::prepare(
                    cluster,
                    &options.closes,
                    &worker,
                    Duration::from_secs(4),
                    Duration::from_secs(options.step_seconds.saturating_sub(3).max(1)),
                )
                .await?,
            )
        } else {
            None
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        let from_send = Arc::new(Histogram::default());
        let from_schedule = Arc::new(Histogram::default());
        let backends = cluster.postgres_backends().await;
        let mut metrics_before = Vec::new();
        for name in STEP_METRICS {
            metrics_before.push(cluster.metric_sum(name).await);
        }
        let backends_before = sample_pids(&backends);
        let nodes_before = cluster.samples();
        let machine_before = machine_busy();
        let own_before = own_cpu();
        let start = Instant::now();
        let log = step_votes(
            benches,
            options,
            &plan,
            rate,
            &format!("{run_id}-{number}"),
            start,
            &from_send,
            &from_schedule,
        )
        .await?;
        let wall = start.elapsed().as_secs_f64().max(1e-9);
        let nodes_after = cluster.samples();
        let backends_after = sample_pids(&backends);
        let machine_after = machine_busy();
        let own = own_cpu().saturating_sub(own_before);
        let mut metric_changes = Vec::new();
        for (name, before) in STEP_METRICS.iter().zip(&metrics_before) {
            let after = cluster.metric_sum(name).await;
            metric_changes.push(match (before, after) {
                (Some(before), Some(after)) => Some(after - before),
                _ => None,
            });
        }

        let span = log
            .last_answer
            .map_or(1e-9, |at| at.duration_since(start).as_secs_f64().max(1e-9));
        let accepted_rate = log.accepted as f64 / span;
        best_rate = best_rate.max(accepted_rate);
        let key = format!("step{rate}");
        report.row(
            format!("step {number}: votes/s offered / sent / accepted (200)"),
            format!("{rate} / {} / {}", log.sent, log.accepted),
        );
        report.metric(
            format!("step {number}: durable votes accepted per second (Postgres, first send to last answer)"),
            &format!("{key}.accepted_per_second"),
            accepted_rate,
            0,
        );
        report.row(
            format!("step {number}: answers by status"),
            status_summary(&log.statuses),
        );
        report.row(
            format!("step {number}: latency from the send p50 / p99 / max (ms)"),
            from_send.summary_ms(),
        );
        report.row(
            format!("step {number}: slowest answer of the votes scheduled in each second (ms)"),
            log.slowest_by_second
                .iter()
                .map(|micros| format!("{:.0}", *micros as f64 / 1000.0))
                .collect::<Vec<_>>()
                .join(" "),
        );
        report.row(
            format!("step {number}: latency from the scheduled send p50 / p99 / max (ms, includes waiting for a free connection)"),
            from_schedule.summary_ms(),
        );
        if let (Some(p50), Some(p99)) = (from_send.quantile(0.5), from_send.quantile(0.99)) {
            report.key(&format!("{key}.p50_ms"), format!("{:.1}", millis(p50)));
            report.key(&format!("{key}.p99_ms"), format!("{:.1}", millis(p99)));
            if rate == options.target_rate {
                report.key("target_p99_ms", format!("{:.1}", millis(p99)));
                report.key("target_accepted_per_second", format!("{accepted_rate:.0}"));
            }
        }
        let per_node: Vec<String> = nodes_before
            .iter()
            .zip(&nodes_after)
            .map(|(before, after)| match (before, after) {
                (Some(before), Some(after)) => format!(
                    "{:.2}",
                    after.cpu().saturating_sub(before.cpu()).as_secs_f64() / wall
                ),
                _ => "?".into(),
            })
            .collect();
        let nodes_cores = cpu_between(&nodes_before, &nodes_after).as_secs_f64() / wall;
        report.row(
            format!("step {number}: CPU of all nodes / each node (cores)"),
            format!("{nodes_cores:.2} / {}", per_node.join(", ")),
        );
        report.key(&format!("{key}.nodes_cores"), format!("{nodes_cores:.3}"));
        report.row(
            format!(
                "step {number}: CPU of the run database's Postgres backends (cores; {} backends)",
                backends.len()
            ),
            format!(
                "{:.2}",
                cpu_between(&backends_before, &backends_after).as_secs_f64() / wall
            ),
        );
        if let Some(Some(queries)) = metric_changes.first() {
            report.row(
                format!("step {number}: store queries (reads and writes) per accepted vote (all nodes, from /metrics)"),
                format!("{:.2}", queries / log.accepted.max(1) as f64),
            );
        }
        report.row(
            format!("step {number}: broker reloads from Postgres (one per node every 5 s, more after a gap) / numbering gaps seen (all nodes, from /metrics)"),
            metric_changes
                .iter()
                .skip(1)
                // A counter nothing has touched yet is not exported at all.
                .map(|change| change.map_or("none".into(), |change| format!("{change:.0}")))
                .collect::<Vec<_>>()
                .join(" / "),
        );
        report.row(
            format!("step {number}: CPU of the load generator (cores)"),
            format!("{:.2}", own.as_secs_f64() / wall),
        );
        if let (Some(before), Some(after)) = (machine_before, machine_after) {
            report.row(
                format!("step {number}: busy CPU of the whole machine (cores; Postgres, Redis and any other work included)"),
                format!("{:.2}", after.saturating_sub(before).as_secs_f64() / wall),
            );
        }
        total.absorb(log);
        if let Some(closing) = closing {
            cluster_closes::finish(cluster, closing, &mut report).await?;
        }
    }
    report.metric(
        "most durable votes/s accepted in one step",
        "best_accepted_per_second",
        best_rate,
        0,
    );

    // The audit. Let the nodes' last writes and broadcasts settle first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let last = &benches[benches.len() - 1];
    let mut reader = last.http(1);
    let view = last.get_event(&mut reader, &worker, event).await?;
    let totals_sum: u64 = view.totals.values().sum();
    let audit = Audit::run(&cluster.database).await?;
    let ledger_votes = audit.votes_per_event.get(&event).copied().unwrap_or(0);
    report.row(
        "audit: votes answered 200 / Σ ledger votes of the event / the event's totals (read on the last node)",
        format!("{} / {ledger_votes} / {totals_sum}", total.accepted),
    );
    report.row(
        "audit: vote entries in the ledger / vote idempotency keys stored",
        format!("{} / {}", audit.vote_entries, audit.vote_keys),
    );
    let mut voters_off = 0;
    let mut balances_off = 0;
    for (index, voter) in voters.iter().enumerate() {
        let answered = i64::try_from(total.per_voter.get(&index).copied().unwrap_or(0))?;
        let (ledger, sum) = audit.per_user.get(voter).copied().unwrap_or((0, 0));
        if ledger != answered {
            voters_off += 1;
        }
        if sum != initial[index] - answered {
            balances_off += 1;
        }
    }
    report.row(
        "audit: voters whose ledger votes ≠ their votes answered 200",
        format!("{voters_off} / {}", voters.len()),
    );
    report.row(
        "audit: voters whose Σ entries ≠ starting balance − votes answered 200",
        format!("{balances_off} / {}", voters.len()),
    );
    report.row(
        "replays (same key and body, next node): first answer again / another answer / failed",
        format!(
            "{} / {} / {}",
            total.replay_same, total.replay_different, total.replay_failed
        ),
    );
    let invariants = audit.invariant_rows(&mut report);
    let accepted = i64::try_from(total.accepted)?;
    let exact = invariants
        && ledger_votes == accepted
        && u64::try_from(ledger_votes).ok() == Some(totals_sum)
        && audit.vote_entries == accepted
        && audit.vote_keys == accepted
        && voters_off == 0
        && balances_off == 0
        && total.replay_different == 0
        && total.replay_failed == 0;
    report.row("audit exact", if exact { "yes" } else { "NO" }.to_string());
    report.key("audit_exact", u8::from(exact));
    Ok(report)
}

/// One step: `rate` votes per second for `step_seconds` on an open-loop schedule, taken by
/// `connections` workers per node from one shared counter (a slower node takes fewer).
#[allow(clippy::too_many_arguments)]
async fn step_votes(
    benches: &[Arc<Bench>],
    options: &Options,
    plan: &Arc<Plan>,
    rate: u32,
    key_prefix: &str,
    start: Instant,
    from_send: &Arc<Histogram>,
    from_schedule: &Arc<Histogram>,
) -> anyhow::Result<VoteLog> {
    let total = u64::from(rate) * options.step_seconds;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let give_up = start + Duration::from_secs(options.step_seconds + 15);
    let next = Arc::new(AtomicU64::new(0));
    let voters = plan.authorizations.len() as u64;
    let mut workers = Vec::new();
    for (node, bench) in benches.iter().enumerate() {
        let replay_bench = benches[(node + 1) % benches.len()].clone();
        for worker in 0..options.connections.max(1) {
            let (bench, replay_bench, next, plan) = (
                bench.clone(),
                replay_bench.clone(),
                next.clone(),
                plan.clone(),
            );
            let (from_send, from_schedule) = (from_send.clone(), from_schedule.clone());
            let key_prefix = key_prefix.to_owned();
            let replay_every = options.replay_every;
            workers.push(tokio::spawn(async move {
                let mut connection = bench.http(worker);
                let mut replay_connection = replay_bench.http(worker + 1);
                let mut log = VoteLog::default();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= total || Instant::now() >= give_up {
                        break;
                    }
                    let scheduled = start + interval.mul_f64(index as f64);
                    tokio::time::sleep_until(scheduled.into()).await;
                    let voter = (index % voters) as usize;
                    let key = HeaderValue::from_str(&format!("{key_prefix}-{index}"))?;
                    let body = plan.bodies[(index % 2) as usize].clone();
                    log.sent += 1;
                    let sent = Instant::now();
                    let answer = connection
                        .request_with_headers(
                            hyper::Method::POST,
                            &plan.path,
                            Some(plan.authorizations[voter].clone()),
                            Some((IDEMPOTENCY_KEY, key.clone())),
                            Some(body.clone()),
                        )
                        .await;
                    let at = Instant::now();
                    log.last_answer = Some(at);
                    from_send.record(at - sent);
                    from_schedule.record(at.saturating_duration_since(scheduled));
                    let second = (index / u64::from(rate.max(1))) as usize;
                    if log.slowest_by_second.len() <= second {
                        log.slowest_by_second.resize(second + 1, 0);
                    }
                    let micros = u64::try_from((at - sent).as_micros()).unwrap_or(u64::MAX);
                    log.slowest_by_second[second] = log.slowest_by_second[second].max(micros);
                    let answer = match answer {
                        Ok(answer) => answer,
                        Err(_) => {
                            *log.statuses.entry("error".into()).or_default() += 1;
                            continue;
                        }
                    };
                    *log.statuses
                        .entry(answer.status.as_u16().to_string())
                        .or_default() += 1;
                    if answer.status != hyper::StatusCode::OK {
                        continue;
                    }
                    log.accepted += 1;
                    *log.per_voter.entry(voter).or_default() += 1;
                    if replay_every == 0 || index % replay_every != 0 {
                        continue;
                    }
                    let replay = replay_connection
                        .request_with_headers(
                            hyper::Method::POST,
                            &plan.path,
                            Some(plan.authorizations[voter].clone()),
                            Some((IDEMPOTENCY_KEY, key)),
                            Some(body),
                        )
                        .await;
                    match replay {
                        Ok(again) if again.status == hyper::StatusCode::OK => {
                            let first: serde_json::Value =
                                serde_json::from_slice(&answer.body).unwrap_or_default();
                            let second: serde_json::Value =
                                serde_json::from_slice(&again.body).unwrap_or_default();
                            if first == second && !first.is_null() {
                                log.replay_same += 1;
                            } else {
                                log.replay_different += 1;
                            }
                        }
                        _ => log.replay_failed += 1,
                    }
                }
                anyhow::Ok(log)
            }));
        }
    }
    let mut merged = VoteLog::default();
    for worker in workers {
        merged.absorb(worker.await??);
    }
    Ok(merged)
}

/// `GET /api/balance` once per voter, spread over the nodes (16 connections each): makes every
/// voter known to the ledger and returns each starting balance.
async fn warm_up(benches: &[Arc<Bench>], tokens: &[String]) -> anyhow::Result<Vec<i64>> {
    let tokens = Arc::new(tokens.to_vec());
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for bench in benches {
        for worker in 0..16 {
            let (bench, tokens, next) = (bench.clone(), tokens.clone(), next.clone());
            workers.push(tokio::spawn(async move {
                let mut connection = bench.http(worker);
                let mut balances = Vec::new();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(token) = tokens.get(index) else {
                        break;
                    };
                    balances.push((index, bench.balance(&mut connection, token).await?));
                }
                anyhow::Ok(balances)
            }));
        }
    }
    let mut balances = vec![0; tokens.len()];
    for worker in workers {
        for (index, balance) in worker.await?? {
            balances[index] = balance;
        }
    }
    Ok(balances)
}

/// "200×1000, 503×2".
pub fn status_summary(statuses: &HashMap<String, u64>) -> String {
    let mut sorted: Vec<_> = statuses.iter().collect();
    sorted.sort();
    if sorted.is_empty() {
        return "none".into();
    }
    sorted
        .iter()
        .map(|(status, count)| format!("{status}×{count}"))
        .collect::<Vec<_>>()
        .join(", ")
}
