//! Cluster sockets (issue 11): idle sockets spread over the nodes of one cluster, one user
//! each, answering only the heartbeat. Measures each node's resident memory per socket and the
//! CPU of all nodes together while nothing happens but PINGs and the nodes' own upkeep
//! (Redis, the 5 s resync from Postgres).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use livevote_protocol::Role;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cluster::{cpu_between, Cluster};
use crate::context::{fit_sockets, joined, open_gate, realtime_path, Progress};
use crate::report::Report;
use crate::socket::Received;
use crate::system::own_cpu;

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
}

pub async fn run(cluster: &Cluster, options: &Options, label: &str) -> anyhow::Result<Report> {
    let mut report = Report::new(
        format!("Cluster idle sockets — {label}"),
        format!("{label}.cluster_sockets"),
    );
    cluster.describe(&mut report);
    let benches = &cluster.benches;
    let nodes = benches.len();
    // The load generator holds every socket; each node holds its share.
    let (mut sockets, fitted) = fit_sockets(&benches[0], options.sockets);
    if let Some(note) = fitted {
        report.note(note);
    }
    if let Some(node_limit) = benches[0]
        .server_pid
        .and_then(crate::system::open_file_limit_of)
    {
        let per_node_room = usize::try_from(node_limit.saturating_sub(400)).unwrap_or(usize::MAX);
        if sockets.div_ceil(nodes) > per_node_room {
            sockets = per_node_room * nodes;
            report.note(format!("a node's open-file limit ({node_limit}) allows about {per_node_room} sockets; ran {sockets}"));
        }
    }
    let channels: Vec<Uuid> = (0..options.channels.max(1))
        .map(|_| Uuid::new_v4())
        .collect();
    let users: Vec<Uuid> = (0..sockets.max(1)).map(|_| Uuid::new_v4()).collect();
    let tokens = benches[0].mint_many(&users, Role::Viewer).await?;

    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = cluster.samples();

    let stop = CancellationToken::new();
    let progress = Arc::new(Progress::default());
    let gates: Vec<_> = benches.iter().map(|bench| open_gate(bench)).collect();
    let started = Instant::now();
    let connect_deadline = started + Duration::from_secs(options.connect_seconds);
    let end = connect_deadline + Duration::from_secs(options.idle_seconds + 60);
    let mut tasks = Vec::with_capacity(sockets);
    for index in 0..sockets {
        let node = index % nodes;
        let path = realtime_path(channels[index % channels.len()], &tokens[index]);
        let (bench, stop, progress, gate) = (
            benches[node].clone(),
            stop.clone(),
            progress.clone(),
            gates[node].clone(),
        );
        tasks.push(tokio::spawn(async move {
            let Some(mut socket) = bench
                .open_through_gate(gate, index, &path, connect_deadline, &stop, &progress)
                .await
            else {
                return (node, false, false, 0);
            };
            loop {
                match socket.receive(end, &stop, |_, _| {}).await {
                    Received::Frame => continue,
                    Received::Stopped => break,
                    Received::Closed(code) => {
                        progress.server_closed(code);
                        return (node, true, false, socket.pings_answered);
                    }
                }
            }
            let pings = socket.pings_answered;
            socket.close().await;
            (node, true, true, pings)
        }));
    }
    let ready = progress
        .wait_for_sockets(
            "cluster sockets subscribed",
            sockets,
            options.sockets,
            connect_deadline,
            &mut report,
        )
        .await;
    let open_seconds = started.elapsed().as_secs_f64();
    report.row(
        "time to open and subscribe all (s)",
        format!("{open_seconds:.1}"),
    );
    report.row(
        "upgrades refused (HTTP 503 etc.)",
        progress.refused.load(Ordering::Relaxed).to_string(),
    );
    report.key("sockets", ready);
    // Let the last subscriptions' allocations settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let subscribed = cluster.samples();
    let own_before = own_cpu();
    let idle_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(options.idle_seconds)).await;
    let idle_wall = idle_started.elapsed().as_secs_f64().max(1e-9);
    let after = cluster.samples();
    let own = own_cpu().saturating_sub(own_before);
    stop.cancel();
    let mut still_open = 0;
    let mut pings = 0;
    let mut opened_per_node = vec![0usize; nodes];
    for task in tasks {
        let (node, opened, open, answered) = joined(task.await)?;
        opened_per_node[node] += usize::from(opened);
        still_open += usize::from(open);
        pings += answered;
    }

    let per_node_sockets = |node: usize| opened_per_node[node];
    let mut per_socket = Vec::new();
    let mut per_socket_after = Vec::new();
    for node in 0..nodes {
        let count = per_node_sockets(node).max(1) as f64;
        if let (Some(base), Some(held), Some(idle)) =
            (baseline[node], subscribed[node], after[node])
        {
            per_socket.push(held.rss_kib.saturating_sub(base.rss_kib) as f64 / count);
            per_socket_after.push(idle.rss_kib.saturating_sub(base.rss_kib) as f64 / count);
            report.row(
                format!("node {node}: sockets / RSS before / subscribed / after idle (MiB)"),
                format!(
                    "{} / {:.1} / {:.1} / {:.1}",
                    per_node_sockets(node),
                    base.rss_kib as f64 / 1024.0,
                    held.rss_kib as f64 / 1024.0,
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
    let idle_cores = cpu_between(&subscribed, &after).as_secs_f64() / idle_wall;
    report.row("idle window (s)", format!("{idle_wall:.1}"));
    report.metric(
        "CPU of all nodes together during the idle window (cores)",
        "idle_cores",
        idle_cores,
        3,
    );
    report.row(
        "load generator CPU during the idle window (cores)",
        format!("{:.3}", own.as_secs_f64() / idle_wall),
    );
    report.row("PINGs answered", pings.to_string());
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
