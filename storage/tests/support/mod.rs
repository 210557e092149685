//! Helpers shared by the storage tests: a fresh database of either kind (an SQLite file in a
//! temporary directory, or a Postgres database created for the test and dropped after it),
//! stores on it, and events and commands with sensible defaults.
//!
//! `on_every_store!(test)` runs `async fn test(database: TestDatabase)` twice, as `test::sqlite`
//! and `test::postgres`. The Postgres run needs a server at `LIVEVOTE_TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`, any role that may create databases);
//! without one it prints why and passes.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ops::Deref;
use std::str::FromStr;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use livevote_protocol::{Event, EventOption, Timestamp};
use livevote_storage::postgres::PostgresStore;
use livevote_storage::sqlite::{SqliteStore, WriterOptions};
use livevote_storage::{
    CloseOutcome, CreateOutcome, CreditCommand, CreditReceipt, EventFilter, EventRecord,
    IdempotencyKey, LedgerEntry, Store, StoreError, VoteCommand, VoteReceipt,
};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Row};
use tempfile::TempDir;
use uuid::Uuid;

/// Runs an `async fn NAME(database: TestDatabase)` once on SQLite and once on Postgres, as the
/// tests `NAME::sqlite` and `NAME::postgres`. Extra arguments go to `#[tokio::test(...)]`.
#[macro_export]
macro_rules! on_every_store {
    ($test:ident) => {
        on_every_store!($test, flavor = "current_thread");
    };
    ($test:ident, $($runtime:tt)*) => {
        mod $test {
            #[tokio::test($($runtime)*)]
            async fn sqlite() {
                super::$test($crate::support::TestDatabase::sqlite().await).await;
            }

            #[tokio::test($($runtime)*)]
            async fn postgres() {
                if let Some(database) = $crate::support::TestDatabase::postgres().await {
                    super::$test(database).await;
                }
            }
        }
    };
}

/// Where the Postgres tests create their databases.
pub fn postgres_admin_url() -> String {
    std::env::var("LIVEVOTE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database of its own for one test: an SQLite file in a temporary directory, or a Postgres
/// database dropped when this is dropped (also when the test panics).
pub struct TestDatabase {
    pub url: String,
    kind: Kind,
}

enum Kind {
    Sqlite(TempDir),
    Postgres(Box<PostgresDatabase>),
}

impl TestDatabase {
    /// A new SQLite file.
    pub async fn sqlite() -> TestDatabase {
        let directory = tempfile::tempdir().expect("temporary directory");
        let url = format!(
            "sqlite://{}",
            directory.path().join("livevote.db").display()
        );
        TestDatabase {
            url,
            kind: Kind::Sqlite(directory),
        }
    }

    /// A new Postgres database, or `None` (with the reason printed) when no server answers.
    pub async fn postgres() -> Option<TestDatabase> {
        let database = PostgresDatabase::create().await?;
        Some(TestDatabase {
            url: database.url.clone(),
            kind: Kind::Postgres(Box::new(database)),
        })
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.kind, Kind::Postgres(_))
    }

    /// A store on this database (another one each call: another node, or a restart).
    pub async fn connect(&self) -> AnyStore {
        self.connect_with(WriterOptions::default()).await
    }

    pub async fn connect_with(&self, options: WriterOptions) -> AnyStore {
        match self.kind {
            Kind::Sqlite(_) => AnyStore::Sqlite(
                SqliteStore::connect_with(&self.url, options)
                    .await
                    .expect("open the SQLite database"),
            ),
            Kind::Postgres(_) => AnyStore::Postgres(
                PostgresStore::connect_with(&self.url, options)
                    .await
                    .expect("connect to the Postgres database"),
            ),
        }
    }

    /// Runs SQL without parameters that returns one bigint column (audits), outside the store.
    pub async fn numbers(&self, sql: &str) -> Vec<i64> {
        match self.kind {
            Kind::Sqlite(_) => {
                let mut connection = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                let rows = sqlx::query(sql).fetch_all(&mut connection).await.unwrap();
                connection.close().await.unwrap();
                rows.iter().map(|row| row.get::<i64, _>(0)).collect()
            }
            Kind::Postgres(_) => {
                let mut connection = sqlx::PgConnection::connect(&self.url).await.unwrap();
                let rows = sqlx::query(sql).fetch_all(&mut connection).await.unwrap();
                connection.close().await.unwrap();
                rows.iter().map(|row| row.get::<i64, _>(0)).collect()
            }
        }
    }

    /// Runs SQL without parameters that returns one text column, outside the store (Postgres).
    pub async fn texts(&self, sql: &str) -> Vec<String> {
        let mut connection = sqlx::PgConnection::connect(&self.url).await.unwrap();
        let rows = sqlx::query(sql).fetch_all(&mut connection).await.unwrap();
        connection.close().await.unwrap();
        rows.iter().map(|row| row.get::<String, _>(0)).collect()
    }

    /// Runs SQL statements without parameters outside the store.
    pub async fn execute(&self, sql: &str) {
        match self.kind {
            Kind::Sqlite(_) => {
                let mut connection = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut connection).await.unwrap();
                connection.close().await.unwrap();
            }
            Kind::Postgres(_) => {
                let mut connection = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut connection).await.unwrap();
                connection.close().await.unwrap();
            }
        }
    }

    /// The audit every test may end with: each event's totals equal the votes of its ledger
    /// entries, each balance equals the sum of its user's entries, and none is below 0.
    pub async fn audit(&self) {
        let bad_balances = self
            .numbers(
                "SELECT count(*) FROM (SELECT user_id, sum(amount) AS total,                  min(balance) AS lowest FROM ledger GROUP BY user_id) AS sums                  WHERE total < 0 OR lowest < 0",
            )
            .await;
        assert_eq!(bad_balances, vec![0], "a balance below 0");
        let mismatched = self
            .numbers(
                "SELECT count(*) FROM ledger AS l WHERE l.id = (SELECT max(id) FROM ledger                  WHERE user_id = l.user_id) AND l.balance <> (SELECT sum(amount) FROM ledger                  WHERE user_id = l.user_id)",
            )
            .await;
        assert_eq!(
            mismatched,
            vec![0],
            "a balance differs from the sum of its entries"
        );
    }
}

