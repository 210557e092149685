//! W1 idle: many subscribed sockets that only answer PINGs. Measures the server's resident
//! memory per socket and its CPU while nothing happens but heartbeats.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use livevote_protocol::Role;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::context::{fit_sockets, joined, open_gate, realtime_path, wait_until, Bench, Progress};
use crate::report::Report;
use crate::socket::Received;
use crate::workloads::usage_rows;

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Sockets to hold open.
    #[arg(long, default_value_t = 100_000)]
    sockets: usize,
    /// Streamer channels they are spread over (socket i joins channel i mod channels).
    #[arg(long, default_value_t = 1_000)]
    channels: usize,
    /// Distinct viewer users whose tokens the sockets share.
    #[arg(long, default_value_t = 1_000)]
    users: usize,
    /// How long to stay idle once every socket is subscribed; cover at least one heartbeat.
    #[arg(long, default_value_t = 30)]
    idle_seconds: u64,
    /// Time allowed for opening every socket.
    #[arg(long, default_value_t = 300)]
    connect_seconds: u64,
}

pub async fn run(bench: &Arc<Bench>, options: &Options, label: &str) -> anyhow::Result<Report> {
    let mut report = Report::new(format!("W1 idle sockets — {label}"), format!("{label}.w1"));
    let (sockets, fitted) = fit_sockets(bench, options.sockets);
    if let Some(note) = fitted {
        report.note(note);
    }
    let channels: Vec<Uuid> = (0..options.channels.max(1))
        .map(|_| Uuid::new_v4())
        .collect();
    let tokens = viewer_tokens(bench, options.users).await?;

    // Let start-up allocations settle before the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = bench.server_sample();

    let stop = CancellationToken::new();
    let progress = Arc::new(Progress::default());
    let gate = open_gate(bench);
    let started = Instant::now();
    let connect_deadline = started + Duration::from_secs(options.connect_seconds);
    let end = connect_deadline + Duration::from_secs(options.idle_seconds + 60);
    let mut tasks = Vec::with_capacity(sockets);
    for index in 0..sockets {
        let path = realtime_path(
            channels[index % channels.len()],
            &tokens[index % tokens.len()],
        );
        let (bench, stop, progress, gate) =
            (bench.clone(), stop.clone(), progress.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let Some(mut socket) = bench
                .open_through_gate(gate, index, &path, connect_deadline, &stop, &progress)
                .await
            else {
                return (0, 0);
            };
            loop {
                match socket.receive(end, &stop, |_, _| {}).await {
                    Received::Frame => continue,
                    Received::Stopped => break,
                    Received::Closed(code) => {
                        progress.server_closed(code);
                        return (socket.frames, socket.pings_answered);
                    }
                }
            }
            let counts = (socket.frames, socket.pings_answered);
            socket.close().await;
            counts
        }));
    }
    let opened = wait_until("W1 sockets subscribed", sockets, connect_deadline, || {
        progress.ready.load(Ordering::Relaxed) + progress.failed.load(Ordering::Relaxed)
    })
    .await;
    let connect_time = started.elapsed();
    let ready = progress.ready.load(Ordering::Relaxed);
    let _ = opened;

    tokio::time::sleep(Duration::from_secs(2)).await;
    let connected = bench.server_sample();
    let idle = bench.meter();
    tokio::time::sleep(Duration::from_secs(options.idle_seconds)).await;
    let idle_usage = idle.finish();
    let after_idle = bench.server_sample();
    let still_open = ready - progress.closed_by_server.load(Ordering::Relaxed);

    stop.cancel();
    let mut frames = 0u64;
    let mut pings = 0u64;
    for task in tasks {
        let (socket_frames, socket_pings) = joined(task.await)?;
        frames += socket_frames;
        pings += socket_pings;
    }

    report.row(
        "sockets requested / subscribed / failed",
        format!(
            "{} / {ready} / {}",
            options.sockets,
            progress.failed.load(Ordering::Relaxed)
        ),
    );
    report.key("sockets", ready);
    report.row(
        "channels / distinct users",
        format!("{} / {}", channels.len(), tokens.len()),
    );
    report.metric(
        "time to open and subscribe all (s)",
        "connect_seconds",
        connect_time.as_secs_f64(),
        1,
    );
    report.metric(
        "sockets subscribed per second",
        "connect_rate",
        ready as f64 / connect_time.as_secs_f64().max(1e-9),
        0,
    );
    report.row(
        "upgrades refused (HTTP 503 etc.)",
        progress.refused.load(Ordering::Relaxed).to_string(),
    );
    if let (Some(baseline), Some(connected), Some(after_idle)) = (baseline, connected, after_idle) {
        report.row(
            "server RSS before / subscribed / after idle (MiB)",
            format!(
                "{:.1} / {:.1} / {:.1}",
                baseline.rss_kib as f64 / 1024.0,
                connected.rss_kib as f64 / 1024.0,
                after_idle.rss_kib as f64 / 1024.0
            ),
        );
        let per_socket =
            |rss: u64| rss.saturating_sub(baseline.rss_kib) as f64 / ready.max(1) as f64;
        report.metric(
            "server RSS per subscribed socket (KiB)",
            "kib_per_socket",
            per_socket(connected.rss_kib),
            2,
        );
        report.metric(
            "server RSS per socket after the idle window (KiB)",
            "kib_per_socket_after_idle",
            per_socket(after_idle.rss_kib),
            2,
        );
    } else {
        report.row("server RSS", "unknown (no server pid)");
    }
    report.metric(
        "idle window (s)",
        "idle_seconds",
        idle_usage.wall.as_secs_f64(),
        1,
    );
    usage_rows(&mut report, "the idle window", "idle", &idle_usage);
    if let Some(cpu) = idle_usage.server_cpu {
        report.metric(
            "server CPU per socket per idle minute (µs)",
            "cpu_us_per_socket_minute",
            cpu.as_secs_f64() * 1e6 / ready.max(1) as f64 * 60.0
                / idle_usage.wall.as_secs_f64().max(1e-9),
            2,
        );
    }
    report.row(
        "text frames received / PINGs answered",
        format!("{frames} / {pings}"),
    );
    report.row(
        "sockets still open at the end of the idle window",
        still_open.to_string(),
    );
    report.row(
        "sockets closed by the server (close codes)",
        progress.close_summary(),
    );
    Ok(report)
}

/// Viewer tokens for `users` distinct users (the reference server takes any placeholder).
pub async fn viewer_tokens(bench: &Arc<Bench>, users: usize) -> anyhow::Result<Vec<String>> {
    if bench.reference {
        return Ok(vec!["reference".to_owned()]);
    }
    let users: Vec<Uuid> = (0..users.max(1)).map(|_| Uuid::new_v4()).collect();
    bench.mint_many(&users, Role::Viewer).await
}
