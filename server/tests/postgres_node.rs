//! A node on Postgres: the real server started with `--database-url postgres://…` (and the
//! in-memory broker) on port 0 against a fresh database serves a vote over HTTP, is ready, keeps
//! what it answered across a restart, and the ledger in Postgres holds exactly the debit. Skips,
//! saying why, when no Postgres answers at `LIVEVOTE_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`).

mod common;
mod postgres_support;

use common::*;
use livevote_protocol::Role;
use postgres_support::TestDatabase;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

async fn send(request: reqwest::RequestBuilder) -> (reqwest::StatusCode, Value) {
    let response = request.send().await.expect("the server answers");
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_postgres_serves_votes_and_keeps_them_across_a_restart() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let mut config = test_config();
    config.database_url = database.url.clone();
    let server = TestServer::start_with(config.clone()).await;
    let client = reqwest::Client::new();

    let (status, _) = send(client.get(server.http("/readyz"))).await;
    assert_eq!(status, 200, "a node on Postgres is ready");

    let worker = server.token(Role::Worker, Uuid::new_v4());
    let (status, created) = send(
        client
            .post(server.http("/api/events"))
            .bearer_auth(&worker)
            .json(&event_body(&server.state, Uuid::new_v4(), 600)),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let event_id = created["event"]["id"].as_str().unwrap().to_owned();

    let viewer_id = Uuid::new_v4();
    let viewer = server.token(Role::Viewer, viewer_id);
    let vote = |key: &str| {
        client
            .post(server.http(&format!("/api/events/{event_id}/votes")))
            .bearer_auth(&viewer)
            .header("idempotency-key", key)
            .json(&json!({"optionId": "red", "votes": 3}))
    };
    let (status, first) = send(vote("vote-1")).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["balance"], 10_000 - 30, "{first}");
    let (status, replay) = send(vote("vote-1")).await;
    assert_eq!((status, &replay), (reqwest::StatusCode::OK, &first));
    server.stop().await;

    // Another process on the same database: what was answered is still there.
    let server = TestServer::start_with(config).await;
    let viewer = server.token(Role::Viewer, viewer_id);
    let (status, balance) =
        send(client.get(server.http("/api/balance")).bearer_auth(&viewer)).await;
    assert_eq!(status, 200, "{balance}");
    assert_eq!(balance["balance"], 10_000 - 30);
    let (status, event) = send(
        client
            .get(server.http(&format!("/api/events/{event_id}")))
            .bearer_auth(&viewer),
    )
    .await;
    assert_eq!(status, 200, "{event}");
    assert_eq!(event["totals"]["red"], 3, "{event}");
    server.stop().await;

    // The ledger in Postgres, read directly: one initial credit and one debit of 30.
    let mut connection = PgConnection::connect(&database.url).await.unwrap();
    let amounts: Vec<i64> =
        sqlx::query_scalar("SELECT amount FROM ledger WHERE user_id = $1 ORDER BY id")
            .bind(viewer_id)
            .fetch_all(&mut connection)
            .await
            .unwrap();
    assert_eq!(amounts, vec![10_000, -30]);
    connection.close().await.unwrap();
}
