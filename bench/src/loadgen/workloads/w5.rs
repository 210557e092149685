//! W5 close: many subscribers of one streamer; events are created to close a few seconds later.
//! Measures, per socket, how long after `closesAt` its EVENT_CLOSED arrived (the contract allows
//! 100 ms), in wall-clock time because `closesAt` is a wall-clock instant.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use livevote_protocol::Role;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::context::{fit_sockets, joined, open_gate, realtime_path, wait_until, Bench, Progress};
use crate::histogram::{millis, Histogram};
use crate::report::Report;
use crate::socket::Received;
use crate::workloads::usage_rows;
use crate::workloads::w1::viewer_tokens;

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Sockets subscribed to the streamer.
    #[arg(long, default_value_t = 10_000)]
    sockets: usize,
    /// Distinct viewer users whose tokens the sockets share.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Events closed one after another.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// How far in the future each event's closesAt lies when it is created.
    #[arg(long, default_value_t = 3_000)]
    lead_ms: u64,
    /// Time allowed for opening every socket.
    #[arg(long, default_value_t = 300)]
    connect_seconds: u64,
}

/// One round's event and what the sockets saw of its close.
struct Round {
    event: String,
    closes_at: SystemTime,
    latency: Histogram,
    received: AtomicU64,
    early: AtomicU64,
}

pub async fn run(bench: &Arc<Bench>, options: &Options, label: &str) -> anyhow::Result<Report> {
    bench.require_livevote("W5")?;
    let mut report = Report::new(
        format!("W5 EVENT_CLOSED after closesAt — {label}"),
        format!("{label}.w5"),
    );
    let (sockets, fitted) = fit_sockets(bench, options.sockets);
    if let Some(note) = fitted {
        report.note(note);
    }
    let streamer = Uuid::new_v4();
    let mut connection = bench.http(0);
    let worker = bench
        .mint(&mut connection, Uuid::new_v4(), Role::Worker, None)
        .await?;
    let tokens = viewer_tokens(bench, options.users).await?;
    let rounds: Arc<RwLock<Vec<Arc<Round>>>> = Arc::default();

    let stop = CancellationToken::new();
    let progress = Arc::new(Progress::default());
    let gate = open_gate(bench);
    let started = Instant::now();
    let connect_deadline = started + Duration::from_secs(options.connect_seconds);
    let end = connect_deadline
        + Duration::from_secs((options.lead_ms / 1000 + 15) * options.rounds as u64 + 60);
    let mut tasks = Vec::with_capacity(sockets);
    for index in 0..sockets {
        let path = realtime_path(streamer, &tokens[index % tokens.len()]);
        let (bench, stop, progress, gate, rounds) = (
            bench.clone(),
            stop.clone(),
            progress.clone(),
            gate.clone(),
            rounds.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let Some(mut socket) = bench
                .open_through_gate(gate, index, &path, connect_deadline, &stop, &progress)
                .await
            else {
                return;
            };
            loop {
                let outcome = socket
                    .receive(end, &stop, |_, message| {
                        if message.kind != "EVENT_CLOSED" {
                            return;
                        }
                        let now = SystemTime::now();
                        let Some(event) = message.event_id() else {
                            return;
                        };
                        let rounds = rounds
                            .read()
                            .unwrap_or_else(|poisoned| poisoned.into_inner());
                        let Some(round) = rounds.iter().find(|round| round.event == event) else {
                            return;
                        };
                        round.received.fetch_add(1, Ordering::Relaxed);
                        match now.duration_since(round.closes_at) {
                            Ok(late) => round.latency.record(late),
                            Err(_) => {
                                round.early.fetch_add(1, Ordering::Relaxed);
                                round.latency.record(Duration::ZERO);
                            }
                        }
                    })
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
        }));
    }
    let ready = progress
        .wait_for_sockets(
            "W5 sockets subscribed",
            sockets,
            options.sockets,
            connect_deadline,
            &mut report,
        )
        .await;
    report.key("sockets", ready);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let all = Histogram::default();
    let meter = bench.meter();
    for number in 0..options.rounds {
        // Whole milliseconds, so the instant sent equals the instant compared against.
        let closes_at_ms = (chrono::Utc::now()
            + chrono::Duration::milliseconds(options.lead_ms as i64))
        .timestamp_millis();
        let closes_at =
            chrono::DateTime::from_timestamp_millis(closes_at_ms).unwrap_or_else(chrono::Utc::now);
        let event = bench
            .create_event(
                &mut connection,
                &worker,
                streamer,
                closes_at,
                &format!("W5 close {number}"),
            )
            .await?;
        let round = Arc::new(Round {
            event: event.to_string(),
            closes_at: SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(closes_at_ms)?),
            latency: Histogram::default(),
            received: AtomicU64::new(0),
            early: AtomicU64::new(0),
        });
        rounds
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(round.clone());
        let deadline =
            Instant::now() + Duration::from_millis(options.lead_ms) + Duration::from_secs(10);
        wait_until(
            &format!("W5 round {} EVENT_CLOSED", number + 1),
            ready,
            deadline,
            || usize::try_from(round.received.load(Ordering::Relaxed)).unwrap_or(usize::MAX),
        )
        .await;
        report.row(
            format!(
                "round {}: EVENT_CLOSED received / sockets / early (before closesAt)",
                number + 1
            ),
            format!(
                "{} / {ready} / {}",
                round.received.load(Ordering::Relaxed),
                round.early.load(Ordering::Relaxed)
            ),
        );
        report.row(
            format!(
                "round {}: delay after closesAt p50 / p99 / max (ms)",
                number + 1
            ),
            round.latency.summary_ms(),
        );
        if let Some(p99) = round.latency.quantile(0.99) {
            report.key(
                &format!("round{}.p99_ms", number + 1),
                format!("{:.1}", millis(p99)),
            );
        }
        all.absorb(&round.latency);
    }
    let usage = meter.finish();
    report.row(
        "all rounds: delay after closesAt p50 / p99 / max (ms)",
        all.summary_ms(),
    );
    // The server's own record of how late it closed (store commit time minus closesAt), which
    // separates the timer and the database from the fan-out to the sockets.
    let mut server_delays = Vec::new();
    for quantile in ["0.5", "0.99", "1"] {
        let name = format!("livevote_close_delay_ms{{quantile=\"{quantile}\"}}");
        server_delays.push(bench.metric(&mut connection, &name).await?);
    }
    match server_delays.as_slice() {
        [Some(p50), Some(p99), Some(max)] => report.row(
            "server: close committed after closesAt p50 / p99 / max (ms, livevote_close_delay_ms)",
            format!("{p50:.0} / {p99:.0} / {max:.0}"),
        ),
        _ => report.row(
            "server: close delay",
            "not exported (livevote_close_delay_ms)",
        ),
    }
    if let Some(p99) = all.quantile(0.99) {
        report.key("p99_ms", format!("{:.1}", millis(p99)));
        report.row(
            "p99 target (100 ms)",
            if millis(p99) <= 100.0 {
                "met"
            } else {
                "MISSED"
            },
        );
    }
    usage_rows(&mut report, "the rounds", "rounds", &usage);
    report.row(
        "sockets closed by the server (close codes)",
        progress.close_summary(),
    );

    stop.cancel();
    for task in tasks {
        joined(task.await)?;
    }
    Ok(report)
}
