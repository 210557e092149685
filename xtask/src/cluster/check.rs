//! `cargo xtask cluster --check`: a bounded smoke test of the cluster as people run it. Three
//! real nodes on a database and a Redis prefix of their own, HAProxy in front; everything goes
//! through the balancer's one URL, as the SDK does. Votes reach sockets on every node; a node
//! stopped gracefully and another killed with SIGKILL under the balancer lose no answered vote,
//! their sockets reconnect through the balancer to correct totals, and a restarted node rejoins.
//! Skips, saying why, when PostgreSQL or Redis does not answer.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};
use uuid::Uuid;

use super::{
    build_server, drop_database, ensure_database, haproxy, http_text, random_hex, Cluster, Node,
    NodeSettings, Options, Profile, Secrets,
};
use crate::{tools, workspace_root};

const NODES: usize = 3;
/// Sockets through the balancer: leastconn gives each node two.
const SOCKETS: usize = 6;
/// How long any one expectation may take before the check fails.
const WITHIN: Duration = Duration::from_secs(15);

pub fn run(options: &Options) -> Result<()> {
    if let Err(reason) = postgres_answers(&options.postgres) {
        println!("skipping the cluster check: {reason}");
        return Ok(());
    }
    if let Err(reason) = redis_answers(&options.redis) {
        println!("skipping the cluster check: {reason}");
        return Ok(());
    }
    haproxy::ensure_installed()?;
    let root = workspace_root();
    let binary = build_server(&root, Profile::Debug)?;
    let suffix = random_hex(6)?;
    let database = format!("livevote_cluster_check_{suffix}");
    ensure_database(&options.postgres, &database)?;
    // Declared before the cluster, so dropped after it: the nodes stop first.
    let _database = DroppedAtEnd {
        postgres: options.postgres.clone(),
        database: database.clone(),
    };
    let folder = tools::target_dir(&root).join(format!("cluster-check-{suffix}"));
    std::fs::create_dir_all(&folder)?;
    let secrets = Secrets::random()?;
    let api_key = secrets.api_key.clone();
    let mut cluster = Cluster {
        binary,
        folder: folder.clone(),
        settings: NodeSettings {
            database_url: format!("{}/{database}", options.postgres),
            redis: options.redis.clone(),
            prefix: format!("livevote-check-{suffix}"),
            secrets,
            demo_assets: None,
        },
        nodes: (0..NODES)
            .map(|_| free_port().map(Node::new))
            .collect::<Result<_>>()?,
        balancer: None,
        balancer_port: free_port()?,
        stats_port: free_port()?,
    };
    cluster.start()?;
    let outcome = scenario(&mut cluster, &api_key);
    drop(cluster);
    match outcome {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&folder);
            println!("cluster check: passed");
            Ok(())
        }
        Err(error) => Err(error.context(format!(
            "the cluster check failed; the nodes' and HAProxy's logs are in {}",
            folder.display()
        ))),
    }
}

fn scenario(cluster: &mut Cluster, api_key: &str) -> Result<()> {
    let api = Api {
        base: cluster.balancer_url(),
        api_key: api_key.to_owned(),
    };
    let streamer = Uuid::new_v4();
    let viewer_id = Uuid::new_v4();
    let worker = api.token(Uuid::new_v4(), "worker")?;
    let admin = api.token(Uuid::new_v4(), "admin")?;
    let viewer = api.token(viewer_id, "viewer")?;
    api.credit(&admin, viewer_id, 1_000)?;
    let event = api.create_event(&worker, streamer)?;
    let socket_url = format!(
        "ws://127.0.0.1:{}/realtime?token={viewer}&streamerId={streamer}",
        cluster.balancer_port
    );
    let mut watchers = (0..SOCKETS)
        .map(|_| Watcher::connect(&socket_url))
        .collect::<Result<Vec<_>>>()?;

    println!("cluster check: votes through the balancer reach the sockets on every node");
    let mut answered = 0;
    for _ in 0..6 {
        api.vote(&viewer, event)?;
        answered += 1;
    }
    for watcher in &mut watchers {
        watcher.wait_for_total(event, answered)?;
    }

    println!("cluster check: node 1 stopped gracefully under the balancer");
    cluster.stop_node(0, true)?;
    for _ in 0..4 {
        api.vote(&viewer, event)?;
        answered += 1;
    }
    for watcher in &mut watchers {
        watcher.wait_for_total(event, answered)?;
    }
    let moved: u32 = watchers.iter().map(|watcher| watcher.reconnections).sum();
    if moved == 0 {
        bail!("no socket was on the stopped node: the balancer did not spread them");
    }
    println!("cluster check: {moved} socket(s) moved to the other nodes");

    println!("cluster check: node 1 restarted rejoins the balancer");
    cluster.start_node(0)?;
    cluster.wait_until_ready(0)?;
    wait_until_balanced(cluster, "node1", "UP")?;

    println!("cluster check: node 2 killed with SIGKILL under the balancer");
    cluster.stop_node(1, false)?;
    for _ in 0..4 {
        api.vote(&viewer, event)?;
        answered += 1;
    }
    for watcher in &mut watchers {
        watcher.wait_for_total(event, answered)?;
    }

    // The store agrees: every answered vote counted once (each was retried under its key).
    let stored = api.get(&viewer, &format!("/api/events/{event}"))?;
    let stored_total = total_of(&stored["totals"]);
    if stored_total != answered {
        bail!("the store holds {stored_total} votes, {answered} were answered");
    }
    let balance = api.get(&viewer, "/api/balance")?["balance"].as_i64();
    if balance != Some(1_000 - answered as i64) {
        bail!("the viewer's balance is {balance:?} after {answered} votes of 1 from 1000");
    }
    Ok(())
}

