//! livevote-loadgen: drives livevote (or the lean reference server) through the benchmark
//! workloads W1–W5 of issue 5 over loopback, and reports what the server and the load generator
//! itself spent doing it. Every loop is bounded in count and time; the run stops by itself.
//!
//! Run against a server already listening (`--server http://ADDR --server-pid PID`), or let it
//! spawn one: `livevote-loadgen w1 --sockets 10000 -- target/release/livevote-server --dev …`.
//! The cluster workloads (issue 11) always spawn their nodes, sharing a database and a Redis
//! prefix of the run's own: `livevote-loadgen cluster-votes --nodes 3 -- target/release/livevote-server --dev …`.

mod cluster;
mod context;
mod histogram;
mod http;
mod report;
mod socket;
mod system;
mod target;
mod workloads;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::{Args, Parser, Subcommand};

use crate::context::{await_healthy, loopback_sources, Bench};
use crate::report::Report;
use crate::socket::SocketTarget;
use crate::target::SpawnedServer;

#[derive(Debug, Parser)]
#[command(
    name = "livevote-loadgen",
    about = "Load generator for livevote's benchmark workloads W1–W5"
)]
struct Cli {
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Debug, Subcommand)]
enum Workload {
    /// Idle sockets spread over streamer channels: server RSS per socket, CPU while idle.
    W1(WithCommon<workloads::w1::Options>),
    /// Vote storm over HTTP while sockets watch the totals: votes/s, update frames, latency, ledger.
    W2(WithCommon<workloads::w2::Options>),
    /// Fan-out of admin notices to one channel at rising rates: deliveries/s, CPU per delivery.
    W3(WithCommon<workloads::w3::Options>),
    /// Reconnect storm: every socket dropped and reopened at once: time to snapshots, DB queries.
    W4(WithCommon<workloads::w4::Options>),
    /// Event close: EVENT_CLOSED delay after closesAt across many subscribers.
    W5(WithCommon<workloads::w5::Options>),
    /// Cluster: durable votes/s on one hot event over several nodes sharing Postgres, latency,
    /// and an exact SQL audit of the ledger.
    ClusterVotes(WithCluster<workloads::cluster_votes::Options>),
    /// Cluster: from a commit on the first node to the frame on a socket of the last node.
    ClusterLatency(WithCluster<workloads::cluster_latency::Options>),
    /// Cluster: idle sockets spread over the nodes: RSS per socket per node, idle CPU.
    ClusterSockets(WithCluster<workloads::cluster_sockets::Options>),
    /// Helper of cluster-sockets: holds a share of its sockets in a process of its own.
    HoldSockets(workloads::socket_holder::HoldOptions),
}

#[derive(Debug, Args)]
struct WithCluster<T: Args> {
    #[command(flatten)]
    options: T,
    #[command(flatten)]
    cluster: cluster::ClusterOptions,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct WithCommon<T: Args> {
    #[command(flatten)]
    options: T,
    #[command(flatten)]
    common: Common,
}

/// Options every workload shares.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Base URL of a server that is already running (ignored when a command is given after `--`).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// That server's pid, for its RSS and CPU from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The key for `/api/auth`; a `--dev` server needs none.
    #[arg(
        long,
        env = "LIVEVOTE_API_KEY",
        default_value = "",
        hide_env_values = true
    )]
    api_key: String,
    /// The server is livevote-reference (no auth, events or metrics).
    #[arg(long)]
    reference: bool,
    /// Loopback source addresses for sockets (127.0.0.2 …), each good for ~28,000 ports.
    #[arg(long, default_value_t = 8)]
    sources: usize,
    /// Read buffer per socket in the load generator.
    #[arg(long, default_value_t = 4096)]
    read_buffer_size: usize,
    /// Sockets opening at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Name used in the report's title and the summary keys (e.g. `livevote`, `reference`).
    #[arg(long, default_value = "livevote")]
    label: String,
    /// Append `key value` lines for programs to this file.
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Where a spawned server's output goes.
    #[arg(long, default_value = "/tmp/livevote-bench-server.log")]
    server_log: PathBuf,
    /// Server command to spawn for this run (program and arguments after `--`); it must print
    /// `listening on http://ADDR`. It is stopped with SIGTERM when the workload ends. For the
    /// cluster workloads each node runs it with `--listen`, `--database-url`, `--broker-url`,
    /// `--broker-prefix` and `--jwt-secret` appended (so leave those out).
    #[arg(last = true)]
    spawn: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Raised before the runtime starts so a spawned server inherits it too.
    let open_file_limit = system::raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(cli, open_file_limit))
}

