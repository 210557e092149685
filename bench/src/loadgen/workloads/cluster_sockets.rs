//! Cluster sockets (issue 11): idle sockets spread over the nodes of one cluster, one user
//! each, answering only the heartbeat. Measures each node's resident memory per socket and the
//! CPU of all nodes together while nothing happens but PINGs and the nodes' own upkeep
//! (Redis, the 5 s resync from Postgres). Fleets larger than one process can hold are spread
//! over helper processes of the load generator (see `socket_holder.rs`).

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use livevote_protocol::Role;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cluster::{cpu_between, sample_pids, Cluster};
use crate::context::{fit_sockets, Progress};
use crate::report::Report;
use crate::system::{own_cpu, ProcessSample};
use crate::workloads::socket_holder::{collect, open_fleet, FleetEnd};

/// What holding the fleet measured, whichever way it was held.
struct Held {
    ready: usize,
    failed: usize,
    refused: u64,
    open_seconds: f64,
    subscribed: Vec<Option<ProcessSample>>,
    after: Vec<Option<ProcessSample>>,
    idle_wall: f64,
    /// Sockets the server closed before the idle window began (while the rest were opening).
    closed_before_idle: usize,
    /// CPU of the load generator (and its holders) during the idle window, in cores.
    loadgen_cores: f64,
    end: FleetEnd,
    close_summary: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Nodes the sockets are spread over (socket i on node i mod nodes).
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// Sockets to hold open, one user each (cut to what the open-file limits allow).
    #[arg(long, default_value_t = 20_000)]
    sockets: usize,
    /// Streamer channels they are spread over.
    #[arg(long, default_value_t = 100)]
    channels: usize,
    /// How long to stay idle once every socket is subscribed; cover at least one heartbeat.
    #[arg(long, default_value_t = 22)]
    idle_seconds: u64,
    /// Time allowed for opening every socket.
    #[arg(long, default_value_t = 300)]
    connect_seconds: u64,
    /// Sockets one process holds at most; a larger fleet is spread over helper processes
    /// (`hold-sockets`), since one process cannot hold more than its open-file limit allows.
    #[arg(long, default_value_t = 18_000)]
    sockets_per_process: usize,
}

pub async fn run(cluster: &Cluster, options: &Options, label: &str) -> anyhow::Result<Report> {
    let mut report = Report::new(
        format!("Cluster idle sockets — {label}"),
        format!("{label}.cluster_sockets"),
    );
    cluster.describe(&mut report);
    let benches = &cluster.benches;
    let nodes = benches.len();
    let mut sockets = options.sockets;
    let per_process = options.sockets_per_process.max(1);
    if sockets <= per_process {
        // One process holds every socket.
        let (fitted, note) = fit_sockets(&benches[0], sockets);
        sockets = fitted;
        if let Some(note) = note {
            report.note(note);
        }
    }
    if let Some(node_limit) = benches[0]
        .server_pid
        .and_then(crate::system::open_file_limit_of)
    {
        let per_node_room = usize::try_from(node_limit.saturating_sub(400)).unwrap_or(usize::MAX);
        if sockets.div_ceil(nodes) > per_node_room {
            sockets = per_node_room * nodes;
            report.note(format!("a node's open-file limit ({node_limit}, RLIMIT_NOFILE; raising it needs CAP_SYS_RESOURCE) allows about {per_node_room} sockets per node; ran {sockets}: more sockets need more nodes"));
        }
    }
    let channels: Vec<Uuid> = (0..options.channels.max(1))
        .map(|_| Uuid::new_v4())
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = cluster.samples();
    let processes = sockets.div_ceil(per_process);
    let held = if processes <= 1 {
        hold_here(cluster, options, sockets, &channels).await?
    } else {
        hold_in_helpers(cluster, options, sockets, processes, &channels).await?
    };
    report.row(
        "sockets requested / subscribed / failed",
        format!("{} / {} / {}", options.sockets, held.ready, held.failed),
    );
    report.row(
        "processes holding the sockets",
        if processes <= 1 {
            "1 (the load generator)".to_string()
        } else {
            format!("{processes} helpers of the load generator (hold-sockets), each under its open-file limit")
        },
    );
    report.row(
        "time to mint the users' tokens, open and subscribe all (s)",
        format!("{:.1}", held.open_seconds),
    );
    report.row("upgrades refused (HTTP 503 etc.)", held.refused.to_string());
    report.key("sockets", held.ready);

    let mut per_socket = Vec::new();
    let mut per_socket_after = Vec::new();
    for (node, base) in baseline.iter().enumerate() {
        let opened = held.end.opened_per_node.get(node).copied().unwrap_or(0);
        let count = opened.max(1) as f64;
        if let (Some(base), Some(Some(subscribed)), Some(Some(idle))) =
            (base, held.subscribed.get(node), held.after.get(node))
        {
            per_socket.push(subscribed.rss_kib.saturating_sub(base.rss_kib) as f64 / count);
            per_socket_after.push(idle.rss_kib.saturating_sub(base.rss_kib) as f64 / count);
            report.row(
                format!("node {node}: sockets / RSS before / subscribed / after idle (MiB)"),
                format!(
                    "{opened} / {:.1} / {:.1} / {:.1}",
                    base.rss_kib as f64 / 1024.0,
                    subscribed.rss_kib as f64 / 1024.0,
                    idle.rss_kib as f64 / 1024.0
                ),
            );
        }
    }
    let highest = |values: &[f64]| values.iter().copied().fold(0.0, f64::max);
    let mean = |values: &[f64]| values.iter().sum::<f64>() / values.len().max(1) as f64;
    report.row(
        "RSS per subscribed socket, mean / highest node (KiB)",
        format!("{:.2} / {:.2}", mean(&per_socket), highest(&per_socket)),
    );
    report.metric(
        "RSS per socket after the idle window, highest node (KiB)",
        "kib_per_socket",
        highest(&per_socket_after),
        2,
    );
    let idle_cores = cpu_between(&held.subscribed, &held.after).as_secs_f64() / held.idle_wall;
    report.row("idle window (s)", format!("{:.1}", held.idle_wall));
    report.metric(
        "CPU of all nodes together during the idle window (cores)",
        "idle_cores",
        idle_cores,
        3,
    );
    report.row(
        "load generator CPU during the idle window (cores, holders included)",
        format!("{:.3}", held.loadgen_cores),
    );
    report.row("PINGs answered", held.end.pings.to_string());
    report.row(
        "sockets still open at the end of the idle window",
        held.end.still_open.to_string(),
    );
    report.key("still_open", held.end.still_open);
    report.row(
        "sockets closed by the server (close codes) / of them before the idle window began",
        format!("{} / {}", held.close_summary, held.closed_before_idle),
    );
    Ok(report)
}

