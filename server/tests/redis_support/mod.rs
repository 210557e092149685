//! Redis test support for in-process nodes: the machine's Redis (`LIVEVOTE_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`) or a private `redis-server` a test may kill, nodes of one cluster
//! on one Postgres database and a fresh Redis prefix, and small HTTP helpers over real sockets.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use livevote_protocol::Role;
use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

use crate::common::*;

/// Whether a Redis answers PING at `url` within 3 s.
pub async fn redis_answers(url: &str) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|error| error.to_string())?;
    let ping = async {
        let mut connection = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
    };
    match tokio::time::timeout(Duration::from_secs(3), ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("no answer within 3 s".into()),
    }
}

pub fn shared_redis_url() -> String {
    std::env::var("LIVEVOTE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A node's configuration: the shared database, the given Redis, this test's own prefix.
pub fn node_config(
    database_url: &str,
    redis_url: &str,
    prefix: &str,
) -> livevote_server::config::Config {
    let mut config = test_config();
    config.database_url = database_url.to_owned();
    config.broker_url = redis_url.to_owned();
    config.broker_prefix = prefix.to_owned();
    config
}

pub async fn send(request: reqwest::RequestBuilder) -> (reqwest::StatusCode, Value) {
    let response = request.send().await.expect("the server answers");
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Waits (at most `limit`) for `/readyz` to answer `wanted`; returns how long it took.
pub async fn wait_for_readiness(server: &TestServer, wanted: u16, limit: Duration) -> Duration {
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let status = client
            .get(server.http("/readyz"))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .map(|response| response.status().as_u16())
            .unwrap_or(0);
        if status == wanted {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "/readyz still {status}, not {wanted}, after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn create_event_on(server: &TestServer, streamer: Uuid, seconds: i64) -> Uuid {
    let worker = server.token(Role::Worker, Uuid::new_v4());
    let (status, created) = send(
        reqwest::Client::new()
            .post(server.http("/api/events"))
            .bearer_auth(&worker)
            .json(&event_body(&server.state, streamer, seconds)),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    created["event"]["id"].as_str().unwrap().parse().unwrap()
}

/// The machine's Redis, or `None` with the reason printed when it does not answer.
pub async fn shared_redis_or_skip() -> Option<String> {
    let redis_url = shared_redis_url();
    match redis_answers(&redis_url).await {
        Ok(()) => Some(redis_url),
        Err(error) => {
            eprintln!("skipping: Redis at {redis_url} does not answer: {error}");
            None
        }
    }
}

/// Two nodes of one cluster (one database, one fresh Redis prefix), both ready.
pub async fn two_ready_nodes(database_url: &str, redis_url: &str) -> (TestServer, TestServer) {
    ready_nodes(node_config(database_url, redis_url, &fresh_prefix())).await
}

/// A Redis prefix no other test uses.
pub fn fresh_prefix() -> String {
    format!("lv-test-{}", Uuid::new_v4().simple())
}

/// Two nodes started with `config` (the same cluster), both ready.
pub async fn ready_nodes(config: livevote_server::config::Config) -> (TestServer, TestServer) {
    let node_a = TestServer::start_with(config.clone()).await;
    let node_b = TestServer::start_with(config).await;
    wait_for_readiness(&node_a, 200, Duration::from_secs(10)).await;
    wait_for_readiness(&node_b, 200, Duration::from_secs(10)).await;
    (node_a, node_b)
}

/// A private Redis this test may kill: `redis-server --port P --save ""`.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    /// A private Redis on a free port, or `None` with the reason printed (no `redis-server`).
    pub async fn start_or_skip() -> Option<PrivateRedis> {
        match PrivateRedis::start(free_port()).await {
            Ok(redis) => Some(redis),
            Err(error) => {
                eprintln!("skipping: {error}");
                None
            }
        }
    }

    pub async fn start(port: u16) -> Result<PrivateRedis, String> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| format!("redis-server could not start: {error}"))?;
        let redis = PrivateRedis {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while redis_answers(&redis.url()).await.is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "redis-server on port {port} did not answer within 5 s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}
