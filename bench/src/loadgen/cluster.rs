//! A cluster of the run's own for the cluster workloads: a PostgreSQL database created for the
//! run (`livevote_bench_<random>`, dropped afterwards), a Redis prefix of its own, one JWT
//! secret for every node (a token minted on one node is good on all), and N livevote-server
//! processes on loopback ports started from one command line, each waited for until `/readyz`
//! answers 200, and stopped with SIGTERM at the end. Also the SQL audit of the ledger.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, Row};
use uuid::Uuid;

use crate::context::Bench;
use crate::report::Report;
use crate::socket::SocketTarget;
use crate::system::{sample_process, ProcessSample};
use crate::target::SpawnedServer;

/// Where the cluster's shared services are; every cluster workload takes these.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterOptions {
    /// A PostgreSQL database to connect to for creating (and afterwards dropping) the run's own
    /// database `livevote_bench_<random>`.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub postgres_url: String,
    /// The Redis every node publishes to, under a prefix of the run's own.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
}

/// How long a node may take to answer `/readyz` 200 after printing its address.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The run's own database.
pub struct RunDatabase {
    pub name: String,
    pub url: String,
    admin: PgConnectOptions,
}

impl RunDatabase {
    pub async fn create(admin_url: &str) -> anyhow::Result<RunDatabase> {
        let admin = PgConnectOptions::from_str(admin_url)
            .with_context(|| format!("--postgres-url {admin_url}"))?;
        let mut connection = tokio::time::timeout(Duration::from_secs(5), admin.connect())
            .await
            .map_err(|_| anyhow::anyhow!("Postgres at {admin_url} did not answer within 5 s"))?
            .with_context(|| format!("connecting to Postgres at {admin_url}"))?;
        let name = format!("livevote_bench_{}", Uuid::new_v4().simple());
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut connection)
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        connection.close().await.ok();
        let url = admin.clone().database(&name).to_url_lossy().to_string();
        Ok(RunDatabase { name, url, admin })
    }

    pub async fn connect(&self) -> anyhow::Result<PgConnection> {
        Ok(PgConnection::connect(&self.url).await?)
    }

    /// Drops the database (the nodes should be stopped by now; FORCE ends any straggler).
    pub async fn drop_database(&self) -> String {
        let outcome = async {
            let mut connection = self.admin.connect().await?;
            sqlx::raw_sql(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut connection)
            .await?;
            connection.close().await?;
            anyhow::Ok(())
        }
        .await;
        match outcome {
            Ok(()) => format!("dropped {}", self.name),
            Err(error) => format!("could not drop {}: {error}", self.name),
        }
    }
}

pub struct Cluster {
    pub database: RunDatabase,
    pub prefix: String,
    nodes: Vec<SpawnedServer>,
    /// One [`Bench`] per node, reaching that node and metering its process.
    pub benches: Vec<Arc<Bench>>,
    /// Node 0's command line, as run (the others differ only in their log file).
    pub node_command: String,
}

/// Everything a [`Bench`] needs besides its node's address and pid.
pub struct BenchSettings {
    pub api_key: String,
    pub sources: usize,
    pub read_buffer_size: usize,
    pub connect_concurrency: usize,
    pub open_file_limit: u64,
}

impl Cluster {
    /// Creates the database and starts `nodes` copies of `command` with the cluster's
    /// `--listen`, `--database-url`, `--broker-url`, `--broker-prefix` and `--jwt-secret`
    /// appended. On failure whatever was started is stopped and the database dropped.
    pub async fn start(
        nodes: usize,
        command: &[String],
        options: &ClusterOptions,
        log: &Path,
        settings: &BenchSettings,
    ) -> anyhow::Result<Cluster> {
        if command.is_empty() {
            bail!("the cluster workloads need the node command after `--` (e.g. -- target/release/livevote-server --dev)");
        }
        let database = RunDatabase::create(&options.postgres_url).await?;
        let suffix = Uuid::new_v4().simple().to_string();
        let prefix = format!("livevote-bench-{}", &suffix[..12]);
        let mut cluster = Cluster {
            database,
            prefix,
            nodes: Vec::new(),
            benches: Vec::new(),
            node_command: String::new(),
        };
        let started = cluster
            .start_nodes(nodes.max(1), command, options, log, settings)
            .await;
        match started {
            Ok(()) => Ok(cluster),
            Err(error) => {
                let (exits, dropped) = cluster.stop().await;
                Err(error.context(format!("nodes: {exits}; database: {dropped}")))
            }
        }
    }

