//! The [`Store`] on PostgreSQL through sqlx, for one node or several sharing a database.
//!
//! It runs the same writer as [`crate::sqlite::SqliteStore`]: every write of this node goes to
//! one task that owns its only writing connection and commits in groups (the batch loop of
//! `batch.rs` over the rules of [`crate::ledger`] and the statements of
//! `postgres/statements.rs`). Across nodes, each batch first takes one row lock
//! (`writer_lock`), so batches of all nodes commit one after another, each checked against
//! what the ones before it committed: concurrent votes on several nodes cannot overdraw a
//! balance, and one Idempotency-Key sent to two nodes at once applies once and both get the
//! first answer. The database enforces what code alone should not be trusted with: the ledger
//! refuses UPDATE, DELETE and TRUNCATE (triggers), a balance below 0 (CHECK), and a second row
//! for one key (its primary key).
//!
//! Reads go to a pool and see committed data only. Writes are bounded as in SQLite
//! ([`WriterOptions`]); a Postgres that cannot be reached, or a write lock held by another node
//! for longer than [`LOCK_TIMEOUT`], is [`Unavailable::DatabaseBusy`], and the writer reconnects
//! by itself once Postgres is back.

use std::str::FromStr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use livevote_protocol::Event;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Postgres, QueryBuilder, Row};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::batch::{until, Queue, Writer};
use crate::{
    CloseOutcome, CreateOutcome, CreditCommand, CreditReceipt, EventFilter, EventRecord,
    LedgerEntry, QueryCounter, Store, StoreError, Unavailable, VersionedBalance, VoteCommand,
    VoteReceipt, BALANCES_PER_QUERY,
};

pub use crate::batch::WriterOptions;

mod codec;
mod lookups;
mod statements;

use codec::{event_from_row, from_nanos, parse_kind, status_name, to_nanos, EVENT_COLUMNS};
use lookups::BalanceLookups;
use statements::{PostgresBackend, CONNECT_TIMEOUT};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Longest a statement waits for a lock another node holds (the write lock above all) before
/// the batch is answered unavailable: the counterpart of SQLite's busy timeout.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// The advisory lock key that lets one node at a time purge expired idempotency keys. Taken with
/// `pg_try_advisory_xact_lock`, so it ends with its transaction (safe on pooled or lost
/// connections), and a node that does not get it skips the purge: another is doing it.
pub const PURGE_LOCK: i64 = 0x6c69_7665_766f_7465; // "livevote" in ASCII

/// Longest any one statement may run, so that a writer can never hang on one.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Read connections per node.
const READERS: u32 = 8;

