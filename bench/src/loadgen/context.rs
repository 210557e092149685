//! What every workload shares: where the server is, how to reach it (HTTP calls of the contract,
//! sockets from several source addresses), how to measure it (CPU and RSS meters), and how to
//! open many sockets at once with bounded concurrency, retries and deadlines.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use livevote_protocol::{
    AuthRequest, AuthResponse, BalanceResponse, CreditRequest, Event, EventEnvelope, EventOption,
    EventView, Role, Timestamp,
};
use rand::Rng;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::http::HttpConnection;
use crate::socket::{LiveSocket, OpenError, SocketTarget, WireMessage};
use crate::system::{own_cpu, sample_process, ProcessSample};

pub struct Bench {
    pub address: SocketAddr,
    pub server_pid: Option<u32>,
    pub api_key: String,
    /// The lean reference server: no events, votes or metrics; tokens are placeholders.
    pub reference: bool,
    pub sockets: SocketTarget,
    /// Sockets being opened at once (each holds a connect and handshake in flight).
    pub connect_concurrency: usize,
    /// This process's open-file limit, which bounds how many sockets one run can hold.
    pub open_file_limit: u64,
    /// Zero point for timestamps carried inside messages (same process sends and receives).
    pub epoch: Instant,
}

/// Resources used between two points in time.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub wall: Duration,
    /// Server CPU (user + system), when its pid is known.
    pub server_cpu: Option<Duration>,
    pub server_rss_kib: Option<u64>,
    pub own_cpu: Duration,
}

