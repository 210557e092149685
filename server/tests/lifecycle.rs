//! Event lifecycle across time and restarts: timers close events at `closesAt`, concurrency
//! never overdraws, and a restart closes the events that came due while the server was down.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use common::*;
use livevote_protocol::Role;
use serde_json::json;
use uuid::Uuid;

#[tokio::test]
async fn two_hundred_concurrent_votes_from_one_user_never_overdraw() {
    let mut config = test_config();
    config.initial_balance = 1_000;
    config.vote_rate = 1_000;
    let state = router_state(config).await;
    let event = create_event(&state, Uuid::new_v4(), 60).await;
    let user = Uuid::new_v4();
    let viewer = Arc::new(mint(&state, Role::Viewer, user, None));
    let mut tasks = Vec::new();
    for index in 0..200 {
        let state = state.clone();
        let viewer = viewer.clone();
        let option = if index % 2 == 0 { "red" } else { "blue" };
        tasks.push(tokio::spawn(async move {
            let path = format!("/api/events/{event}/votes");
            call(
                &state,
                post(
                    &path,
                    Some(&viewer),
                    &json!({"optionId": option, "votes": 1}),
                ),
            )
            .await
        }));
    }
    let mut accepted = 0u64;
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            StatusCode::OK => accepted += 1,
            StatusCode::PAYMENT_REQUIRED => {
                assert_eq!(body["error"]["code"], "INSUFFICIENT_BALANCE")
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    // 1,000 points at 10 per vote: exactly 100 votes fit.
    assert_eq!(accepted, 100);
    let record = state.store.get_event(event).await.unwrap().unwrap();
    assert_eq!(record.totals.values().sum::<u64>(), accepted);
    let (_, balance) = call(&state, get("/api/balance", Some(&viewer))).await;
    assert_eq!(balance["balance"], 0);
    let entries = state.store.ledger_entries(user).await.unwrap();
    assert_eq!(entries.iter().map(|entry| entry.amount).sum::<i64>(), 0);
    assert_eq!(
        entries.len(),
        101,
        "one initial credit and one debit per accepted vote"
    );
}

#[tokio::test]
async fn the_vote_rate_limit_answers_429() {
    let mut config = test_config();
    config.vote_rate = 5;
    let state = router_state(config).await;
    let event = create_event(&state, Uuid::new_v4(), 60).await;
    let viewer = mint(&state, Role::Viewer, Uuid::new_v4(), None);
    let path = format!("/api/events/{event}/votes");
    let mut limited = 0;
    for _ in 0..10 {
        let (status, body) = call(
            &state,
            post(&path, Some(&viewer), &json!({"optionId": "red"})),
        )
        .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(body["error"]["code"], "RATE_LIMITED");
            limited += 1;
        }
    }
    assert!(limited >= 4, "{limited} of 10 limited at 5/s");
}

#[tokio::test]
async fn a_timer_closes_the_event_at_closes_at_with_the_right_result() {
    let state = router_state(test_config()).await;
    let event = create_event(&state, Uuid::new_v4(), 1).await;
    let viewer = mint(&state, Role::Viewer, Uuid::new_v4(), None);
    vote(&state, &viewer, event, "blue", 3).await;
    let record = wait_until_closed(&state, event).await;
    assert_eq!(record.result.unwrap().option_id, "blue");
    assert!(
        record.closed_at.unwrap() >= record.closes_at,
        "never before closesAt"
    );
}

async fn wait_until_closed(
    state: &livevote_server::state::AppState,
    event: Uuid,
) -> livevote_storage::EventRecord {
    for _ in 0..100 {
        let record = state.store.get_event(event).await.unwrap().unwrap();
        if record.status == livevote_protocol::EventStatus::Closed {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("event {event} did not close within 10 s");
}

#[tokio::test]
async fn a_restart_closes_events_that_came_due_while_down() {
    let directory = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.database_url = format!(
        "sqlite://{}",
        directory.path().join("livevote.db").display()
    );

    let server = TestServer::start_with(config.clone()).await;
    let event = create_event(&server.state, Uuid::new_v4(), 2).await;
    let viewer = server.token(Role::Viewer, Uuid::new_v4());
    let (status, _) = call(
        &server.state,
        post(
            &format!("/api/events/{event}/votes"),
            Some(&viewer),
            &json!({"optionId": "blue"}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;

    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let state = router_state(config).await;
    let record = wait_until_closed(&state, event).await;
    let result = record.result.unwrap();
    assert_eq!(result.option_id, "blue");
    assert_eq!(
        result.totals,
        [("blue".to_owned(), 1), ("red".to_owned(), 0)]
            .into_iter()
            .collect()
    );
}