    async fn start_nodes(
        &mut self,
        nodes: usize,
        command: &[String],
        options: &ClusterOptions,
        log: &Path,
        settings: &BenchSettings,
    ) -> anyhow::Result<()> {
        // Shared by every node, so tokens minted anywhere are accepted everywhere.
        let secret = format!(
            "bench-{}{}",
            Uuid::new_v4().simple(),
            Uuid::new_v4().simple()
        );
        let mut full: Vec<String> = command.to_vec();
        full.extend(
            [
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                &self.database.url,
                "--broker-url",
                &options.redis_url,
                "--broker-prefix",
                &self.prefix,
                "--jwt-secret",
                &secret,
            ]
            .map(str::to_owned),
        );
        self.node_command = full
            .iter()
            .map(|argument| {
                if argument == &secret {
                    "<random secret>".to_owned()
                } else {
                    argument.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        let epoch = Instant::now();
        for node in 0..nodes {
            let server = SpawnedServer::start(&full, &node_log(log, node)).await?;
            let bench = Arc::new(Bench {
                address: server.address,
                server_pid: Some(server.pid),
                api_key: settings.api_key.clone(),
                reference: false,
                sockets: SocketTarget {
                    address: server.address,
                    sources: crate::context::loopback_sources(settings.sources),
                    read_buffer_size: settings.read_buffer_size,
                    open_timeout: Duration::from_secs(20),
                },
                connect_concurrency: settings.connect_concurrency,
                open_file_limit: settings.open_file_limit,
                epoch,
            });
            self.nodes.push(server);
            self.benches.push(bench);
        }
        for (node, bench) in self.benches.iter().enumerate() {
            await_ready(bench)
                .await
                .with_context(|| format!("node {node} at {}", bench.address))?;
        }
        Ok(())
    }

    /// The pids of the PostgreSQL backends serving the run's database now (the nodes' writers
    /// and readers), for their CPU; empty when Postgres does not say.
    pub async fn postgres_backends(&self) -> Vec<u32> {
        let Ok(mut connection) = self.database.connect().await else {
            return Vec::new();
        };
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(&mut connection)
        .await
        .unwrap_or_default();
        connection.close().await.ok();
        pids.into_iter()
            .filter_map(|pid| u32::try_from(pid).ok())
            .collect()
    }

    /// The sum over every node of a Prometheus metric from `/metrics` (`None` if no node has it).
    pub async fn metric_sum(&self, name: &str) -> Option<f64> {
        let mut total = None;
        for bench in &self.benches {
            let mut connection = bench.http(2);
            if let Ok(Some(value)) = bench.metric(&mut connection, name).await {
                *total.get_or_insert(0.0) += value;
            }
        }
        total
    }

    /// Stops every node (SIGTERM) and drops the database; returns the exits and the drop.
    pub async fn stop(&mut self) -> (String, String) {
        let mut exits = Vec::new();
        for server in self.nodes.drain(..) {
            exits.push(server.stop().await);
        }
        self.benches.clear();
        let dropped = self.database.drop_database().await;
        let exits = if exits.iter().all(|exit| exit == "exit status: 0") {
            format!("exit status: 0 (all {})", exits.len())
        } else {
            exits.join(", ")
        };
        (exits, dropped)
    }

    /// Every node's process now, in node order (`None` where /proc cannot be read).
    pub fn samples(&self) -> Vec<Option<ProcessSample>> {
        self.nodes
            .iter()
            .map(|server| sample_process(server.pid).ok())
            .collect()
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Rows every cluster report starts with.
    pub fn describe(&self, report: &mut Report) {
        report.row("nodes", self.node_count().to_string());
        report.row(
            "node addresses",
            self.benches
                .iter()
                .map(|bench| bench.address.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        );
        report.row("node command (node 0)", format!("`{}`", self.node_command));
        report.row(
            "database / Redis prefix (the run's own)",
            format!("{} / {}", self.database.name, self.prefix),
        );
    }
}

/// `server.log` → `server-node2.log`.
fn node_log(log: &Path, node: usize) -> PathBuf {
    let stem = log
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_else(|| "server".into());
    let extension = log
        .extension()
        .map(|extension| format!(".{}", extension.to_string_lossy()))
        .unwrap_or_default();
    log.with_file_name(format!("{stem}-node{node}{extension}"))
}

/// Waits for `/readyz` 200: the node's store and broker work and it trusts its view.
async fn await_ready(bench: &Bench) -> anyhow::Result<()> {
    let mut connection = bench.http(0);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let status = connection
            .get("/readyz", None)
            .await
            .map(|answer| answer.status.as_u16());
        match status {
            Ok(200) => return Ok(()),
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(status) => bail!("/readyz still answered {status} after {READY_TIMEOUT:?}"),
            Err(error) => return Err(error).context("/readyz"),
        }
    }
}

/// Samples of the given processes (`None` for one that is gone).
pub fn sample_pids(pids: &[u32]) -> Vec<Option<ProcessSample>> {
    pids.iter().map(|pid| sample_process(*pid).ok()).collect()
}

/// CPU seconds of the sampled processes between two samplings, summed (nodes missing from
/// either sampling count 0).
pub fn cpu_between(before: &[Option<ProcessSample>], after: &[Option<ProcessSample>]) -> Duration {
    before
        .iter()
        .zip(after)
        .filter_map(|(before, after)| match (before, after) {
            (Some(before), Some(after)) => Some(after.cpu().saturating_sub(before.cpu())),
            _ => None,
        })
        .sum()
}

/// What the SQL audit found. Zero everywhere but the sums is a clean ledger.
#[derive(Debug, Default)]
pub struct Audit {
    /// (event, option) pairs whose stored totals differ from the sum of their ledger votes.
    pub totals_off: i64,
    /// Users whose latest balance is not the sum of their entries.
    pub balances_off: i64,
    /// Users with a negative sum or a negative balance on any entry.
    pub below_zero: i64,
    /// Per user: (votes in vote_debit entries, sum of all amounts).
    pub per_user: HashMap<Uuid, (i64, i64)>,
    /// Per event: votes in its vote_debit entries.
    pub votes_per_event: HashMap<Uuid, i64>,
    /// Vote entries in the ledger.
    pub vote_entries: i64,
    /// Idempotency keys stored for votes.
    pub vote_keys: i64,
}

impl Audit {
    pub async fn run(database: &RunDatabase) -> anyhow::Result<Audit> {
        let mut connection = database.connect().await?;
        let totals_off = sqlx::query_scalar(
            "SELECT count(*) FROM events AS e, json_each_text(e.totals::json) AS t(option_id, n)
             WHERE t.n::bigint <> COALESCE((SELECT sum(l.votes) FROM ledger AS l
                 WHERE l.event_id = e.id AND l.option_id = t.option_id), 0)",
        )
        .fetch_one(&mut connection)
        .await?;
        let balances_off = sqlx::query_scalar(
            "SELECT count(*) FROM ledger AS l WHERE l.id = (SELECT max(id) FROM ledger
             WHERE user_id = l.user_id) AND l.balance <> (SELECT sum(amount) FROM ledger
             WHERE user_id = l.user_id)",
        )
        .fetch_one(&mut connection)
        .await?;
        let below_zero = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT user_id, sum(amount) AS total, min(balance) AS lowest
             FROM ledger GROUP BY user_id) AS sums WHERE total < 0 OR lowest < 0",
        )
        .fetch_one(&mut connection)
        .await?;
        let mut per_user = HashMap::new();
        for row in sqlx::query(
            "SELECT user_id, (COALESCE(sum(votes), 0))::bigint, (sum(amount))::bigint
             FROM ledger GROUP BY user_id",
        )
        .fetch_all(&mut connection)
        .await?
        {
            per_user.insert(row.try_get(0)?, (row.try_get(1)?, row.try_get(2)?));
        }
        let mut votes_per_event = HashMap::new();
        for row in sqlx::query(
            "SELECT event_id, (sum(votes))::bigint FROM ledger WHERE kind = 'vote_debit'
             GROUP BY event_id",
        )
        .fetch_all(&mut connection)
        .await?
        {
            votes_per_event.insert(row.try_get(0)?, row.try_get(1)?);
        }
        let vote_entries =
            sqlx::query_scalar("SELECT count(*) FROM ledger WHERE kind = 'vote_debit'")
                .fetch_one(&mut connection)
                .await?;
        let vote_keys =
            sqlx::query_scalar("SELECT count(*) FROM idempotency_keys WHERE kind = 'vote'")
                .fetch_one(&mut connection)
                .await?;
        connection.close().await.ok();
        Ok(Audit {
            totals_off,
            balances_off,
            below_zero,
            per_user,
            votes_per_event,
            vote_entries,
            vote_keys,
        })
    }

    /// The three ledger invariants as report rows; true when all hold.
    pub fn invariant_rows(&self, report: &mut Report) -> bool {
        report.row(
            "audit: (event, option) totals ≠ Σ ledger votes",
            self.totals_off.to_string(),
        );
        report.row(
            "audit: users whose balance ≠ Σ their entries",
            self.balances_off.to_string(),
        );
        report.row(
            "audit: users with a balance below 0",
            self.below_zero.to_string(),
        );
        self.totals_off == 0 && self.balances_off == 0 && self.below_zero == 0
    }
}

/// Busy CPU of the whole machine (all processes, all cores) from /proc/stat, in seconds.
pub fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user): busy is
    // all of those but idle and iowait.
    let busy: u64 = fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(index, _)| *index != 3 && *index != 4)
        .map(|(_, ticks)| ticks)
        .sum();
    let per_second = match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => ticks as u64,
        _ => 100,
    };
    Some(Duration::from_secs_f64(busy as f64 / per_second as f64))
}
