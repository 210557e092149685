//! A node on Postgres: the real server started with `--database-url postgres://…` (and the
//! in-memory broker) on port 0 against a fresh database serves a vote over HTTP, is ready, keeps
//! what it answered across a restart, and the ledger in Postgres holds exactly the debit. Skips,
//! saying why, when no Postgres answers at `LIVEVOTE_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`).

mod common;

use std::str::FromStr;
use std::time::Duration;

use common::*;
use livevote_protocol::Role;
use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use uuid::Uuid;

/// A database created for this test and dropped afterwards, also when the test panics.
struct TestDatabase {
    name: String,
    url: String,
    admin: PgConnectOptions,
}

impl TestDatabase {
    async fn create() -> Option<TestDatabase> {
        let admin_url = std::env::var("LIVEVOTE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let admin = PgConnectOptions::from_str(&admin_url).expect("a Postgres URL");
        let mut connection =
            match tokio::time::timeout(Duration::from_secs(3), admin.connect()).await {
                Ok(Ok(connection)) => connection,
                Ok(Err(error)) => {
                    eprintln!("skipping: Postgres at {admin_url} is unreachable: {error}");
                    return None;
                }
                Err(_) => {
                    eprintln!("skipping: Postgres at {admin_url} did not answer within 3 s");
                    return None;
                }
            };
        let name = format!("livevote_test_{}", Uuid::new_v4().simple());
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut connection)
            .await
            .expect("create a test database");
        connection.close().await.ok();
        let url = admin.clone().database(&name).to_url_lossy().to_string();
        Some(TestDatabase { name, url, admin })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop cannot await: a thread with a runtime of its own drops the database.
        let name = self.name.clone();
        let admin = self.admin.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let mut connection = admin.connect().await?;
                sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut connection)
                    .await?;
                connection.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!(
                "could not drop the test database {}: {dropped:?}",
                self.name
            );
        }
    }
}

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
