//! Test support shared by the server's integration tests: a real server on 127.0.0.1:0 with
//! an in-memory or file SQLite database, token minting, and small HTTP helpers.
#![allow(dead_code)]

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use livevote_protocol::Role;
use livevote_server::auth::Claims;
use livevote_server::config::Config;
use livevote_server::state::AppState;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::ServiceExt;
use uuid::Uuid;

pub const API_KEY: &str = "test-api-key";

/// A test configuration: dev secrets, in-memory SQLite, port 0, a generous initial balance.
pub fn test_config() -> Config {
    let mut config = Config::for_tests();
    config.initial_balance = 10_000;
    config
}

/// A server serving on a real loopback socket.
pub struct TestServer {
    pub address: SocketAddr,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(test_config()).await
    }

    pub async fn start_with(config: Config) -> Self {
        let listener = livevote_server::bind(config.listen).expect("bind 127.0.0.1:0");
        let address = listener.local_addr().unwrap();
        let state = livevote_server::start(config).await.expect("server starts");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(livevote_server::run(listener, state.clone(), async move {
            let _ = stopped.await;
        }));
        TestServer {
            address,
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    pub fn socket_url(&self, query: &str) -> String {
        format!("ws://{}/realtime{}", self.address, query)
    }

    pub fn token(&self, role: Role, user: Uuid) -> String {
        mint(&self.state, role, user, None)
    }

    /// Graceful stop: what SIGTERM does.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(15), task).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.state.shutdown.cancel();
    }
}

/// Mints a token valid for an hour.
pub fn mint(state: &AppState, role: Role, user: Uuid, streamer_id: Option<Uuid>) -> String {
    let now = state.clock.unix_seconds();
    state.auth.mint(&Claims {
        sub: user,
        role,
        streamer_id,
        iat: now,
        exp: now + 3600,
    })
}

/// `claims` as an unsigned token (`alg: none`), which the server must refuse.
pub fn unsigned_token(claims: &Claims) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
    format!("{header}.{payload}.")
}

/// A state without a listener, for router tests through `oneshot`.
pub async fn router_state(config: Config) -> AppState {
    livevote_server::start(config).await.expect("server starts")
}

/// One request through the router; returns status and JSON body (Null when empty).
pub async fn call(state: &AppState, request: Request<Body>) -> (StatusCode, Value) {
    let response = livevote_server::app(state.clone())
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (status, body)
}

pub fn get(path: &str, token: Option<&str>) -> Request<Body> {
    let mut builder = Request::get(path);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder.body(Body::empty()).unwrap()
}

pub fn post(path: &str, token: Option<&str>, body: &Value) -> Request<Body> {
    post_raw(path, token, body.to_string())
}

pub fn post_raw(path: &str, token: Option<&str>, body: String) -> Request<Body> {
    let mut builder = Request::post(path).header("content-type", "application/json");
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder.body(Body::from(body)).unwrap()
}

/// A valid event body for `streamer`, closing `seconds` from now.
pub fn event_body(state: &AppState, streamer: Uuid, seconds: i64) -> Value {
    let closes_at = state.clock.now() + chrono::Duration::seconds(seconds);
    json!({
        "streamerId": streamer,
        "gameId": null,
        "title": "Who wins the next round?",
        "options": [{"id": "red", "label": "Red team"}, {"id": "blue", "label": "Blue team"}],
        "closesAt": closes_at.to_rfc3339(),
        "costPerVote": 10,
        "promptVersions": {"session": "v12", "game": "v3"}
    })
}

/// Creates an event as a worker and returns its id.
pub async fn create_event(state: &AppState, streamer: Uuid, seconds: i64) -> Uuid {
    let worker = mint(state, Role::Worker, Uuid::new_v4(), None);
    let (status, body) = call(
        state,
        post(
            "/api/events",
            Some(&worker),
            &event_body(state, streamer, seconds),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["event"]["id"].as_str().unwrap().parse().unwrap()
}

/// A POST with an optional `Idempotency-Key` header.
pub fn post_with_key(path: &str, token: &str, body: &Value, key: Option<&str>) -> Request<Body> {
    let mut request = post(path, Some(token), body);
    if let Some(key) = key {
        request
            .headers_mut()
            .insert("idempotency-key", key.parse().unwrap());
    }
    request
}

/// Casts `votes` votes for `option` as the holder of `token`.
pub async fn vote(
    state: &AppState,
    token: &str,
    event: Uuid,
    option: &str,
    votes: u32,
) -> (StatusCode, Value) {
    let body = json!({"optionId": option, "votes": votes});
    call(
        state,
        post(&format!("/api/events/{event}/votes"), Some(token), &body),
    )
    .await
}