/// Waits until HAProxy's stats page shows `server` in `state`.
fn wait_until_balanced(cluster: &Cluster, server: &str, state: &str) -> Result<()> {
    let stats = format!("http://127.0.0.1:{}", cluster.stats_port);
    let deadline = Instant::now() + WITHIN;
    loop {
        let states = http_text(&stats, "/;csv")
            .map(|csv| haproxy::node_states(&csv))
            .unwrap_or_default();
        if states
            .iter()
            .any(|(name, seen)| name == server && seen == state)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("HAProxy never showed {server} {state}: {states:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The HTTP API through the balancer.
struct Api {
    base: String,
    api_key: String,
}

impl Api {
    /// A fresh agent per call: each request is a new connection the balancer places anew.
    fn agent() -> ureq::Agent {
        ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(10))
            .build()
    }

    fn token(&self, user: Uuid, role: &str) -> Result<String> {
        let answer = self.post(
            None,
            "/api/auth",
            &json!({"apiKey": self.api_key, "userId": user, "role": role}),
            None,
        )?;
        answer["token"]
            .as_str()
            .map(str::to_owned)
            .context("/api/auth answered without a token")
    }

    fn credit(&self, admin: &str, user: Uuid, amount: i64) -> Result<()> {
        let body = json!({"userId": user, "amount": amount, "reason": "cluster check"});
        let key = Uuid::new_v4().to_string();
        self.post(Some(admin), "/api/ledger/credit", &body, Some(&key))
            .map(drop)
    }

    fn create_event(&self, worker: &str, streamer: Uuid) -> Result<Uuid> {
        let closes_at = chrono::Utc::now() + chrono::Duration::minutes(10);
        // With its id, the same body sent again is answered 200: safe to retry.
        let body = json!({
            "id": Uuid::new_v4(),
            "streamerId": streamer,
            "title": "Which node answers?",
            "options": [{"id": "red", "label": "Red"}, {"id": "blue", "label": "Blue"}],
            "closesAt": closes_at.to_rfc3339(),
            "costPerVote": 1,
        });
        let answer = self.post(Some(worker), "/api/events", &body, None)?;
        answer["event"]["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .context("POST /api/events answered without an id")
    }

    /// One vote under its own Idempotency-Key, retried under that key while the balancer or a
    /// node says the vote could not be taken (a node died mid-request): counted once.
    fn vote(&self, viewer: &str, event: Uuid) -> Result<()> {
        let key = Uuid::new_v4().to_string();
        let body = json!({"optionId": "red", "votes": 1});
        self.post(
            Some(viewer),
            &format!("/api/events/{event}/votes"),
            &body,
            Some(&key),
        )
        .map(drop)
    }

    fn post(
        &self,
        token: Option<&str>,
        path: &str,
        body: &Value,
        key: Option<&str>,
    ) -> Result<Value> {
        let deadline = Instant::now() + WITHIN;
        loop {
            let mut request = Self::agent().post(&format!("{}{path}", self.base));
            if let Some(token) = token {
                request = request.set("Authorization", &format!("Bearer {token}"));
            }
            if let Some(key) = key {
                request = request.set("Idempotency-Key", key);
            }
            let retry = match request.send_json(body.clone()) {
                Ok(response) => return Ok(response.into_json()?),
                Err(ureq::Error::Status(status @ (502..=504), _)) => format!("{status}"),
                Err(ureq::Error::Status(status, response)) => {
                    let text = response.into_string().unwrap_or_default();
                    bail!("POST {path}: {status} {text}");
                }
                Err(ureq::Error::Transport(error)) => error.to_string(),
            };
            // Only an idempotent request may be sent again.
            let idempotent = key.is_some() || path == "/api/auth" || body.get("id").is_some();
            if !idempotent {
                bail!("POST {path} failed ({retry}) and carries no Idempotency-Key to retry under");
            }
            if Instant::now() > deadline {
                bail!("POST {path} kept failing: {retry}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn get(&self, token: &str, path: &str) -> Result<Value> {
        let response = Self::agent()
            .get(&format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {token}"))
            .call()
            .with_context(|| format!("GET {path}"))?;
        Ok(response.into_json()?)
    }
}

/// A socket through the balancer that reconnects, as the SDK does, when its node goes away.
struct Watcher {
    url: String,
    socket: Option<WebSocket<MaybeTlsStream<TcpStream>>>,
    /// The highest total seen; totals must never go backwards.
    total: u64,
    reconnections: u32,
}

impl Watcher {
    fn connect(url: &str) -> Result<Watcher> {
        let mut watcher = Watcher {
            url: url.to_owned(),
            socket: None,
            total: 0,
            reconnections: 0,
        };
        watcher.socket = Some(watcher.open()?);
        Ok(watcher)
    }

    fn open(&self) -> Result<WebSocket<MaybeTlsStream<TcpStream>>> {
        let (socket, _) = tungstenite::connect(self.url.as_str()).context("socket upgrade")?;
        if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
            stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        }
        Ok(socket)
    }

    fn wait_for_total(&mut self, event: Uuid, wanted: u64) -> Result<()> {
        let deadline = Instant::now() + WITHIN;
        while self.total < wanted {
            if Instant::now() > deadline {
                bail!(
                    "a socket saw {} votes of {wanted} within {WITHIN:?}",
                    self.total
                );
            }
            let Some(socket) = self.socket.as_mut() else {
                // Its node went away: back through the balancer, after a short pause.
                std::thread::sleep(Duration::from_millis(200));
                if let Ok(socket) = self.open() {
                    self.socket = Some(socket);
                    self.reconnections += 1;
                }
                continue;
            };
            match socket.read() {
                Ok(Message::Text(text)) => {
                    let messages: Value = serde_json::from_str(text.as_str())?;
                    let messages = match messages {
                        Value::Array(messages) => messages,
                        message => vec![message],
                    };
                    for message in &messages {
                        if message["type"] == "PING" {
                            let pong = Message::text(r#"{"action":"pong"}"#);
                            let _ = socket.send(pong);
                        }
                        if let Some(total) = event_total(message, event) {
                            if total < self.total {
                                bail!(
                                    "a socket's totals went backwards: {} then {total}",
                                    self.total
                                );
                            }
                            self.total = total;
                        }
                    }
                }
                Ok(Message::Close(_)) => self.socket = None,
                Ok(_) => {}
                Err(tungstenite::Error::Io(error))
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => self.socket = None,
            }
        }
        Ok(())
    }
}

/// The total votes a message shows for `event` (an update, a snapshot or the close).
fn event_total(message: &Value, event: Uuid) -> Option<u64> {
    let payload = &message["payload"];
    if payload["eventId"].as_str()? != event.to_string() {
        return None;
    }
    let totals = match message["type"].as_str()? {
        "EVENT_UPDATED" => &payload["totals"],
        "EVENT_CLOSED" => &payload["result"]["totals"],
        _ => return None,
    };
    Some(total_of(totals))
}

fn total_of(totals: &Value) -> u64 {
    totals
        .as_object()
        .map(|totals| totals.values().filter_map(Value::as_u64).sum())
        .unwrap_or_default()
}

struct DroppedAtEnd {
    postgres: String,
    database: String,
}

impl Drop for DroppedAtEnd {
    fn drop(&mut self) {
        drop_database(&self.postgres, &self.database);
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn postgres_answers(postgres: &str) -> Result<(), String> {
    tools::output_of(
        "psql",
        &[
            "-X",
            "-tA",
            &format!("{postgres}/postgres"),
            "-c",
            "SELECT 1",
        ],
    )
    .map(drop)
    .ok_or_else(|| format!("PostgreSQL at {postgres} does not answer `psql`"))
}

/// Whether a Redis answers PING at `url` (`redis://host:port`), within 2 s.
fn redis_answers(url: &str) -> Result<(), String> {
    let address = url
        .strip_prefix("redis://")
        .map(|rest| rest.rsplit('@').next().unwrap_or(rest))
        .map(|rest| rest.split('/').next().unwrap_or(rest))
        .ok_or_else(|| format!("{url} is not a redis:// URL"))?;
    let address = address
        .to_socket_addrs()
        .ok()
        .and_then(|mut addresses| addresses.next())
        .ok_or_else(|| format!("Redis address {address} does not resolve"))?;
    let ping = || -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"PING\r\n")?;
        let mut answer = [0u8; 16];
        let read = stream.read(&mut answer)?;
        Ok(String::from_utf8_lossy(&answer[..read]).into_owned())
    };
    match ping() {
        Ok(answer) if answer.starts_with("+PONG") => Ok(()),
        Ok(answer) => Err(format!("Redis at {url} answered {answer:?} to PING")),
        Err(error) => Err(format!("Redis at {url} does not answer: {error}")),
    }
}
