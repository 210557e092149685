//! A cluster of real `livevote-server` processes for the cluster tests: N binaries on
//! loopback ports against one test database and one Redis (the machine's, with a prefix of the
//! test's own), with fixed secrets rather than `--dev` so that tokens hold across nodes and
//! restarts. A node can be SIGKILLed and restarted on its address; `/metrics` can be read for a
//! counter. Every wait is bounded, and dropping the cluster kills what is still running.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use uuid::Uuid;

use crate::binary_support;
use crate::postgres_support::TestDatabase;

/// Real secrets rather than `--dev`, which draws a new JWT secret at every start: a token
/// minted by one node must be good on every other node and after a restart.
pub const JWT_SECRET: &str = "cluster-test-jwt-secret-0123456789abcdef";
pub const API_KEY: &str = "cluster-test-api-key-0123456789";

const START_DEADLINE: Duration = Duration::from_secs(30);
const READY_DEADLINE: Duration = Duration::from_secs(20);

/// The machine's Redis, or `None` with the reason printed: the same check as in-process tests.
pub use crate::redis_support::shared_redis_or_skip;

/// One node: its process while it runs, its address (kept across restarts) and its log.
pub struct Node {
    child: Option<Child>,
    pub address: String,
    log: PathBuf,
}

impl Node {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    pub fn socket_url(&self, query: &str) -> String {
        format!("ws://{}/realtime{}", self.address, query)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The last few KiB of the node's log, for a failure message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        let start = (start..text.len())
            .find(|index| text.is_char_boundary(*index))
            .unwrap_or(text.len());
        text[start..].to_owned()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// N nodes of one cluster.
pub struct Cluster {
    pub nodes: Vec<Node>,
    arguments: Vec<String>,
    pub http: reqwest::Client,
    /// Where the nodes' logs are; kept after a failing test, for a look.
    pub log_dir: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The nodes first (their own Drop kills them), then their logs unless the test failed.
        self.nodes.clear();
        if std::thread::panicking() {
            eprintln!("the nodes' logs are in {}", self.log_dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.log_dir);
        }
    }
}

impl Cluster {
    /// Starts `count` nodes on `database` and `redis_url` with a fresh broker prefix, each
    /// with `extra` arguments, and waits until every one answers `/readyz` 200.
    pub async fn start(
        count: usize,
        database: &TestDatabase,
        redis_url: &str,
        extra: &[&str],
    ) -> Cluster {
        let prefix = format!("lv-cluster-{}", Uuid::new_v4().simple());
        let mut arguments: Vec<String> = [
            "--database-url",
            &database.url,
            "--broker-url",
            redis_url,
            "--broker-prefix",
            &prefix,
            "--jwt-secret",
            JWT_SECRET,
            "--api-key",
            API_KEY,
        ]
        .iter()
        .map(|argument| argument.to_string())
        .collect();
        arguments.extend(extra.iter().map(|argument| argument.to_string()));
        let log_dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&log_dir).expect("a log folder");
        let mut cluster = Cluster {
            nodes: Vec::new(),
            arguments,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("an HTTP client"),
            log_dir,
        };
        for index in 0..count {
            let log = cluster.log_dir.join(format!("node-{index}.log"));
            let node = cluster.spawn("127.0.0.1:0", log).await;
            cluster.nodes.push(node);
        }
        for index in 0..count {
            cluster.wait_ready(index).await;
        }
        cluster
    }

    async fn spawn(&self, listen: &str, log: PathBuf) -> Node {
        let mut arguments = vec!["--listen".to_owned(), listen.to_owned()];
        arguments.extend(self.arguments.iter().cloned());
        tokio::task::spawn_blocking(move || spawn_node(arguments, log))
            .await
            .expect("the spawning thread")
    }

    /// Waits (bounded) until node `index` answers `/readyz` 200.
    pub async fn wait_ready(&self, index: usize) {
        let node = &self.nodes[index];
        let started = Instant::now();
        loop {
            let status = self
                .http
                .get(node.url("/readyz"))
                .send()
                .await
                .map(|response| response.status().as_u16())
                .unwrap_or(0);
            if status == 200 {
                return;
            }
            assert!(
                started.elapsed() < READY_DEADLINE,
                "node {index} still answers /readyz {status} after {READY_DEADLINE:?}; log:\n{}",
                node.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs node `index` and reaps it; returns the moment it was certainly dead.
    pub fn kill_nine(&mut self, index: usize) -> DateTime<Utc> {
        let mut child = self.nodes[index].child.take().expect("the node runs");
        child.kill().expect("SIGKILL the node");
        child.wait().expect("reap the node");
        Utc::now()
    }

    /// Starts node `index` again on its old address and waits until it is ready.
    pub async fn restart(&mut self, index: usize) {
        assert!(!self.nodes[index].is_running(), "node {index} still runs");
        let address = self.nodes[index].address.clone();
        let log = self.nodes[index].log.clone();
        let node = self.spawn(&address, log).await;
        self.nodes[index] = node;
        self.wait_ready(index).await;
    }

    /// The sum of every sample of metric `name` (any labels) on node `index`; 0 when the
    /// node has not recorded it yet.
    pub async fn metric(&self, index: usize, name: &str) -> f64 {
        let text = self
            .http
            .get(self.nodes[index].url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("a metrics body");
        sample_sum(&text, name)
    }

    /// One labelled sample (`name{label}`, e.g. `quantile="0.99"`) on node `index`.
    pub async fn metric_sample(&self, index: usize, name: &str, label: &str) -> Option<f64> {
        let text = self
            .http
            .get(self.nodes[index].url("/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let wanted = format!("{name}{{{label}}}");
        text.lines().find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == wanted).then(|| value.parse().ok()).flatten()
        })
    }

    /// A token minted through node `index`'s `/api/auth` with the cluster's API key.
    pub async fn token(
        &self,
        index: usize,
        user: Uuid,
        role: &str,
        streamer: Option<Uuid>,
    ) -> String {
        binary_support::mint_token(
            &self.http,
            &self.nodes[index].address,
            API_KEY,
            user,
            role,
            streamer,
        )
        .await
    }
}

/// The sum of the samples of `name` (with or without labels) in a Prometheus text page.
fn sample_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let bare = key.split('{').next()?;
            (bare == name).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Starts the binary (no `LIVEVOTE_*` variables of the test's environment leak in) and waits,
/// bounded, for its `listening on http://ADDRESS` line.
fn spawn_node(arguments: Vec<String>, log: PathBuf) -> Node {
    let (child, address) = binary_support::spawn(&arguments, &log, START_DEADLINE);
    let mut node = Node {
        child: Some(child),
        address: String::new(),
        log,
    };
    match address {
        Some(address) => node.address = address,
        None => {
            let status = node
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            let tail = node.log_tail();
            drop(node);
            panic!(
                "no `listening on` line within {START_DEADLINE:?} (exit: {status:?}); log:\n{tail}"
            );
        }
    }
    node
}
