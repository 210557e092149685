//! A node whose storage writer cannot get SQLite's write lock (another process holds it) says
//! so: `/readyz` answers 503 within its deadline, and a vote answers 503 with Retry-After
//! instead of hanging; once the lock is free the node is ready again and the timed-out vote
//! was not applied.

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use common::*;
use http_body_util::BodyExt;
use livevote_protocol::Role;
use livevote_server::state::AppState;
use serde_json::{json, Value};
use sqlx::{Connection, SqliteConnection};
use tower::ServiceExt;
use uuid::Uuid;

/// The store's defaults, which the server uses: readiness 1 s, writes 5 s.
const READY_DEADLINE: Duration = Duration::from_secs(1);
const CALL_DEADLINE: Duration = Duration::from_secs(5);
/// Scheduling slack on a loaded machine.
const SLACK: Duration = Duration::from_secs(2);

async fn send(state: &AppState, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let response = livevote_server::app(state.clone())
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, body)
}

fn assert_unavailable(status: StatusCode, headers: &HeaderMap, body: &Value) {
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "UNAVAILABLE", "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert_eq!(
        headers
            .get(header::RETRY_AFTER)
            .map(|value| value.as_bytes()),
        Some(&b"1"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_kept_from_the_write_lock_makes_the_node_unready_and_votes_answer_503() {
    let directory = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", directory.path().join("stall.db").display());
    let mut config = test_config();
    config.database_url = url.clone();
    let state = router_state(config).await;
    let event = create_event(&state, Uuid::new_v4(), 600).await;
    let viewer = mint(&state, Role::Viewer, Uuid::new_v4(), None);
    let (status, voted) = vote(&state, &viewer, event, "red", 1).await;
    assert_eq!(status, StatusCode::OK, "{voted}");
    let (status, _, _) = send(&state, get("/readyz", None)).await;
    assert_eq!(status, StatusCode::OK);

    // Another process's transaction holds the write lock.
    let mut other = SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();

    let started = Instant::now();
    let (status, headers, body) = send(&state, get("/readyz", None)).await;
    let waited = started.elapsed();
    assert_unavailable(status, &headers, &body);
    assert!(
        waited < READY_DEADLINE + SLACK,
        "readiness answered after {waited:?}"
    );

    let started = Instant::now();
    let request = post(
        &format!("/api/events/{event}/votes"),
        Some(&viewer),
        &json!({"optionId": "red", "votes": 1}),
    );
    let (status, headers, body) = send(&state, request).await;
    let waited = started.elapsed();
    assert_unavailable(status, &headers, &body);
    assert!(
        waited < CALL_DEADLINE + SLACK,
        "the vote answered after {waited:?}"
    );

    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    other.close().await.unwrap();
    let started = Instant::now();
    loop {
        let (status, _, body) = send(&state, get("/readyz", None)).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "never ready again: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, balance) = call(&state, get("/api/balance", Some(&viewer))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        balance["balance"], voted["balance"],
        "the vote that timed out was not applied"
    );
    state.shutdown.cancel();
}
