//! W4 reconnect storm: every socket is dropped at once (no WebSocket close handshake, just the
//! TCP connection closed, as when every viewer's page reloads together) and reopens immediately. Measures the time until every socket has its snapshot again
//! and how many database queries the storm cost (snapshots must come from memory).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use livevote_protocol::Role;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::context::{fit_sockets, joined, open_gate, realtime_path, wait_until, Bench, Progress};
use crate::histogram::{millis, Histogram};
use crate::report::Report;
use crate::socket::Received;
use crate::workloads::usage_rows;

/// The Prometheus counter the server exports for `Store::query_count()`.
const QUERY_METRIC: &str = "livevote_store_queries_total";

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Sockets that drop and reconnect together.
    #[arg(long, default_value_t = 20_000)]
    sockets: usize,
    /// Streamers, each with one open event, so every snapshot holds EVENT_CREATED and EVENT_UPDATED.
    #[arg(long, default_value_t = 100)]
    streamers: usize,
    /// Distinct viewer users (0: one per socket, as real viewers are).
    #[arg(long, default_value_t = 0)]
    users: usize,
    /// Time allowed for opening every socket the first time.
    #[arg(long, default_value_t = 300)]
    connect_seconds: u64,
    /// Time allowed for the storm to settle.
    #[arg(long, default_value_t = 300)]
    storm_seconds: u64,
}