/// livevote's state in a PostgreSQL database. See the module documentation for its design.
pub struct PostgresStore {
    commands: Queue,
    writer: JoinHandle<()>,
    readers: PgPool,
    /// Single-user balance reads, coalesced.
    lookups: BalanceLookups,
    queries: QueryCounter,
    /// How long `ready` waits for a reader connection, as for the writer's probe.
    ready_deadline: Duration,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PostgresStore")
            .field("queries", &self.queries.get())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://` or `postgresql://`) and brings its
    /// schema up to date. Several nodes may connect to one database at once; migrations take
    /// a lock so that only one applies them.
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect_with(url, WriterOptions::default()).await
    }

    /// [`connect`](PostgresStore::connect) with the writer's deadlines and queue size given.
    pub async fn connect_with(
        url: &str,
        writer_options: WriterOptions,
    ) -> Result<PostgresStore, StoreError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StoreError::Database(format!(
                "`{url}` is not a Postgres URL (expected postgres://…)"
            )));
        }
        let options = PgConnectOptions::from_str(url)?.options([
            // sqlx prepares every statement, and after five runs Postgres may keep one generic
            // plan made from the statistics of that moment. A database created minutes ago has
            // none (autovacuum analyzes a table a minute or more later), so the plan cached for
            // the idempotency-key lookup was a sequential scan with a hash join, and every
            // batch read the whole key table: 36 million rows in 25 seconds of one benchmark,
            // throughput falling as keys piled up. Planning each run sees the table's current
            // size and costs far less than one round trip.
            ("plan_cache_mode", "force_custom_plan".to_owned()),
            ("lock_timeout", format!("{}ms", LOCK_TIMEOUT.as_millis())),
            (
                "statement_timeout",
                format!("{}ms", STATEMENT_TIMEOUT.as_millis()),
            ),
        ]);
        let queries = QueryCounter::default();
        let mut connection = match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
            Ok(connected) => connected?,
            Err(_) => return Err(StoreError::Unavailable(Unavailable::DatabaseBusy)),
        };
        MIGRATOR.run(&mut connection).await?;
        let readers = PgPoolOptions::new()
            .max_connections(READERS)
            .min_connections(0)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options.clone())
            .await?;

        let ready_deadline = writer_options.ready_deadline;
        let (commands, receiver) = Queue::new(writer_options);
        let backend = PostgresBackend::new(connection, options, queries.clone());
        let writer = tokio::spawn(Writer::new(backend).run(receiver));
        let lookups = BalanceLookups::new(readers.clone(), queries.clone());
        Ok(PostgresStore {
            commands,
            writer,
            lookups,
            readers,
            queries,
            ready_deadline,
        })
    }

    /// Lets the writer finish what it was given, then closes every connection. Dropping the
    /// store without this also stops the writer, but does not wait for it.
    pub async fn close(self) {
        let PostgresStore {
            commands,
            writer,
            readers,
            ..
        } = self;
        commands.close();
        if let Err(error) = writer.await {
            tracing::error!(%error, "the storage writer task failed");
        }
        readers.close().await;
    }

    async fn read_events(
        &self,
        mut query: QueryBuilder<'_, Postgres>,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.queries.add(1);
        let rows = query.build().fetch_all(&self.readers).await?;
        rows.iter().map(event_from_row).collect()
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn ready(&self) -> Result<(), StoreError> {
        if self.writer.is_finished() {
            return Err(StoreError::Unavailable(Unavailable::WriterStopped));
        }
        // The writer's probe first: concurrent calls share it only if they reach it together,
        // which waiting for reader connections one by one would spread apart.
        self.commands.ready().await?;
        self.queries.add(1);
        let deadline = Instant::now() + self.ready_deadline;
        match until(deadline, sqlx::query("SELECT 1").execute(&self.readers)).await {
            Some(answered) => answered.map(drop).map_err(StoreError::from),
            None => Err(StoreError::Unavailable(Unavailable::DeadlineExceeded)),
        }
    }

    async fn ensure_user(&self, user_id: Uuid, initial_balance: i64) -> Result<i64, StoreError> {
        // Every authenticated request lands here, so a known user is answered by a reader and
        // never queues behind the writer's batches.
        if let Some(balance) = self.balance(user_id).await? {
            return Ok(balance);
        }
        self.commands.ensure_user(user_id, initial_balance).await
    }

    async fn balance(&self, user_id: Uuid) -> Result<Option<i64>, StoreError> {
        self.lookups.balance(user_id).await
    }

    async fn balances(&self, user_ids: &[Uuid]) -> Result<Vec<VersionedBalance>, StoreError> {
        let mut found = Vec::with_capacity(user_ids.len());
        for chunk in user_ids.chunks(BALANCES_PER_QUERY) {
            self.queries.add(1);
            found.extend(lookups::read_balances(&self.readers, chunk).await?);
        }
        Ok(found)
    }

    async fn create_event(
        &self,
        event: &Event,
        closes_at: DateTime<Utc>,
    ) -> Result<CreateOutcome, StoreError> {
        self.commands.create_event(event, closes_at).await
    }

    async fn get_event(&self, event_id: Uuid) -> Result<Option<EventRecord>, StoreError> {
        let mut query =
            QueryBuilder::new(format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = "));
        query.push_bind(event_id);
        Ok(self.read_events(query).await?.pop())
    }

    async fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRecord>, StoreError> {
        let mut query = QueryBuilder::new(format!("SELECT {EVENT_COLUMNS} FROM events WHERE true"));
        if let Some(streamer_id) = filter.streamer_id {
            query.push(" AND streamer_id = ").push_bind(streamer_id);
        }
        if let Some(status) = filter.status {
            query.push(" AND status = ").push_bind(status_name(status));
        }
        if let Some(after) = filter.after {
            query
                .push(" AND (closes_at, id) < (")
                .push_bind(to_nanos(after.closes_at)?)
                .push(", ")
                .push_bind(after.event_id)
                .push(")");
        }
        query.push(" ORDER BY closes_at DESC, id DESC");
        if let Some(limit) = filter.limit {
            query.push(" LIMIT ").push_bind(i64::from(limit));
        }
        self.read_events(query).await
    }

    async fn live_events(
        &self,
        closed_since: DateTime<Utc>,
    ) -> Result<Vec<EventRecord>, StoreError> {
        // Each half is served by its own partial index.
        let mut query = QueryBuilder::new(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE status = 'open' \
             OR (status = 'closed' AND closed_at >= "
        ));
        query
            .push_bind(to_nanos(closed_since)?)
            .push(") ORDER BY closes_at, created_at");
        self.read_events(query).await
    }

    async fn cast_vote(&self, command: VoteCommand) -> Result<VoteReceipt, StoreError> {
        self.commands.cast_vote(command).await
    }

    async fn close_event(
        &self,
        event_id: Uuid,
        chosen_option: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<CloseOutcome, StoreError> {
        self.commands
            .close_event(event_id, chosen_option, now)
            .await
    }

    async fn credit(&self, command: CreditCommand) -> Result<CreditReceipt, StoreError> {
        self.commands.credit(command).await
    }

    async fn ledger_entries(&self, user_id: Uuid) -> Result<Vec<LedgerEntry>, StoreError> {
        self.queries.add(1);
        let rows = sqlx::query(
            "SELECT amount, kind, event_id, created_at FROM ledger WHERE user_id = $1 ORDER BY id",
        )
        .bind(user_id)
        .fetch_all(&self.readers)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(LedgerEntry {
                    user_id,
                    amount: row.try_get("amount")?,
                    kind: parse_kind(row.try_get::<&str, _>("kind")?)?,
                    event_id: row.try_get("event_id")?,
                    created_at: from_nanos(row.try_get("created_at")?),
                })
            })
            .collect()
    }

    fn query_count(&self) -> u64 {
        self.queries.get()
    }
}

/// A failure that says "Postgres cannot serve this now", not "this write is wrong": the
/// connection is gone or cannot be opened, the server is shutting down or starting, or a lock
/// (another node's write lock) was not granted within [`LOCK_TIMEOUT`]. The caller is told to
/// retry.
pub(crate) fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(error) => error.code().is_some_and(|code| {
            // 08: connection exception; 57P01–57P03: shutting down or starting up;
            // 55P03: lock_not_available (lock_timeout); 57014: query_canceled
            // (statement_timeout); 53300: too_many_connections.
            code.starts_with("08")
                || matches!(
                    &*code,
                    "57P01" | "57P02" | "57P03" | "55P03" | "57014" | "53300"
                )
        }),
        _ => false,
    }
}