/// The idle window: node samples at its start and end, its length, and the CPU of the given
/// load-generator processes (this one when `holders` is empty) in cores.
async fn idle_window(
    cluster: &Cluster,
    idle_seconds: u64,
    holders: &[u32],
) -> (
    Vec<Option<ProcessSample>>,
    Vec<Option<ProcessSample>>,
    f64,
    f64,
) {
    // Let the last subscriptions' allocations settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let subscribed = cluster.samples();
    let own_before = own_cpu();
    let holders_before = sample_pids(holders);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(idle_seconds)).await;
    let wall = started.elapsed().as_secs_f64().max(1e-9);
    let after = cluster.samples();
    let loadgen =
        own_cpu().saturating_sub(own_before) + cpu_between(&holders_before, &sample_pids(holders));
    (subscribed, after, wall, loadgen.as_secs_f64() / wall)
}

/// Every socket in this process.
async fn hold_here(
    cluster: &Cluster,
    options: &Options,
    sockets: usize,
    channels: &[Uuid],
) -> anyhow::Result<Held> {
    let benches = &cluster.benches;
    let started = Instant::now();
    let users: Vec<Uuid> = (0..sockets.max(1)).map(|_| Uuid::new_v4()).collect();
    let tokens = benches[0].mint_many(&users, Role::Viewer).await?;
    let stop = CancellationToken::new();
    let progress = Arc::new(Progress::default());
    let connect_deadline = started + Duration::from_secs(options.connect_seconds);
    let end = connect_deadline + Duration::from_secs(options.idle_seconds + 60);
    let tasks = open_fleet(
        benches,
        0,
        sockets,
        channels,
        &tokens,
        connect_deadline,
        end,
        &stop,
        &progress,
    );
    crate::context::wait_until(
        "cluster sockets subscribed",
        sockets,
        connect_deadline,
        || progress.ready.load(Ordering::Relaxed) + progress.failed.load(Ordering::Relaxed),
    )
    .await;
    let open_seconds = started.elapsed().as_secs_f64();
    let closed_before_idle = progress.closed_by_server.load(Ordering::Relaxed);
    let (subscribed, after, idle_wall, loadgen_cores) =
        idle_window(cluster, options.idle_seconds, &[]).await;
    stop.cancel();
    let end = collect(tasks, benches.len()).await?;
    Ok(Held {
        ready: progress.ready.load(Ordering::Relaxed),
        failed: progress.failed.load(Ordering::Relaxed),
        refused: progress.refused.load(Ordering::Relaxed),
        open_seconds,
        subscribed,
        after,
        idle_wall,
        loadgen_cores,
        closed_before_idle,
        end,
        close_summary: progress.close_summary(),
    })
}