pub async fn run(bench: &Arc<Bench>, options: &Options, label: &str) -> anyhow::Result<Report> {
    bench.require_livevote("W4")?;
    let mut report = Report::new(
        format!("W4 reconnect storm — {label}"),
        format!("{label}.w4"),
    );
    // The server briefly holds old and new connections at once: leave it headroom.
    let (fitted_sockets, fitted) = fit_sockets(bench, options.sockets * 2);
    let sockets = options.sockets.min(fitted_sockets / 2);
    if fitted.is_some() {
        report.note(format!(
            "asked for {} sockets; the open-file limit (RLIMIT_NOFILE, not raisable here) leaves room for {sockets} while old and new connections overlap",
            options.sockets
        ));
    }
    let streamers: Vec<Uuid> = (0..options.streamers.max(1))
        .map(|_| Uuid::new_v4())
        .collect();
    let mut connection = bench.http(0);
    let worker = bench
        .mint(&mut connection, Uuid::new_v4(), Role::Worker, None)
        .await?;
    let closes_at = chrono::Utc::now()
        + chrono::Duration::seconds((options.connect_seconds + options.storm_seconds + 600) as i64);
    for (index, streamer) in streamers.iter().enumerate() {
        bench
            .create_event(
                &mut connection,
                &worker,
                *streamer,
                closes_at,
                &format!("W4 storm {index}"),
            )
            .await?;
    }
    let user_count = if options.users == 0 {
        sockets
    } else {
        options.users
    };
    let users: Vec<Uuid> = (0..user_count.max(1)).map(|_| Uuid::new_v4()).collect();
    let minted = Instant::now();
    let tokens = Arc::new(bench.mint_many(&users, Role::Viewer).await?);
    report.metric(
        "tokens minted per second (POST /api/auth)",
        "auth_per_second",
        tokens.len() as f64 / minted.elapsed().as_secs_f64().max(1e-9),
        0,
    );
    let queries_before_connect = bench.metric(&mut connection, QUERY_METRIC).await?;

    let stop = CancellationToken::new();
    let drop_signal = CancellationToken::new();
    let progress = Arc::new(Progress::default());
    let storm_progress = Arc::new(Progress::default());
    let reconnect = Arc::new(Histogram::default());
    let storm_begin = Arc::new(AtomicU64::new(u64::MAX));
    let last_reconnect = Arc::new(AtomicU64::new(0));
    let snapshot_messages = Arc::new(AtomicUsize::new(0));
    let gate = open_gate(bench);
    let started = Instant::now();
    let connect_deadline = started + Duration::from_secs(options.connect_seconds);
    let storm_deadline = connect_deadline + Duration::from_secs(options.storm_seconds + 30);
    let end = storm_deadline + Duration::from_secs(60);
    let mut tasks = Vec::with_capacity(sockets);
    for index in 0..sockets {
        let path = realtime_path(
            streamers[index % streamers.len()],
            &tokens[index % tokens.len()],
        );
        let (bench, stop, drop_signal, progress, storm_progress, gate) = (
            bench.clone(),
            stop.clone(),
            drop_signal.clone(),
            progress.clone(),
            storm_progress.clone(),
            gate.clone(),
        );
        let (reconnect, storm_begin, last_reconnect, snapshot_messages) = (
            reconnect.clone(),
            storm_begin.clone(),
            last_reconnect.clone(),
            snapshot_messages.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let Some(mut socket) = bench
                .open_through_gate(gate, index, &path, connect_deadline, &stop, &progress)
                .await
            else {
                return;
            };
            // Hold (answering PINGs) until the storm begins.
            loop {
                match socket.receive(end, &drop_signal, |_, _| {}).await {
                    Received::Frame => continue,
                    Received::Stopped => break,
                    Received::Closed(code) => {
                        progress.server_closed(code);
                        return;
                    }
                }
            }
            if stop.is_cancelled() {
                return;
            }
            socket.drop_abruptly();
            let mut snapshot = 0;
            let Some(mut socket) = bench
                .open_subscribed(
                    index,
                    &path,
                    storm_deadline,
                    &stop,
                    &storm_progress,
                    |_, message| {
                        if message.kind == "EVENT_CREATED" || message.kind == "EVENT_UPDATED" {
                            snapshot += 1;
                        }
                    },
                )
                .await
            else {
                storm_progress.failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let now = bench.now_nanos();
            reconnect.record(Duration::from_nanos(
                now.saturating_sub(storm_begin.load(Ordering::Relaxed)),
            ));
            last_reconnect.fetch_max(now, Ordering::Relaxed);
            snapshot_messages.fetch_add(snapshot, Ordering::Relaxed);
            storm_progress.ready.fetch_add(1, Ordering::Relaxed);
            loop {
                match socket.receive(end, &stop, |_, _| {}).await {
                    Received::Frame => continue,
                    Received::Stopped => break,
                    Received::Closed(code) => {
                        storm_progress.server_closed(code);
                        return;
                    }
                }
            }
            socket.close().await;
        }));
    }
    let ready = progress
        .wait_for_sockets(
            "W4 sockets subscribed",
            sockets,
            options.sockets,
            connect_deadline,
            &mut report,
        )
        .await;
    let connect_time = started.elapsed();
    report.row(
        "streamers with an open event / distinct users",
        format!("{} / {}", streamers.len(), tokens.len()),
    );
    report.key("sockets", ready);
    report.metric(
        "first connection: time to open and subscribe all (s)",
        "connect_seconds",
        connect_time.as_secs_f64(),
        1,
    );
    report.row(
        "first connection: upgrades refused",
        progress.refused.load(Ordering::Relaxed).to_string(),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let queries_before_storm = bench.metric(&mut connection, QUERY_METRIC).await?;

    let meter = bench.meter();
    storm_begin.store(bench.now_nanos(), Ordering::Relaxed);
    let storm_started = bench.now_nanos();
    drop_signal.cancel();
    wait_until(
        "W4 sockets back with a snapshot",
        ready,
        storm_deadline,
        || {
            storm_progress.ready.load(Ordering::Relaxed)
                + storm_progress.failed.load(Ordering::Relaxed)
        },
    )
    .await;
    let usage = meter.finish();
    let back = storm_progress.ready.load(Ordering::Relaxed);
    let storm_time = Duration::from_nanos(
        last_reconnect
            .load(Ordering::Relaxed)
            .saturating_sub(storm_started),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let queries_after_storm = bench.metric(&mut connection, QUERY_METRIC).await?;

    report.row(
        "sockets back with their snapshot / gave up",
        format!("{back} / {}", storm_progress.failed.load(Ordering::Relaxed)),
    );
    report.metric(
        "storm: time until every socket had its snapshot again (s)",
        "storm_seconds",
        storm_time.as_secs_f64(),
        2,
    );
    report.row(
        "storm: per-socket time to snapshot p50 / p99 / max (ms)",
        reconnect.summary_ms(),
    );
    if let Some(p99) = reconnect.quantile(0.99) {
        report.key("p99_ms", format!("{:.0}", millis(p99)));
    }
    report.row(
        "storm: upgrades refused (503 from the connect-rate guard or cap)",
        storm_progress.refused.load(Ordering::Relaxed).to_string(),
    );
    report.key("refused", storm_progress.refused.load(Ordering::Relaxed));
    report.row(
        "snapshot messages received (EVENT_CREATED + EVENT_UPDATED)",
        snapshot_messages.load(Ordering::Relaxed).to_string(),
    );
    usage_rows(&mut report, "the storm", "storm", &usage);
    match (
        queries_before_connect,
        queries_before_storm,
        queries_after_storm,
    ) {
        (Some(before_connect), Some(before), Some(after)) => {
            report.metric(
                "database queries during the first connection wave",
                "connect_queries",
                before - before_connect,
                0,
            );
            report.metric(
                "database queries during the storm",
                "storm_queries",
                after - before,
                0,
            );
            report.metric(
                "database queries per reconnected socket",
                "queries_per_reconnect",
                (after - before) / back.max(1) as f64,
                3,
            );
        }
        _ => {
            report.row(
                "database queries during the storm",
                format!("unknown: /metrics has no {QUERY_METRIC}"),
            );
            report.key("storm_queries", "missing");
        }
    }
    report.row(
        "sockets closed by the server (close codes)",
        format!(
            "before: {}; after: {}",
            progress.close_summary(),
            storm_progress.close_summary()
        ),
    );

    stop.cancel();
    for task in tasks {
        joined(task.await)?;
    }
    Ok(report)
}
