//! Holding idle sockets on the nodes of a cluster, in this process or in helper processes of
//! the load generator (`livevote-loadgen hold-sockets`): one process can hold no more sockets
//! than its open-file limit allows (20,000 on the benchmark machine), so the cluster sockets
//! workload spreads a larger fleet over several holders. A holder reports on stdout: one line
//! `subscribed READY FAILED REFUSED CLOSED` once every socket is subscribed or has given up, then,
//! when its stdin closes (or its hold time is over), `done STILL_OPEN PINGS CLOSES CODES N0 N1 …`
//! (CODES like `4000×3,none×1`; N: sockets opened per node) before it exits.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use livevote_protocol::Role;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::context::{joined, loopback_sources, open_gate, realtime_path, Bench, Progress};
use crate::socket::{Received, SocketTarget};

#[derive(Debug, Clone, clap::Args)]
pub struct HoldOptions {
    /// Node addresses; socket i (counted from --first-index) goes to node i mod their number.
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<SocketAddr>,
    /// The fleet-wide index of this holder's first socket (picks nodes and source addresses).
    #[arg(long, default_value_t = 0)]
    first_index: usize,
    /// Sockets this holder opens, one user each.
    #[arg(long)]
    sockets: usize,
    /// Streamer channels (uuids); socket i joins channel i mod their number.
    #[arg(long, value_delimiter = ',', required = true)]
    channels: Vec<Uuid>,
    /// Longest the holder keeps its sockets if its stdin never closes.
    #[arg(long, default_value_t = 900)]
    hold_seconds: u64,
    /// Time allowed for opening every socket.
    #[arg(long, default_value_t = 300)]
    connect_seconds: u64,
    /// Sockets this holder opens at once per node.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Loopback source addresses (127.0.0.2 …).
    #[arg(long, default_value_t = 8)]
    sources: usize,
}

/// What one socket task ends with: its node, whether it ever opened, whether it was still
/// open at the end, and the PINGs it answered.
pub type SocketOutcome = (usize, bool, bool, u64);

/// Opens `count` sockets with fleet indexes `first_index …`, socket i on node i mod nodes,
/// each holding until `end` or `stop`.
#[allow(clippy::too_many_arguments)]
pub fn open_fleet(
    benches: &[Arc<Bench>],
    first_index: usize,
    count: usize,
    channels: &[Uuid],
    tokens: &[String],
    connect_deadline: Instant,
    end: Instant,
    stop: &CancellationToken,
    progress: &Arc<Progress>,
) -> Vec<JoinHandle<SocketOutcome>> {
    let gates: Vec<_> = benches.iter().map(|bench| open_gate(bench)).collect();
    let mut tasks = Vec::with_capacity(count);
    for (offset, token) in tokens.iter().take(count).enumerate() {
        let index = first_index + offset;
        let node = index % benches.len();
        let path = realtime_path(channels[index % channels.len()], token);
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
    tasks
}

/// The totals of a fleet once it has stopped.
#[derive(Debug, Default, Clone)]
pub struct FleetEnd {
    pub still_open: usize,
    pub pings: u64,
    pub opened_per_node: Vec<usize>,
}

impl FleetEnd {
    pub fn absorb(&mut self, other: &FleetEnd) {
        self.still_open += other.still_open;
        self.pings += other.pings;
        if self.opened_per_node.len() < other.opened_per_node.len() {
            self.opened_per_node.resize(other.opened_per_node.len(), 0);
        }
        for (mine, theirs) in self.opened_per_node.iter_mut().zip(&other.opened_per_node) {
            *mine += theirs;
        }
    }
}

/// Waits for every socket task and adds up how they ended.
pub async fn collect(
    tasks: Vec<JoinHandle<SocketOutcome>>,
    nodes: usize,
) -> anyhow::Result<FleetEnd> {
    let mut end = FleetEnd {
        opened_per_node: vec![0; nodes],
        ..FleetEnd::default()
    };
    for task in tasks {
        let (node, opened, open, pings) = joined(task.await)?;
        end.opened_per_node[node] += usize::from(opened);
        end.still_open += usize::from(open);
        end.pings += pings;
    }
    Ok(end)
}

/// The `hold-sockets` helper process (see the module documentation).
pub async fn hold(options: &HoldOptions, open_file_limit: u64) -> anyhow::Result<()> {
    if options.nodes.is_empty() || options.channels.is_empty() {
        anyhow::bail!("hold-sockets needs --nodes and --channels");
    }
    let epoch = Instant::now();
    let benches: Vec<Arc<Bench>> = options
        .nodes
        .iter()
        .map(|address| {
            Arc::new(Bench {
                address: *address,
                server_pid: None,
                api_key: String::new(),
                reference: false,
                sockets: SocketTarget {
                    address: *address,
                    sources: loopback_sources(options.sources),
                    read_buffer_size: 4096,
                    open_timeout: Duration::from_secs(20),
                },
                connect_concurrency: options.connect_concurrency.max(1),
                open_file_limit,
                epoch,
            })
        })
        .collect();
    let users: Vec<Uuid> = (0..options.sockets.max(1))
        .map(|_| Uuid::new_v4())
        .collect();
    let tokens = benches[0].mint_many(&users, Role::Viewer).await?;
    let stop = CancellationToken::new();
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let connect_deadline = started + Duration::from_secs(options.connect_seconds);
    let end = started + Duration::from_secs(options.hold_seconds);
    let tasks = open_fleet(
        &benches,
        options.first_index,
        options.sockets,
        &options.channels,
        &tokens,
        connect_deadline,
        end,
        &stop,
        &progress,
    );
    crate::context::wait_until(
        "holder sockets subscribed",
        options.sockets,
        connect_deadline,
        || progress.ready.load(Ordering::Relaxed) + progress.failed.load(Ordering::Relaxed),
    )
    .await;
    println!(
        "subscribed {} {} {} {}",
        progress.ready.load(Ordering::Relaxed),
        progress.failed.load(Ordering::Relaxed),
        progress.refused.load(Ordering::Relaxed),
        progress.closed_by_server.load(Ordering::Relaxed)
    );
    // The parent closes stdin when its measurement is over; the hold time bounds the wait.
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink)
    });
    let _ = tokio::time::timeout_at(end.into(), stdin_closed).await;
    stop.cancel();
    let fleet = collect(tasks, benches.len()).await?;
    let per_node: Vec<String> = fleet.opened_per_node.iter().map(usize::to_string).collect();
    // The close codes as one word ("4000×3,none×1"), so the line splits on spaces.
    println!(
        "done {} {} {} {} {}",
        fleet.still_open,
        fleet.pings,
        progress.closed_by_server.load(Ordering::Relaxed),
        progress.close_summary().replace(", ", ","),
        per_node.join(" ")
    );
    Ok(())
}