/// The sockets spread over `processes` helper processes (`livevote-loadgen hold-sockets`).
async fn hold_in_helpers(
    cluster: &Cluster,
    options: &Options,
    sockets: usize,
    processes: usize,
    channels: &[Uuid],
) -> anyhow::Result<Held> {
    let program = std::env::current_exe().context("finding the load generator's own path")?;
    let nodes: Vec<String> = cluster
        .benches
        .iter()
        .map(|bench| bench.address.to_string())
        .collect();
    let channel_list: Vec<String> = channels.iter().map(Uuid::to_string).collect();
    let per_process = sockets.div_ceil(processes);
    let concurrency = cluster.benches[0].connect_concurrency.div_ceil(processes);
    let started = Instant::now();
    let mut children = Vec::new();
    for process in 0..processes {
        let first = process * per_process;
        let count = per_process.min(sockets.saturating_sub(first));
        if count == 0 {
            break;
        }
        let mut child = tokio::process::Command::new(&program)
            .arg("hold-sockets")
            .args(["--nodes", &nodes.join(",")])
            .args(["--first-index", &first.to_string()])
            .args(["--sockets", &count.to_string()])
            .args(["--channels", &channel_list.join(",")])
            .args(["--connect-seconds", &options.connect_seconds.to_string()])
            // Together the helpers open as many at once per node as one process would.
            .args(["--connect-concurrency", &concurrency.to_string()])
            .args([
                "--hold-seconds",
                &(options.connect_seconds + options.idle_seconds + 120).to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a hold-sockets helper")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("a helper without stdout"))?;
        children.push((child, BufReader::new(stdout).lines()));
    }
    let pids: Vec<u32> = children
        .iter()
        .filter_map(|(child, _)| child.id())
        .collect();
    let answer_deadline = started + Duration::from_secs(options.connect_seconds + 120);
    let (mut ready, mut failed, mut refused, mut closed_early) = (0, 0, 0u64, 0u64);
    for (_, lines) in &mut children {
        let line = read_line(lines, answer_deadline).await?;
        let numbers = numbers_after(&line, "subscribed")?;
        ready += numbers.first().copied().unwrap_or(0) as usize;
        failed += numbers.get(1).copied().unwrap_or(0) as usize;
        refused += numbers.get(2).copied().unwrap_or(0);
        closed_early += numbers.get(3).copied().unwrap_or(0);
    }
    let open_seconds = started.elapsed().as_secs_f64();
    let (subscribed, after, idle_wall, loadgen_cores) =
        idle_window(cluster, options.idle_seconds, &pids).await;
    // Closing a helper's stdin tells it to close its sockets and report.
    let mut end = FleetEnd {
        opened_per_node: vec![0; cluster.benches.len()],
        ..FleetEnd::default()
    };
    let mut codes: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for (child, _) in &mut children {
        drop(child.stdin.take());
    }
    let done_deadline = Instant::now() + Duration::from_secs(120);
    for (mut child, mut lines) in children {
        let line = read_line(&mut lines, done_deadline).await?;
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&"done") || words.len() < 5 {
            bail!("a helper said `{line}`, not `done …`");
        }
        let number = |word: &str| -> anyhow::Result<u64> {
            word.parse().with_context(|| format!("in `{line}`"))
        };
        let part = FleetEnd {
            still_open: number(words[1])? as usize,
            pings: number(words[2])?,
            opened_per_node: words[5..]
                .iter()
                .map(|word| number(word).map(|count| count as usize))
                .collect::<anyhow::Result<_>>()?,
        };
        // "none" (no closes) has no count and adds nothing.
        for code in words[4].split(',') {
            if let Some((code, count)) = code.split_once('×') {
                *codes.entry(code.to_owned()).or_default() += number(count)?;
            }
        }
        end.absorb(&part);
        let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    }
    Ok(Held {
        ready,
        failed,
        refused,
        open_seconds,
        subscribed,
        after,
        idle_wall,
        loadgen_cores,
        closed_before_idle: closed_early as usize,
        end,
        close_summary: if codes.is_empty() {
            "none".into()
        } else {
            codes
                .iter()
                .map(|(code, count)| format!("{code}×{count}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
    })
}

async fn read_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    deadline: Instant,
) -> anyhow::Result<String> {
    match tokio::time::timeout_at(deadline.into(), lines.next_line()).await {
        Ok(Ok(Some(line))) => Ok(line),
        Ok(Ok(None)) => bail!("a hold-sockets helper exited without reporting"),
        Ok(Err(error)) => Err(error).context("reading a hold-sockets helper"),
        Err(_) => bail!("a hold-sockets helper did not report in time"),
    }
}

/// The numbers of a helper's `WORD n n n …` line.
fn numbers_after(line: &str, word: &str) -> anyhow::Result<Vec<u64>> {
    let rest = line
        .strip_prefix(word)
        .ok_or_else(|| anyhow!("a helper said `{line}`, not `{word} …`"))?;
    rest.split_whitespace()
        .map(|number| number.parse().with_context(|| format!("in `{line}`")))
        .collect()
}