impl Usage {
    /// Server CPU as a share of one core (1.0 = one core busy the whole time).
    pub fn server_cores(&self) -> Option<f64> {
        self.server_cpu
            .map(|cpu| cpu.as_secs_f64() / self.wall.as_secs_f64().max(1e-9))
    }
    pub fn own_cores(&self) -> f64 {
        self.own_cpu.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Starts measuring now; [`Meter::finish`] gives the [`Usage`] since.
pub struct Meter {
    started: Instant,
    server: Option<ProcessSample>,
    own: Duration,
    pid: Option<u32>,
}

impl Meter {
    pub fn finish(&self) -> Usage {
        let server_now = self.pid.and_then(|pid| sample_process(pid).ok());
        Usage {
            wall: self.started.elapsed(),
            server_cpu: match (self.server, server_now) {
                (Some(before), Some(after)) => Some(after.cpu().saturating_sub(before.cpu())),
                _ => None,
            },
            server_rss_kib: server_now.map(|sample| sample.rss_kib),
            own_cpu: own_cpu().saturating_sub(self.own),
        }
    }
}

/// Counters shared by the tasks of one fleet of sockets.
#[derive(Debug, Default)]
pub struct Progress {
    /// Sockets that received SUBSCRIBED (their snapshot is complete).
    pub ready: AtomicUsize,
    /// Sockets that gave up opening before their deadline.
    pub failed: AtomicUsize,
    /// Upgrades answered with an HTTP error (503 from the connect-rate guard or cap).
    pub refused: AtomicU64,
    /// Sockets the server closed while the workload still wanted them.
    pub closed_by_server: AtomicUsize,
    /// How often each close code (or "none" for a dropped connection) ended a socket early.
    pub close_codes: std::sync::Mutex<std::collections::BTreeMap<String, usize>>,
}

impl Progress {
    /// Waits until each of the `opened` sockets is subscribed or has failed (or `deadline`
    /// passes), and records the outcome in `report` next to the count the options asked for
    /// (larger when the open-file limit cut the run down). Returns how many are subscribed.
    pub async fn wait_for_sockets(
        &self,
        what: &str,
        opened: usize,
        requested: usize,
        deadline: Instant,
        report: &mut crate::report::Report,
    ) -> usize {
        wait_until(what, opened, deadline, || {
            self.ready.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
        })
        .await;
        let ready = self.ready.load(Ordering::Relaxed);
        report.row(
            "sockets requested / subscribed / failed",
            format!(
                "{requested} / {ready} / {}",
                self.failed.load(Ordering::Relaxed)
            ),
        );
        ready
    }

    pub fn server_closed(&self, code: Option<u16>) {
        self.closed_by_server.fetch_add(1, Ordering::Relaxed);
        let code = code.map_or_else(|| "none".to_owned(), |code| code.to_string());
        let mut codes = self
            .close_codes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *codes.entry(code).or_default() += 1;
    }

    /// "4000×3, none×1" or "none".
    pub fn close_summary(&self) -> String {
        let codes = self
            .close_codes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if codes.is_empty() {
            return "none".into();
        }
        codes
            .iter()
            .map(|(code, count)| format!("{code}×{count}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Bench {
    /// An HTTP connection from the `index`-th source address.
    pub fn http(&self, index: usize) -> HttpConnection {
        HttpConnection::new(self.address, self.sockets.source_for(index))
    }

    pub fn meter(&self) -> Meter {
        Meter {
            started: Instant::now(),
            server: self.server_pid.and_then(|pid| sample_process(pid).ok()),
            own: own_cpu(),
            pid: self.server_pid,
        }
    }

    pub fn server_sample(&self) -> Option<ProcessSample> {
        self.server_pid.and_then(|pid| sample_process(pid).ok())
    }

    /// Nanoseconds since the epoch, the timestamp format carried inside benchmark notices.
    pub fn now_nanos(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn require_livevote(&self, workload: &str) -> anyhow::Result<()> {
        if self.reference {
            bail!("{workload} needs livevote's events and votes; the reference server only runs W1 and W3");
        }
        Ok(())
    }

    /// `POST /api/auth` for one user.
    pub async fn mint(
        &self,
        connection: &mut HttpConnection,
        user: Uuid,
        role: Role,
        streamer: Option<Uuid>,
    ) -> anyhow::Result<String> {
        let role = serde_json::to_value(role)?
            .as_str()
            .unwrap_or("viewer")
            .to_owned();
        let request = AuthRequest {
            api_key: self.api_key.clone(),
            user_id: user.to_string(),
            role,
            streamer_id: streamer.map(|id| id.to_string()),
            ttl_seconds: Some(6 * 3600),
        };
        let answer = connection.post_json("/api/auth", None, &request).await?;
        if !answer.status.is_success() {
            bail!(
                "/api/auth answered {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
        }
        Ok(serde_json::from_slice::<AuthResponse>(&answer.body)?.token)
    }

    /// Tokens for many users at once, over 16 keep-alive connections.
    pub async fn mint_many(
        self: &Arc<Self>,
        users: &[Uuid],
        role: Role,
    ) -> anyhow::Result<Vec<String>> {
        let users: Arc<Vec<Uuid>> = Arc::new(users.to_vec());
        let next = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for worker in 0..16 {
            let (bench, users, next) = (self.clone(), users.clone(), next.clone());
            workers.push(tokio::spawn(async move {
                let mut connection = bench.http(worker);
                let mut minted = Vec::new();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(user) = users.get(index) else { break };
                    minted.push((index, bench.mint(&mut connection, *user, role, None).await?));
                }
                anyhow::Ok(minted)
            }));
        }
        let mut tokens = vec![String::new(); users.len()];
        for worker in workers {
            for (index, token) in worker.await?? {
                tokens[index] = token;
            }
        }
        Ok(tokens)
    }

    /// Creates an open event for `streamer` with two options `a` and `b`, one vote costing 1.
    pub async fn create_event(
        &self,
        connection: &mut HttpConnection,
        worker_token: &str,
        streamer: Uuid,
        closes_at: chrono::DateTime<chrono::Utc>,
        title: &str,
    ) -> anyhow::Result<Uuid> {
        let event = Event {
            id: Uuid::new_v4(),
            streamer_id: streamer,
            game_id: None,
            title: title.to_owned(),
            options: vec![
                EventOption {
                    id: "a".into(),
                    label: "Option A".into(),
                },
                EventOption {
                    id: "b".into(),
                    label: "Option B".into(),
                },
            ],
            closes_at: Timestamp(closes_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            cost_per_vote: 1,
            prompt_versions: None,
        };
        let answer = connection
            .post_json("/api/events", Some(worker_token), &event)
            .await?;
        if !answer.status.is_success() {
            bail!(
                "POST /api/events answered {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
        }
        Ok(serde_json::from_slice::<EventEnvelope>(&answer.body)?
            .event
            .id)
    }

    pub async fn get_event(
        &self,
        connection: &mut HttpConnection,
        token: &str,
        event: Uuid,
    ) -> anyhow::Result<EventView> {
        let answer = connection
            .get(&format!("/api/events/{event}"), Some(token))
            .await?;
        if !answer.status.is_success() {
            bail!("GET /api/events/{event} answered {}", answer.status);
        }
        Ok(serde_json::from_slice(&answer.body)?)
    }

    /// Admin credit; returns the new balance.
    pub async fn credit(
        &self,
        connection: &mut HttpConnection,
        admin_token: &str,
        user: Uuid,
        amount: i64,
    ) -> anyhow::Result<i64> {
        let request = CreditRequest {
            user_id: user.to_string(),
            amount,
            reason: "benchmark".into(),
        };
        let answer = connection
            .post_json("/api/ledger/credit", Some(admin_token), &request)
            .await?;
        if !answer.status.is_success() {
            bail!(
                "/api/ledger/credit answered {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
        }
        Ok(serde_json::from_slice::<BalanceResponse>(&answer.body)?.balance)
    }

    pub async fn balance(
        &self,
        connection: &mut HttpConnection,
        token: &str,
    ) -> anyhow::Result<i64> {
        let answer = connection.get("/api/balance", Some(token)).await?;
        if !answer.status.is_success() {
            bail!("/api/balance answered {}", answer.status);
        }
        Ok(serde_json::from_slice::<BalanceResponse>(&answer.body)?.balance)
    }

    /// The sum of a Prometheus metric's samples (all label sets), `None` if it is not exported.
    pub async fn metric(
        &self,
        connection: &mut HttpConnection,
        name: &str,
    ) -> anyhow::Result<Option<f64>> {
        let answer = connection.get("/metrics", None).await?;
        if !answer.status.is_success() {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&answer.body);
        let mut found = None;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                continue;
            }
            if let Some(value) = rest
                .rsplit(' ')
                .next()
                .and_then(|value| value.parse::<f64>().ok())
            {
                *found.get_or_insert(0.0) += value;
            }
        }
        Ok(found)
    }

    /// [`Bench::open_subscribed`] while holding a place at the connect `gate` (which paces
    /// connects), counting the socket as ready once subscribed, or as failed.
    pub async fn open_through_gate(
        &self,
        gate: Arc<Semaphore>,
        index: usize,
        path: &str,
        deadline: Instant,
        stop: &CancellationToken,
        progress: &Progress,
    ) -> Option<LiveSocket> {
        let permit = gate.acquire_owned().await;
        let socket = self
            .open_subscribed(index, path, deadline, stop, progress, |_, _| {})
            .await;
        drop(permit);
        let counter = if socket.is_some() {
            &progress.ready
        } else {
            &progress.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        socket
    }

    /// Opens socket `index` on `path` and reads its snapshot up to SUBSCRIBED, retrying refused
    /// or failed opens (honouring Retry-After, with jitter) until `deadline`. `each` sees every
    /// message of the snapshot.
    pub async fn open_subscribed(
        &self,
        index: usize,
        path: &str,
        deadline: Instant,
        stop: &CancellationToken,
        progress: &Progress,
        mut each: impl FnMut(Instant, &WireMessage<'_>),
    ) -> Option<LiveSocket> {
        let mut attempts = 0u32;
        while Instant::now() < deadline && !stop.is_cancelled() && attempts < 1_000 {
            attempts += 1;
            let wait = match LiveSocket::open(&self.sockets, index, path).await {
                Ok(mut socket) => {
                    if socket.await_subscribed(deadline, stop, &mut each).await {
                        return Some(socket);
                    }
                    // Closed before its snapshot completed (or ran out of time): try again.
                    Duration::from_millis(200)
                }
                Err(OpenError::Refused { retry_after, .. }) => {
                    progress.refused.fetch_add(1, Ordering::Relaxed);
                    retry_after
                        .unwrap_or(Duration::from_secs(1))
                        .min(Duration::from_secs(5))
                }
                Err(OpenError::Failed(_)) => Duration::from_millis(200),
            };
            // Jitter keeps retries from arriving in one wave again.
            let jitter = Duration::from_millis(rand::thread_rng().gen_range(0..500));
            tokio::time::sleep(
                (wait + jitter).min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
        }
        None
    }
}

/// Waits until `count()` reaches `expected` or `deadline` passes, printing progress to stderr.
pub async fn wait_until(
    what: &str,
    expected: usize,
    deadline: Instant,
    count: impl Fn() -> usize,
) -> usize {
    let mut last_print = Instant::now();
    loop {
        let now_count = count();
        if now_count >= expected || Instant::now() >= deadline {
            eprintln!("{what}: {now_count}/{expected}");
            return now_count;
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            eprintln!("{what}: {now_count}/{expected}");
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The source addresses 127.0.0.2 … 127.0.0.(count + 1).
pub fn loopback_sources(count: usize) -> Vec<IpAddr> {
    (0..count.min(250))
        .map(|offset| IpAddr::from([127, 0, 0, 2 + offset as u8]))
        .collect()
}

/// Checks that `sockets` fit in this process's open-file limit (and the server's, when known),
/// returning how many can be opened and a note when the request had to be cut down.
pub fn fit_sockets(bench: &Bench, sockets: usize) -> (usize, Option<String>) {
    // Room for HTTP connections, the runtime and a spawned server's pipes.
    const RESERVE: u64 = 400;
    let mut limit = bench.open_file_limit.saturating_sub(RESERVE);
    let mut whose = "the load generator's";
    if let Some(server_limit) = bench.server_pid.and_then(crate::system::open_file_limit_of) {
        if server_limit.saturating_sub(RESERVE) < limit {
            limit = server_limit.saturating_sub(RESERVE);
            whose = "the server's";
        }
    }
    if (sockets as u64) <= limit {
        (sockets, None)
    } else {
        let fitted = usize::try_from(limit).unwrap_or(usize::MAX);
        (
            fitted,
            Some(format!(
                "asked for {sockets} sockets but {whose} open-file limit allows about {fitted} (RLIMIT_NOFILE; raising the hard limit needs CAP_SYS_RESOURCE); ran {fitted}"
            )),
        )
    }
}

/// Shared semaphore for opening sockets; one permit per open in flight.
pub fn open_gate(bench: &Bench) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(bench.connect_concurrency.max(1)))
}

/// Turns a join error into an error, so a panicking socket task is reported rather than ignored.
pub fn joined<T>(result: Result<T, tokio::task::JoinError>) -> anyhow::Result<T> {
    result.map_err(|error| anyhow!("socket task failed: {error}"))
}

/// The `/realtime` path for one socket.
pub fn realtime_path(streamer: Uuid, token: &str) -> String {
    format!("/realtime?streamerId={streamer}&token={token}")
}

/// Ensures the server answers `/healthz` before a workload starts.
pub async fn await_healthy(bench: &Bench) -> anyhow::Result<()> {
    let mut connection = bench.http(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match connection.get("/healthz", None).await {
            Ok(answer) if answer.status.is_success() => return Ok(()),
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            Ok(answer) => bail!("/healthz answered {}", answer.status),
            Err(error) => return Err(error).context("/healthz"),
        }
    }
}