async fn run(cli: Cli, open_file_limit: u64) -> anyhow::Result<()> {
    let common = match &cli.workload {
        Workload::W1(with) => with.common.clone(),
        Workload::W2(with) => with.common.clone(),
        Workload::W3(with) => with.common.clone(),
        Workload::W4(with) => with.common.clone(),
        Workload::W5(with) => with.common.clone(),
        Workload::HoldSockets(options) => {
            return workloads::socket_holder::hold(options, open_file_limit).await
        }
        Workload::ClusterVotes(WithCluster {
            common, cluster, ..
        })
        | Workload::ClusterLatency(WithCluster {
            common, cluster, ..
        })
        | Workload::ClusterSockets(WithCluster {
            common, cluster, ..
        }) => return run_cluster(&cli.workload, common, cluster, open_file_limit).await,
    };
    let spawned = if common.spawn.is_empty() {
        None
    } else {
        Some(SpawnedServer::start(&common.spawn, &common.server_log).await?)
    };
    let (address, server_pid) = match &spawned {
        Some(server) => (server.address, Some(server.pid)),
        None => (parse_server(&common.server)?, common.server_pid),
    };
    let bench = Arc::new(Bench {
        address,
        server_pid,
        api_key: common.api_key.clone(),
        reference: common.reference,
        sockets: SocketTarget {
            address,
            sources: loopback_sources(common.sources),
            read_buffer_size: common.read_buffer_size,
            open_timeout: Duration::from_secs(20),
        },
        connect_concurrency: common.connect_concurrency,
        open_file_limit,
        epoch: Instant::now(),
    });
    let outcome = async {
        await_healthy(&bench).await?;
        let load_before = system::load_average();
        let mut report = match &cli.workload {
            Workload::W1(with) => workloads::w1::run(&bench, &with.options, &common.label).await?,
            Workload::W2(with) => workloads::w2::run(&bench, &with.options, &common.label).await?,
            Workload::W3(with) => workloads::w3::run(&bench, &with.options, &common.label).await?,
            Workload::W4(with) => workloads::w4::run(&bench, &with.options, &common.label).await?,
            Workload::W5(with) => workloads::w5::run(&bench, &with.options, &common.label).await?,
            Workload::ClusterVotes(_)
            | Workload::ClusterLatency(_)
            | Workload::ClusterSockets(_)
            | Workload::HoldSockets(_) => {
                return Err(anyhow!("the cluster workloads run through run_cluster"))
            }
        };
        report.row(
            "load average before / after (1, 5, 15 min)",
            format!("{load_before} / {}", system::load_average()),
        );
        anyhow::Ok(report)
    }
    .await;
    let stopped = match spawned {
        Some(server) => Some(server.stop().await),
        None => None,
    };
    let mut report: Report = outcome?;
    if let Some(exit) = stopped {
        report.row("spawned server exit after SIGTERM", exit);
    }
    report.finish(common.summary.as_ref())
}

/// Starts a cluster (`--nodes` copies of the command after `--`), runs the cluster workload on
/// it, and always stops the nodes and drops the run's database afterwards, also when the
/// workload failed.
async fn run_cluster(
    workload: &Workload,
    common: &Common,
    options: &cluster::ClusterOptions,
    open_file_limit: u64,
) -> anyhow::Result<()> {
    let settings = cluster::BenchSettings {
        api_key: common.api_key.clone(),
        sources: common.sources,
        read_buffer_size: common.read_buffer_size,
        connect_concurrency: common.connect_concurrency,
        open_file_limit,
    };
    let nodes = match workload {
        Workload::ClusterVotes(with) => with.options.nodes,
        Workload::ClusterLatency(with) => with.options.nodes,
        Workload::ClusterSockets(with) => with.options.nodes,
        _ => 1,
    };
    let mut cluster =
        cluster::Cluster::start(nodes, &common.spawn, options, &common.server_log, &settings)
            .await?;
    let load_before = system::load_average();
    let label = common.label.as_str();
    let outcome = match workload {
        Workload::ClusterVotes(with) => {
            workloads::cluster_votes::run(&cluster, &with.options, label).await
        }
        Workload::ClusterLatency(with) => {
            workloads::cluster_latency::run(&cluster, &with.options, label).await
        }
        Workload::ClusterSockets(with) => {
            workloads::cluster_sockets::run(&cluster, &with.options, label).await
        }
        _ => Err(anyhow!("not a cluster workload")),
    };
    let load_after = system::load_average();
    let (exits, dropped) = cluster.stop().await;
    let mut report = outcome?;
    report.row(
        "load average before / after (1, 5, 15 min)",
        format!("{load_before} / {load_after}"),
    );
    report.row("spawned nodes' exit after SIGTERM", exits);
    report.row("the run's database afterwards", dropped);
    report.finish(common.summary.as_ref())
}

fn parse_server(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("--server must start with http://"))?;
    rest.trim_end_matches('/')
        .parse()
        .with_context(|| format!("--server {url}: expected http://IP:PORT"))
}
