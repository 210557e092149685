//! Postgres test support for the server's tests: a database of the test's own
//! (`livevote_test_<uuid>` on `LIVEVOTE_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`), dropped afterwards even when the test
//! panics, and the SQL audit of the ledger every cluster test ends with.
#![allow(dead_code)]

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, Row};
use uuid::Uuid;

/// A database created for this test and dropped afterwards, also when the test panics.
pub struct TestDatabase {
    name: String,
    /// The URL of the test's own database, for `--database-url`.
    pub url: String,
    admin: PgConnectOptions,
}

impl TestDatabase {
    /// A fresh database, or `None` (with the reason printed) when Postgres does not answer.
    pub async fn create() -> Option<TestDatabase> {
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

    /// Totals equal the votes in the ledger, each user's last balance equals the sum of its
    /// entries, and no balance is below 0.
    pub async fn audit(&self) {
        audit_database(&self.url).await;
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

/// [`TestDatabase::audit`] on any database, such as a private Postgres a fault test started:
/// totals equal the ledger's votes, each user's last balance equals the sum
/// of its entries, and no balance is below 0.
pub async fn audit_database(url: &str) {
    let mut connection = PgConnection::connect(url).await.unwrap();
    let count = |sql: &'static str| sqlx::query(sql);
    let totals_off: i64 = count(
        "SELECT count(*) FROM events AS e, json_each_text(e.totals::json) AS t(option_id, n)
         WHERE t.n::bigint <> COALESCE((SELECT sum(l.votes) FROM ledger AS l
             WHERE l.event_id = e.id AND l.option_id = t.option_id), 0)",
    )
    .fetch_one(&mut connection)
    .await
    .unwrap()
    .get(0);
    assert_eq!(
        totals_off, 0,
        "an event's totals differ from its ledger votes"
    );
    let below_zero: i64 = count(
        "SELECT count(*) FROM (SELECT user_id, sum(amount) AS total, min(balance) AS lowest
         FROM ledger GROUP BY user_id) AS sums WHERE total < 0 OR lowest < 0",
    )
    .fetch_one(&mut connection)
    .await
    .unwrap()
    .get(0);
    assert_eq!(below_zero, 0, "a balance below 0");
    let mismatched: i64 = count(
        "SELECT count(*) FROM ledger AS l WHERE l.id = (SELECT max(id) FROM ledger
         WHERE user_id = l.user_id) AND l.balance <> (SELECT sum(amount) FROM ledger
         WHERE user_id = l.user_id)",
    )
    .fetch_one(&mut connection)
    .await
    .unwrap()
    .get(0);
    assert_eq!(
        mismatched, 0,
        "a balance differs from the sum of its entries"
    );
    connection.close().await.unwrap();
}
