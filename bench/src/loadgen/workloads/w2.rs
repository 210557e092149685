//! W2 vote storm: sockets watch one open event per streamer while votes pour in over HTTP.
//! Measures accepted votes per second (the durable SQLite ledger's throughput), EVENT_UPDATED
//! frames per socket per second (coalescing), the delay from a vote's acceptance to a socket
//! seeing totals that include it, and that final totals equal the votes and the ledger.
//!
//! tidy: long file: set-up, load and the final audit of one workload read top to bottom; the
//! audit's SQL depends on exactly what the load did.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::header::HeaderValue;
use livevote_protocol::{Role, VoteRequest};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::context::{fit_sockets, joined, open_gate, realtime_path, Bench, Progress};
use crate::histogram::{millis, Histogram};
use crate::http::bearer;
use crate::report::Report;
use crate::socket::{Received, TotalsSum};
use crate::workloads::usage_rows;
use crate::workloads::w1::viewer_tokens;

/// The part of a vote's answer the storm reads: the sum of the totals, without building a map.
#[derive(Debug, serde::Deserialize)]
struct VoteAnswer {
    totals: TotalsSum,
}

/// The server's count of sockets woken to send coalesced EVENT_UPDATED (at most one per socket
/// per update interval).
const COALESCED_WAKES_METRIC: &str = "livevote_coalesced_update_wakes_total";

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Sockets watching the events.
    #[arg(long, default_value_t = 20_000)]
    sockets: usize,
    /// Streamers, each with one open event (socket i watches streamer i mod streamers).
    #[arg(long, default_value_t = 10)]
    streamers: usize,
    /// Distinct viewer users whose tokens the sockets share.
    #[arg(long, default_value_t = 1_000)]
    users: usize,
    /// Distinct users casting votes (each gets rate / voters votes per second).
    #[arg(long, default_value_t = 1_000)]
    voters: usize,
    /// Vote requests per second offered (open loop), one vote each.
    #[arg(long, default_value_t = 20_000)]
    rate: u32,
    /// Length of the storm.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Keep-alive HTTP connections casting votes (the most requests in flight). Many viewers
    /// voting at once means many requests waiting on the same group commit.
    #[arg(long, default_value_t = 512)]
    connections: usize,
    /// Sockets that record every update for the latency measurement (the first N).
    #[arg(long, default_value_t = 1_000)]
    probes: usize,
    /// The server's --update-interval, for the p99 target (interval + 25 ms).
    #[arg(long, default_value_t = 250)]
    update_interval_ms: u64,
    /// Time allowed for opening every socket.
    #[arg(long, default_value_t = 300)]
    connect_seconds: u64,
}

/// What one socket saw during the storm.
#[derive(Debug, Default)]
struct Watch {
    /// Frames holding at least one EVENT_UPDATED, from the storm's start.
    update_frames: u64,
    first_update: Option<Instant>,
    last_update: Option<Instant>,
    /// Shortest time between two update frames.
    min_gap: Option<Duration>,
    /// Times five update frames arrived within one second.
    bursts_over_four: u64,
    /// The newest totals sum of its event.
    last_sum: u64,
    /// Updates whose totals were lower than an earlier one.
    went_backwards: u64,
    /// (totals sum, receive time) of every update, for probe sockets only.
    probe: Option<Vec<(u64, Instant)>>,
    event: usize,
    opened: bool,
    /// The last four update frames' times, oldest at `recent_next`.
    recent: [Option<Instant>; 4],
    recent_next: usize,
}

/// What one voting connection did.
#[derive(Debug, Default)]
struct VoteLog {
    /// (event index, totals sum in the answer, time the answer arrived) per accepted vote.
    accepted: Vec<(usize, u64, Instant)>,
    per_user: BTreeMap<usize, u64>,
    statuses: BTreeMap<String, u64>,
    sent: u64,
    last_answer: Option<Instant>,
}