/// A store of either kind, used through `Store` (it derefs to `dyn Store`).
pub enum AnyStore {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl Deref for AnyStore {
    type Target = dyn Store;

    fn deref(&self) -> &Self::Target {
        match self {
            AnyStore::Sqlite(store) => store,
            AnyStore::Postgres(store) => store,
        }
    }
}

/// So that helpers taking `&dyn Store` take an `AnyStore` too.
#[async_trait::async_trait]
impl Store for AnyStore {
    async fn ready(&self) -> Result<(), StoreError> {
        self.deref().ready().await
    }
    async fn ensure_user(&self, user_id: Uuid, initial_balance: i64) -> Result<i64, StoreError> {
        self.deref().ensure_user(user_id, initial_balance).await
    }
    async fn balance(&self, user_id: Uuid) -> Result<Option<i64>, StoreError> {
        self.deref().balance(user_id).await
    }
    async fn balances(
        &self,
        user_ids: &[Uuid],
    ) -> Result<Vec<livevote_storage::VersionedBalance>, StoreError> {
        self.deref().balances(user_ids).await
    }
    async fn create_event(
        &self,
        event: &Event,
        closes_at: DateTime<Utc>,
    ) -> Result<CreateOutcome, StoreError> {
        self.deref().create_event(event, closes_at).await
    }
    async fn get_event(&self, event_id: Uuid) -> Result<Option<EventRecord>, StoreError> {
        self.deref().get_event(event_id).await
    }
    async fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRecord>, StoreError> {
        self.deref().list_events(filter).await
    }
    async fn live_events(
        &self,
        closed_since: DateTime<Utc>,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.deref().live_events(closed_since).await
    }
    async fn cast_vote(&self, command: VoteCommand) -> Result<VoteReceipt, StoreError> {
        self.deref().cast_vote(command).await
    }
    async fn close_event(
        &self,
        event_id: Uuid,
        chosen_option: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<CloseOutcome, StoreError> {
        self.deref().close_event(event_id, chosen_option, now).await
    }
    async fn credit(&self, command: CreditCommand) -> Result<CreditReceipt, StoreError> {
        self.deref().credit(command).await
    }
    async fn ledger_entries(&self, user_id: Uuid) -> Result<Vec<LedgerEntry>, StoreError> {
        self.deref().ledger_entries(user_id).await
    }
    fn query_count(&self) -> u64 {
        self.deref().query_count()
    }
}

impl AnyStore {
    /// Lets the writer finish, then closes the connections.
    pub async fn close(self) {
        match self {
            AnyStore::Sqlite(store) => store.close().await,
            AnyStore::Postgres(store) => store.close().await,
        }
    }
}

/// A Postgres database created for one test, dropped (with its connections) on drop.
pub struct PostgresDatabase {
    pub name: String,
    pub url: String,
    admin: PgConnectOptions,
}

impl PostgresDatabase {
    /// `None`, with the reason printed, when the server cannot be reached.
    pub async fn create() -> Option<PostgresDatabase> {
        let admin_url = postgres_admin_url();
        let admin = PgConnectOptions::from_str(&admin_url).expect("a Postgres URL");
        let connected = tokio::time::timeout(StdDuration::from_secs(3), admin.connect()).await;
        let mut connection = match connected {
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
        Some(PostgresDatabase { name, url, admin })
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        // Drop cannot await, and may run while the test's runtime is shutting down: a thread
        // of its own with a runtime of its own drops the database.
        let name = self.name.clone();
        let admin = self.admin.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database");
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

/// A store on a database file in a fresh temporary directory, kept alive by the returned guard.
pub struct FileStore {
    pub store: SqliteStore,
    pub url: String,
    pub directory: TempDir,
}

pub async fn file_store() -> FileStore {
    let directory = tempfile::tempdir().expect("temporary directory");
    let url = format!(
        "sqlite://{}",
        directory.path().join("livevote.db").display()
    );
    let store = SqliteStore::connect(&url)
        .await
        .expect("connect to a new database file");
    FileStore {
        store,
        url,
        directory,
    }
}

pub async fn memory_store() -> SqliteStore {
    SqliteStore::connect("sqlite::memory:")
        .await
        .expect("connect to an in-memory database")
}

/// Whole milliseconds, as the server normalises `closesAt`.
pub fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).expect("a representable instant")
}

pub fn event_with(options: &[&str], cost_per_vote: u64, closes_at: DateTime<Utc>) -> Event {
    Event {
        id: Uuid::new_v4(),
        streamer_id: Uuid::new_v4(),
        game_id: None,
        title: "Who wins the next round?".to_owned(),
        options: options
            .iter()
            .map(|id| EventOption {
                id: (*id).to_owned(),
                label: format!("Option {id}"),
            })
            .collect(),
        closes_at: Timestamp(closes_at.to_rfc3339_opts(SecondsFormat::Millis, true)),
        cost_per_vote,
        prompt_versions: Some(BTreeMap::from([("title".to_owned(), "v3".to_owned())])),
    }
}

/// Creates an open event with options `a` and `b` that closes in an hour.
pub async fn open_event(store: &dyn Store, cost_per_vote: u64) -> Event {
    let closes_at = now() + Duration::hours(1);
    let event = event_with(&["a", "b"], cost_per_vote, closes_at);
    store
        .create_event(&event, closes_at)
        .await
        .expect("create event");
    event
}

pub fn vote(user_id: Uuid, event: &Event, option_id: &str, votes: u32) -> VoteCommand {
    VoteCommand {
        user_id,
        event_id: event.id,
        option_id: option_id.to_owned(),
        votes,
        idempotency: None,
        now: Utc::now(),
        initial_balance: 0,
    }
}

pub fn keyed(mut command: VoteCommand, key: &str, fingerprint: &str) -> VoteCommand {
    command.idempotency = Some(IdempotencyKey {
        key: key.to_owned(),
        fingerprint: fingerprint.to_owned(),
    });
    command
}

pub fn credit(admin_id: Uuid, user_id: Uuid, amount: i64) -> CreditCommand {
    CreditCommand {
        admin_id,
        user_id,
        amount,
        reason: "test top-up".to_owned(),
        idempotency: None,
        initial_balance: 0,
    }
}

/// Checks the ledger invariant for one user: the balance is the sum of the entries.
pub async fn assert_ledger_sums(store: &dyn Store, user_id: Uuid) -> i64 {
    let balance = store
        .balance(user_id)
        .await
        .expect("balance")
        .expect("a known user");
    let entries = store.ledger_entries(user_id).await.expect("ledger entries");
    let sum: i64 = entries.iter().map(|entry| entry.amount).sum();
    assert_eq!(
        balance, sum,
        "balance of {user_id} differs from the sum of its ledger entries"
    );
    assert!(balance >= 0, "balance of {user_id} went negative");
    balance
}
