//! The embedded [`Store`]: SQLite through sqlx.
//!
//! Every write goes to one writer task that owns the only writing connection and commits in
//! groups (the batch loop of `batch.rs` running the rules of [`crate::ledger`] over the
//! statements of `sqlite/statements.rs`): one transaction, one fsync and a handful of
//! multi-row statements per group instead of eight statements and an fsync per vote. Because
//! that task is the only writer and checks each command in arrival order against state it
//! holds, concurrent votes cannot overdraw a balance and two identical idempotent requests
//! cannot both apply. Reads go to a separate pool and see only committed data, because the
//! writer answers after COMMIT.
//!
//! Writes are bounded in time and number ([`WriterOptions`]): a full queue refuses a write at
//! once, a write not answered within its deadline is answered "unavailable", and readiness is
//! a probe through the writer's queue that must commit an (empty) transaction in time.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use livevote_protocol::{Event, EventStatus};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, QueryBuilder, Row, Sqlite};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::batch::{Queue, Writer};
use crate::{
    CloseOutcome, CreateOutcome, CreditCommand, CreditReceipt, EventFilter, EventRecord,
    LedgerEntry, QueryCounter, Store, StoreError, Unavailable, VersionedBalance, VoteCommand,
    VoteReceipt, BALANCES_PER_QUERY,
};

pub use crate::batch::WriterOptions;

mod checkpoint;
mod codec;
mod statements;

use codec::{event_from_row, from_nanos, parse_kind, status_name, to_nanos, EVENT_COLUMNS};
use statements::SqliteBackend;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a statement waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Read connections of a file database. WAL lets them read while the writer writes.
const FILE_READERS: u32 = 4;
/// Smaller than SQLite's 4 KiB default because a vote dirties a few leaf pages at random places
/// (the ledger's per-user index, the idempotency keys) and each commit writes whole pages to the
/// WAL: 1 KiB pages quarter those bytes. Only takes effect when the file is created.
const PAGE_SIZE: u32 = 1024;
/// The writer's page cache, in KiB (SQLite's negative-size convention is applied below). Not
/// larger: every commit that split a B-tree page walks the whole cache (SQLite parks a page at
/// the lock-byte page number while it rebalances, and truncating that away scans every hash
/// bucket), and measured throughput fell with 16 MiB.
const WRITER_CACHE_KIB: u32 = 4 * 1024;
/// A safety net: normally the background checkpointer keeps the WAL far below this many pages.
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 100_000;