pub async fn run(bench: &Arc<Bench>, options: &Options, label: &str) -> anyhow::Result<Report> {
    bench.require_livevote("W2")?;
    let mut report = Report::new(format!("W2 vote storm — {label}"), format!("{label}.w2"));
    let (sockets, fitted) = fit_sockets(bench, options.sockets + options.connections);
    let sockets = sockets
        .saturating_sub(options.connections)
        .min(options.sockets);
    if let Some(note) = fitted {
        report.note(note);
    }
    let streamers: Vec<Uuid> = (0..options.streamers.max(1))
        .map(|_| Uuid::new_v4())
        .collect();
    let mut connection = bench.http(0);
    let worker = bench
        .mint(&mut connection, Uuid::new_v4(), Role::Worker, None)
        .await?;
    let admin = bench
        .mint(&mut connection, Uuid::new_v4(), Role::Admin, None)
        .await?;
    let closes_at = chrono::Utc::now()
        + chrono::Duration::seconds((options.connect_seconds + options.seconds + 600) as i64);
    let mut events = Vec::new();
    for (index, streamer) in streamers.iter().enumerate() {
        events.push(
            bench
                .create_event(
                    &mut connection,
                    &worker,
                    *streamer,
                    closes_at,
                    &format!("W2 storm {index}"),
                )
                .await?,
        );
    }
    let event_names: Arc<Vec<String>> = Arc::new(events.iter().map(Uuid::to_string).collect());
    let tokens = viewer_tokens(bench, options.users).await?;
    let voters: Vec<Uuid> = (0..options.voters.max(1)).map(|_| Uuid::new_v4()).collect();
    let voter_tokens = Arc::new(bench.mint_many(&voters, Role::Viewer).await?);
    let credited = credit_all(bench, &admin, &voters).await?;

    // Sockets: each watches its streamer's event; the first `probes` keep every update.
    let storm_start = Arc::new(AtomicU64::new(u64::MAX));
    let stop = CancellationToken::new();
    let progress = Arc::new(Progress::default());
    let gate = open_gate(bench);
    let started = Instant::now();
    let connect_deadline = started + Duration::from_secs(options.connect_seconds);
    let end = connect_deadline + Duration::from_secs(options.seconds + 120);
    let mut tasks = Vec::with_capacity(sockets);
    for index in 0..sockets {
        let event = index % streamers.len();
        let path = realtime_path(streamers[event], &tokens[index % tokens.len()]);
        let probe = index < options.probes;
        let (bench, stop, progress, gate, storm_start, event_names) = (
            bench.clone(),
            stop.clone(),
            progress.clone(),
            gate.clone(),
            storm_start.clone(),
            event_names.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut watch = Watch {
                event,
                probe: probe.then(Vec::new),
                ..Watch::default()
            };
            let own_event = event_names[event].as_str();
            let Some(mut socket) = bench
                .open_through_gate(gate, index, &path, connect_deadline, &stop, &progress)
                .await
            else {
                return watch;
            };
            watch.opened = true;
            loop {
                let mut update_at = None;
                let outcome = socket
                    .receive(end, &stop, |at, message| {
                        if message.kind != "EVENT_UPDATED" {
                            return;
                        }
                        update_at = Some(at);
                        if message.event_id() != Some(own_event) {
                            return;
                        }
                        let Some(sum) = message.payload.totals.map(|totals| totals.0) else {
                            return;
                        };
                        if sum < watch.last_sum {
                            watch.went_backwards += 1;
                            return;
                        }
                        watch.last_sum = sum;
                        let storm = storm_start.load(Ordering::Relaxed);
                        if let Some(probe) = &mut watch.probe {
                            if storm != u64::MAX {
                                probe.push((sum, at));
                            }
                        }
                    })
                    .await;
                if let Some(at) = update_at {
                    let storm = storm_start.load(Ordering::Relaxed);
                    if storm != u64::MAX
                        && at.duration_since(bench.epoch).as_nanos() as u64 >= storm
                    {
                        note_update_frame(&mut watch, at);
                    }
                }
                match outcome {
                    Received::Frame => continue,
                    Received::Stopped => break,
                    Received::Closed(code) => {
                        progress.server_closed(code);
                        return watch;
                    }
                }
            }
            socket.close().await;
            watch
        }));
    }
    let ready = progress
        .wait_for_sockets(
            "W2 sockets subscribed",
            sockets,
            options.sockets,
            connect_deadline,
            &mut report,
        )
        .await;
    report.row(
        "streamers (one open event each) / voters / vote connections",
        format!(
            "{} / {} / {}",
            streamers.len(),
            voters.len(),
            options.connections
        ),
    );
    report.key("sockets", ready);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The storm.
    let wakes_before = bench
        .metric(&mut connection, COALESCED_WAKES_METRIC)
        .await?;
    let meter = bench.meter();
    let storm_begin = Instant::now();
    storm_start.store(bench.now_nanos(), Ordering::Relaxed);
    let logs = storm(bench, options, &event_names, &voter_tokens, storm_begin).await?;
    let storm_usage = meter.finish();
    let wakes_after = bench
        .metric(&mut connection, COALESCED_WAKES_METRIC)
        .await?;
    // Let the last coalesced flush reach everyone before checking final totals.
    tokio::time::sleep(Duration::from_millis(
        options.update_interval_ms * 2 + 1_000,
    ))
    .await;
    let mut finals = Vec::new();
    for event in &events {
        let view = bench.get_event(&mut connection, &worker, *event).await?;
        finals.push(view.totals.values().sum::<u64>());
    }
    stop.cancel();
    let mut watches = Vec::with_capacity(tasks.len());
    for task in tasks {
        watches.push(joined(task.await)?);
    }

    // Votes.
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut per_user: BTreeMap<usize, u64> = BTreeMap::new();
    let mut accepted_per_event = vec![0u64; events.len()];
    let mut votes_by_event: Vec<Vec<(u64, Instant)>> = vec![Vec::new(); events.len()];
    let mut sent = 0;
    let mut last_answer = storm_begin;
    for log in &logs {
        sent += log.sent;
        for (status, count) in &log.statuses {
            *statuses.entry(status.clone()).or_default() += count;
        }
        for (user, count) in &log.per_user {
            *per_user.entry(*user).or_default() += count;
        }
        for &(event, sum, at) in &log.accepted {
            accepted_per_event[event] += 1;
            votes_by_event[event].push((sum, at));
        }
        if let Some(at) = log.last_answer {
            last_answer = last_answer.max(at);
        }
    }
    let accepted: u64 = accepted_per_event.iter().sum();
    let vote_span = last_answer
        .duration_since(storm_begin)
        .as_secs_f64()
        .max(1e-9);
    report.row(
        "votes offered / sent / accepted",
        format!(
            "{} / {sent} / {accepted}",
            u64::from(options.rate) * options.seconds
        ),
    );
    report.metric(
        "votes offered per second",
        "offered_per_second",
        f64::from(options.rate),
        0,
    );
    report.metric(
        "votes accepted per second (durable, SQLite)",
        "accepted_per_second",
        accepted as f64 / vote_span,
        0,
    );
    report.row(
        "vote answers by status",
        statuses
            .iter()
            .map(|(status, count)| format!("{status}×{count}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    usage_rows(&mut report, "the storm", "storm", &storm_usage);
    if let Some(cpu) = storm_usage.server_cpu {
        report.metric(
            "server CPU-µs per accepted vote (fan-out included)",
            "cpu_us_per_vote",
            cpu.as_secs_f64() * 1e6 / accepted.max(1) as f64,
            1,
        );
    }
    if let Some(rss) = storm_usage.server_rss_kib {
        report.metric(
            "server RSS after the storm (MiB)",
            "rss_mib",
            rss as f64 / 1024.0,
            1,
        );
    }

    // Coalescing: update frames per socket per second while votes flowed.
    let opened: Vec<&Watch> = watches.iter().filter(|watch| watch.opened).collect();
    let rates: Vec<f64> = opened
        .iter()
        .filter_map(|watch| match (watch.first_update, watch.last_update) {
            (Some(first), Some(last)) if watch.update_frames > 1 && last > first => {
                Some((watch.update_frames - 1) as f64 / last.duration_since(first).as_secs_f64())
            }
            _ => None,
        })
        .collect();
    let mean_rate = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
    let max_rate = rates.iter().copied().fold(0.0, f64::max);
    report.metric(
        "EVENT_UPDATED frames per socket per second, mean",
        "update_frames_per_second_mean",
        mean_rate,
        2,
    );
    report.metric(
        "EVENT_UPDATED frames per socket per second, highest socket",
        "update_frames_per_second_max",
        max_rate,
        2,
    );
    if let (Some(before), Some(after)) = (wakes_before, wakes_after) {
        // The server's own count: sockets woken with coalesced updates, per socket per second
        // while votes flowed (the metric is exported once a second, so this is a close
        // estimate, not an exact rate).
        let per_socket = (after - before) / ready as f64 / storm_usage.wall.as_secs_f64().max(1e-9);
        report.metric(
            "server: coalesced update wakes per socket per second (from /metrics)",
            "update_wakes_per_socket_second",
            per_socket,
            2,
        );
    }
    let bursts: u64 = opened.iter().map(|watch| watch.bursts_over_four).sum();
    report.row(
        "times a socket read 5 update frames within 0.9 s (as received: includes the load generator's own scheduling delays)",
        bursts.to_string(),
    );
    report.key("bursts_over_four", bursts);
    let min_gap = opened.iter().filter_map(|watch| watch.min_gap).min();
    report.row(
        "shortest gap between two update frames read by one socket (ms)",
        min_gap.map_or("none".into(), |gap| format!("{:.1}", millis(gap))),
    );

    // Latency from acceptance to a probe socket seeing totals that include the vote.
    let latency = Histogram::default();
    let mut unseen = 0u64;
    let mut seen_before_answer = 0u64;
    for votes in &mut votes_by_event {
        votes.sort_unstable_by_key(|&(sum, _)| sum);
    }
    for watch in &opened {
        let Some(updates) = &watch.probe else {
            continue;
        };
        let votes = &votes_by_event[watch.event];
        let mut cursor = 0;
        for &(sum, accepted_at) in votes {
            while cursor < updates.len() && updates[cursor].0 < sum {
                cursor += 1;
            }
            match updates.get(cursor) {
                Some(&(_, seen_at)) if seen_at >= accepted_at => {
                    latency.record(seen_at - accepted_at)
                }
                Some(_) => {
                    // The socket saw the totals before the HTTP answer reached the load generator.
                    seen_before_answer += 1;
                    latency.record(Duration::ZERO);
                }
                None => unseen += 1,
            }
        }
    }
    report.row(
        "vote accepted → socket sees it: p50 / p99 / max (ms)",
        latency.summary_ms(),
    );
    if let (Some(p50), Some(p99)) = (latency.quantile(0.5), latency.quantile(0.99)) {
        report.key("p50_ms", format!("{:.1}", millis(p50)));
        report.key("p99_ms", format!("{:.1}", millis(p99)));
        report.row(
            "p99 target (update interval + 25 ms)",
            format!(
                "{} ms: {}",
                options.update_interval_ms + 25,
                if millis(p99) <= (options.update_interval_ms + 25) as f64 {
                    "met"
                } else {
                    "MISSED"
                }
            ),
        );
    }
    report.row("latency samples (probe sockets × votes of their event) / seen before the HTTP answer / never seen", format!("{} / {seen_before_answer} / {unseen}", latency.count()));

    // Correctness: final totals = accepted votes = what every socket ended with = the ledger.
    let totals_match = finals
        .iter()
        .zip(&accepted_per_event)
        .filter(|(total, accepted)| total == accepted)
        .count();
    report.row(
        "events whose final totals equal the accepted votes",
        format!("{totals_match} / {}", events.len()),
    );
    let stale = opened
        .iter()
        .filter(|watch| watch.last_sum != finals[watch.event])
        .count();
    report.row(
        "sockets whose last totals differ from the final totals",
        stale.to_string(),
    );
    let backwards: u64 = opened.iter().map(|watch| watch.went_backwards).sum();
    report.row(
        "updates with totals lower than an earlier one",
        backwards.to_string(),
    );
    let ledger_mismatches = check_ledger(bench, &voter_tokens, &credited, &per_user).await?;
    report.row(
        "voters whose balance ≠ credit − accepted votes",
        format!("{ledger_mismatches} / {}", voters.len()),
    );
    report.key("ledger_mismatches", ledger_mismatches);
    report.row(
        "sockets closed by the server (close codes)",
        progress.close_summary(),
    );
    Ok(report)
}

fn note_update_frame(watch: &mut Watch, at: Instant) {
    if let Some(last) = watch.last_update {
        let gap = at.saturating_duration_since(last);
        watch.min_gap = Some(watch.min_gap.map_or(gap, |shortest| shortest.min(gap)));
    }
    watch.first_update.get_or_insert(at);
    watch.last_update = Some(at);
    watch.update_frames += 1;
    // Five frames within 0.9 s means faster than four flushes per second, beyond what delivery
    // jitter (a few ms) can explain; compared with the frame four back in a small ring.
    let slot = watch.recent_next % watch.recent.len();
    if let Some(four_back) = watch.recent[slot] {
        if at.saturating_duration_since(four_back) < Duration::from_millis(900) {
            watch.bursts_over_four += 1;
        }
    }
    watch.recent[slot] = Some(at);
    watch.recent_next += 1;
}

/// Credits every voter generously so no vote fails for lack of balance; returns each balance.
async fn credit_all(bench: &Arc<Bench>, admin: &str, voters: &[Uuid]) -> anyhow::Result<Vec<i64>> {
    let voters = Arc::new(voters.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for worker in 0..16 {
        let (bench, voters, next, admin) = (
            bench.clone(),
            voters.clone(),
            next.clone(),
            admin.to_owned(),
        );
        workers.push(tokio::spawn(async move {
            let mut connection = bench.http(worker);
            let mut balances = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(user) = voters.get(index) else { break };
                balances.push((
                    index,
                    bench
                        .credit(&mut connection, &admin, *user, 1_000_000_000)
                        .await?,
                ));
            }
            anyhow::Ok(balances)
        }));
    }
    let mut balances = vec![0; voters.len()];
    for worker in workers {
        for (index, balance) in worker.await?? {
            balances[index] = balance;
        }
    }
    Ok(balances)
}

/// Counts voters whose balance is not their credited balance minus their accepted votes.
async fn check_ledger(
    bench: &Arc<Bench>,
    tokens: &Arc<Vec<String>>,
    credited: &[i64],
    per_user: &BTreeMap<usize, u64>,
) -> anyhow::Result<usize> {
    let mut connection = bench.http(1);
    let mut mismatches = 0;
    for (index, token) in tokens.iter().enumerate() {
        let expected = credited[index] - i64::try_from(per_user.get(&index).copied().unwrap_or(0))?;
        if bench.balance(&mut connection, token).await? != expected {
            mismatches += 1;
        }
    }
    Ok(mismatches)
}

/// Casts `rate` votes per second for `seconds` on an open-loop schedule over many keep-alive
/// connections; vote k goes to event k mod E from voter (k / E) mod V.
async fn storm(
    bench: &Arc<Bench>,
    options: &Options,
    events: &Arc<Vec<String>>,
    voter_tokens: &Arc<Vec<String>>,
    start: Instant,
) -> anyhow::Result<Vec<VoteLog>> {
    let total = u64::from(options.rate) * options.seconds;
    let interval = Duration::from_secs_f64(1.0 / f64::from(options.rate.max(1)));
    let give_up = start + Duration::from_secs(options.seconds + 15);
    let next = Arc::new(AtomicU64::new(0));
    // Built once, so the load generator spends its share of the two cores on sending, not on
    // formatting the same strings 20,000 times a second.
    let paths: Arc<Vec<String>> = Arc::new(
        events
            .iter()
            .map(|event| format!("/api/events/{event}/votes"))
            .collect(),
    );
    let authorizations: Arc<Vec<HeaderValue>> = Arc::new(
        voter_tokens
            .iter()
            .map(|token| bearer(token))
            .collect::<anyhow::Result<_>>()?,
    );
    let mut workers = Vec::new();
    for worker in 0..options.connections.max(1) {
        let (bench, next, paths, authorizations) = (
            bench.clone(),
            next.clone(),
            paths.clone(),
            authorizations.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut connection = bench.http(worker);
            let mut log = VoteLog::default();
            let bodies = [
                bytes::Bytes::from(
                    serde_json::to_vec(&VoteRequest {
                        option_id: "a".into(),
                        votes: 1,
                    })
                    .unwrap_or_default(),
                ),
                bytes::Bytes::from(
                    serde_json::to_vec(&VoteRequest {
                        option_id: "b".into(),
                        votes: 1,
                    })
                    .unwrap_or_default(),
                ),
            ];
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= total || Instant::now() >= give_up {
                    break;
                }
                tokio::time::sleep_until((start + interval.mul_f64(index as f64)).into()).await;
                let event = (index % paths.len() as u64) as usize;
                let round = index / paths.len() as u64;
                let user = (round % authorizations.len() as u64) as usize;
                log.sent += 1;
                let answer = connection
                    .request(
                        hyper::Method::POST,
                        &paths[event],
                        Some(authorizations[user].clone()),
                        Some(bodies[(round % 2) as usize].clone()),
                    )
                    .await;
                let at = Instant::now();
                log.last_answer = Some(at);
                match answer {
                    Ok(answer) if answer.status.is_success() => {
                        *log.statuses
                            .entry(answer.status.as_u16().to_string())
                            .or_default() += 1;
                        let Ok(response) = serde_json::from_slice::<VoteAnswer>(&answer.body)
                        else {
                            *log.statuses.entry("unparseable 200".into()).or_default() += 1;
                            continue;
                        };
                        log.accepted.push((event, response.totals.0, at));
                        *log.per_user.entry(user).or_default() += 1;
                    }
                    Ok(answer) => {
                        *log.statuses
                            .entry(answer.status.as_u16().to_string())
                            .or_default() += 1
                    }
                    Err(_) => *log.statuses.entry("error".into()).or_default() += 1,
                }
            }
            log
        }));
    }
    let mut logs = Vec::new();
    for worker in workers {
        logs.push(worker.await?);
    }
    Ok(logs)
}
