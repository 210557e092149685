//! A committed change is published whatever happens to its request: a client that hangs up
//! mid-commit (hyper drops the handler's future) must not leave an event without its timer, a
//! vote without its totals, or a close unannounced. Also the create rules around that path:
//! a retry after `closesAt` and the `promptVersions` bound.

mod common;
mod socket_support;

use std::time::Duration;

use axum::http::StatusCode;
use common::*;
use futures_util::FutureExt;
use livevote_protocol::{Role, ServerMessage};
use serde_json::{json, Value};
use socket_support::actions::{create_event, totals};
use socket_support::*;
use tower::ServiceExt;
use uuid::Uuid;

/// Polls the request once and drops it, as hyper does when the client hangs up while the
/// handler waits for the store. Returns whether it was still waiting (it must be, or the test
/// proves nothing).
fn send_and_hang_up(
    state: &livevote_server::state::AppState,
    request: axum::http::Request<axum::body::Body>,
) -> bool {
    livevote_server::app(state.clone())
        .oneshot(request)
        .now_or_never()
        .is_none()
}

/// Makes the token's user known first, so that the request under test goes straight to its
/// store call on its first poll.
async fn make_known(state: &livevote_server::state::AppState, token: &str) {
    let (status, body) = call(state, get("/api/balance", Some(token))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn event_view(state: &livevote_server::state::AppState, event: &str) -> (StatusCode, Value) {
    let worker = mint(state, Role::Worker, Uuid::new_v4(), None);
    call(state, get(&format!("/api/events/{event}"), Some(&worker))).await
}

#[tokio::test]
async fn an_event_whose_creator_hangs_up_mid_commit_still_closes_on_time() {
    let state = router_state(test_config()).await;
    let worker = mint(&state, Role::Worker, Uuid::new_v4(), None);
    make_known(&state, &worker).await;
    let event = Uuid::new_v4();
    let mut body = event_body(&state, Uuid::new_v4(), 1);
    body["id"] = json!(event);
    assert!(send_and_hang_up(
        &state,
        post("/api/events", Some(&worker), &body)
    ));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    loop {
        let (status, view) = event_view(&state, &event.to_string()).await;
        if status == StatusCode::OK && view["status"] == "closed" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the event was saved but never closed: {status} {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_vote_whose_voter_hangs_up_mid_commit_still_reaches_the_sockets() {
    let server = TestServer::start().await;
    let streamer = Uuid::new_v4();
    let event = create_event(&server.state, streamer, None, 600).await;
    let watcher = server.token(Role::Viewer, Uuid::new_v4());
    let mut socket =
        connect(&server.socket_url(&format!("?streamerId={streamer}&token={watcher}"))).await;
    socket.until_subscribed().await;

    let voter = server.token(Role::Viewer, Uuid::new_v4());
    make_known(&server.state, &voter).await;
    let vote = post(
        &format!("/api/events/{event}/votes"),
        Some(&voter),
        &json!({"optionId": "blue", "votes": 3}),
    );
    assert!(send_and_hang_up(&server.state, vote));

    let updates = socket
        .until(|message| {
            matches!(message, ServerMessage::EventUpdated(updated)
                if updated.event_id == event && updated.totals == totals(0, 3))
        })
        .await;
    assert!(!updates.is_empty());
    server.stop().await;
}

/// The close that a dead caller (or node) committed but never published is announced by the
/// next close of that event: the node applies the stored result itself.
#[tokio::test]
async fn a_close_committed_but_never_published_is_announced_by_the_next_close() {
    let server = TestServer::start().await;
    let streamer = Uuid::new_v4();
    let event = create_event(&server.state, streamer, None, 600).await;
    let watcher = server.token(Role::Viewer, Uuid::new_v4());
    let mut socket =
        connect(&server.socket_url(&format!("?streamerId={streamer}&token={watcher}"))).await;
    socket.until_subscribed().await;

    // What a caller that died between its commit and its publish leaves behind.
    let outcome = server
        .state
        .store
        .close_event(event, Some("blue".into()), server.state.clock.now())
        .await
        .unwrap();
    assert!(outcome.newly_closed);

    let worker = server.token(Role::Worker, Uuid::new_v4());
    let (status, answer) = call(
        &server.state,
        post(
            &format!("/api/events/{event}/close"),
            Some(&worker),
            &json!({}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["result"]["optionId"], "blue", "{answer}");
    socket
        .until(|message| matches!(message, ServerMessage::EventClosed(closed) if closed.event_id == event))
        .await;
    server.stop().await;
}

#[tokio::test]
async fn a_retried_create_after_its_closing_time_gets_the_first_answer() {
    let state = router_state(test_config()).await;
    let worker = mint(&state, Role::Worker, Uuid::new_v4(), None);
    let mut body = event_body(&state, Uuid::new_v4(), 1);
    body["id"] = json!(Uuid::new_v4());
    let (status, first) = call(&state, post("/api/events", Some(&worker), &body)).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    tokio::time::sleep(Duration::from_millis(1300)).await;

    let (status, again) = call(&state, post("/api/events", Some(&worker), &body)).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["event"], first["event"]);

    // A new event (another id) with the same past closing time is still refused.
    body["id"] = json!(Uuid::new_v4());
    let (status, refused) = call(&state, post("/api/events", Some(&worker), &body)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["error"]["code"], "VALIDATION_FAILED");
}

#[tokio::test]
async fn prompt_versions_are_bounded() {
    let state = router_state(test_config()).await;
    let worker = mint(&state, Role::Worker, Uuid::new_v4(), None);
    let too_many: serde_json::Map<String, Value> = (0..33)
        .map(|index| (format!("k{index}"), json!("v1")))
        .collect();
    let too_long_value = json!({"game": "v".repeat(129)});
    let too_long_key = json!({"k".repeat(65): "v1"});
    for versions in [Value::Object(too_many), too_long_value, too_long_key] {
        let mut body = event_body(&state, Uuid::new_v4(), 60);
        body["promptVersions"] = versions;
        let (status, answer) = call(&state, post("/api/events", Some(&worker), &body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        assert_eq!(answer["error"]["code"], "VALIDATION_FAILED");
    }
    let at_the_limit: serde_json::Map<String, Value> = (0..32)
        .map(|index| (format!("{index:0>64}"), json!("v".repeat(128))))
        .collect();
    let mut body = event_body(&state, Uuid::new_v4(), 60);
    body["promptVersions"] = Value::Object(at_the_limit);
    let (status, answer) = call(&state, post("/api/events", Some(&worker), &body)).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
}