/// livevote's state in one SQLite database. See the module documentation for its design.
pub struct SqliteStore {
    commands: Queue,
    writer: JoinHandle<()>,
    readers: SqlitePool,
    queries: QueryCounter,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SqliteStore")
            .field("queries", &self.queries.get())
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating it if missing) the database at `url` and brings its schema up to date.
    ///
    /// Accepts `sqlite://PATH`, `sqlite:PATH` and `sqlite::memory:`. Each `sqlite::memory:`
    /// store is its own database, shared by its writer and its readers.
    pub async fn connect(url: &str) -> Result<SqliteStore, StoreError> {
        SqliteStore::connect_with(url, WriterOptions::default()).await
    }

    /// [`connect`](SqliteStore::connect) with the writer's deadlines and queue size given.
    pub async fn connect_with(
        url: &str,
        writer_options: WriterOptions,
    ) -> Result<SqliteStore, StoreError> {
        if !url.starts_with("sqlite:") {
            return Err(StoreError::Database(format!(
                "`{url}` is not a SQLite URL (expected sqlite://PATH, sqlite:PATH or sqlite::memory:)"
            )));
        }
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let mut options = SqliteConnectOptions::from_str(url)?
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        if !in_memory {
            // FULL, not NORMAL: in WAL mode NORMAL skips the fsync at commit, so a vote that was
            // answered could vanish in a power cut. Group commit pays one fsync per batch, which
            // keeps FULL cheap.
            options = options
                .create_if_missing(true)
                .page_size(PAGE_SIZE)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full);
        }

        let queries = QueryCounter::default();
        // The writer's connection is opened first: for an in-memory database it is the one that
        // keeps the database alive for the readers, which share it through SQLite's shared cache.
        let mut connection = options
            .clone()
            .statement_cache_capacity(256)
            .pragma("cache_size", format!("-{WRITER_CACHE_KIB}"))
            // Multi-row statements inside a transaction keep a statement journal (to undo just
            // that statement); in memory it costs no file I/O.
            .pragma("temp_store", "MEMORY")
            .pragma(
                "wal_autocheckpoint",
                WRITER_AUTOCHECKPOINT_PAGES.to_string(),
            )
            .connect()
            .await?;
        MIGRATOR.run(&mut connection).await?;
        let (stop_checkpoints, checkpoints) = if in_memory {
            (None, None)
        } else {
            let (stop, stopped) = oneshot::channel();
            let checkpoint_connection = options.clone().connect().await?;
            (
                Some(stop),
                Some(tokio::spawn(checkpoint::run(
                    checkpoint_connection,
                    stopped,
                ))),
            )
        };
        let readers = SqlitePoolOptions::new()
            .max_connections(if in_memory { 1 } else { FILE_READERS })
            .min_connections(0)
            .connect_with(options.pragma("query_only", "ON"))
            .await?;

        let (commands, receiver) = Queue::new(writer_options);
        let backend = SqliteBackend::new(connection, queries.clone());
        let writer = tokio::spawn(async move {
            Writer::new(backend).run(receiver).await;
            // Checkpoints stop with the writer: nothing is left to copy once it has closed.
            drop(stop_checkpoints);
            if let Some(checkpoints) = checkpoints {
                if let Err(error) = checkpoints.await {
                    tracing::error!(%error, "the checkpoint task failed");
                }
            }
        });
        Ok(SqliteStore {
            commands,
            writer,
            readers,
            queries,
        })
    }

    /// Lets the writer finish what it was given, then closes every connection. Dropping the
    /// store without this also stops the writer, but does not wait for it.
    pub async fn close(self) {
        let SqliteStore {
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
        mut query: QueryBuilder<'_, Sqlite>,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.queries.add(1);
        let rows = query.build().fetch_all(&self.readers).await?;
        rows.iter().map(event_from_row).collect()
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ready(&self) -> Result<(), StoreError> {
        if self.writer.is_finished() {
            return Err(StoreError::Unavailable(Unavailable::WriterStopped));
        }
        self.queries.add(1);
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        self.commands.ready().await
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
        self.queries.add(1);
        let balance = sqlx::query_scalar(
            "SELECT balance FROM ledger WHERE user_id = ? ORDER BY id DESC LIMIT 1",
        )
        .bind(user_id)
        .fetch_optional(&self.readers)
        .await?;
        Ok(balance)
    }

    async fn balances(&self, user_ids: &[Uuid]) -> Result<Vec<VersionedBalance>, StoreError> {
        let mut found = Vec::with_capacity(user_ids.len());
        for chunk in user_ids.chunks(BALANCES_PER_QUERY) {
            self.queries.add(1);
            let mut query = QueryBuilder::<Sqlite>::new(
                "SELECT user_id, balance, id FROM ledger WHERE id IN \
                 (SELECT max(id) FROM ledger WHERE user_id IN (",
            );
            let mut ids = query.separated(", ");
            for user_id in chunk {
                ids.push_bind(*user_id);
            }
            query.push(") GROUP BY user_id)");
            for row in query.build().fetch_all(&self.readers).await? {
                found.push(VersionedBalance {
                    user_id: row.try_get("user_id")?,
                    balance: row.try_get("balance")?,
                    version: u64::try_from(row.try_get::<i64, _>("id")?).unwrap_or(0),
                });
            }
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
        let mut query =
            QueryBuilder::new(format!("SELECT {EVENT_COLUMNS} FROM events WHERE 1 = 1"));
        if let Some(streamer_id) = filter.streamer_id {
            query.push(" AND streamer_id = ").push_bind(streamer_id);
        }
        if let Some(status) = filter.status {
            query.push(" AND status = ").push_bind(status_name(status));
        }
        if let Some(after) = filter.after {
            let closes_at = to_nanos(after.closes_at)?;
            query
                .push(" AND (closes_at < ")
                .push_bind(closes_at)
                .push(" OR (closes_at = ")
                .push_bind(closes_at)
                .push(" AND id < ")
                .push_bind(after.event_id)
                .push("))");
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
        // Two ranges of one index rather than an OR, which SQLite would answer with a scan.
        let mut query = QueryBuilder::new(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE id IN \
             (SELECT id FROM events WHERE status = "
        ));
        query
            .push_bind(status_name(EventStatus::Open))
            .push(" UNION ALL SELECT id FROM events WHERE status = ")
            .push_bind(status_name(EventStatus::Closed))
            .push(" AND closed_at >= ")
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
            "SELECT amount, kind, event_id, created_at FROM ledger WHERE user_id = ? ORDER BY id",
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

/// SQLITE_BUSY or SQLITE_LOCKED (with any extended code): another connection held a lock for
/// longer than [`BUSY_TIMEOUT`]. Not a failure of this node: the caller is told to retry.
pub(crate) fn is_busy(error: &sqlx::Error) -> bool {
    const SQLITE_BUSY: i32 = 5;
    const SQLITE_LOCKED: i32 = 6;
    let sqlx::Error::Database(error) = error else {
        return false;
    };
    error
        .code()
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, SQLITE_BUSY | SQLITE_LOCKED))
}
