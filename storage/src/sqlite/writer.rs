//! The single writer task: every change to the database goes through it.
//!
//! It takes whatever commands are queued (up to [`MAX_BATCH`], after a short wait for callers
//! it has just answered), checks each in arrival order against state it keeps in memory
//! (balances of known users, events with their totals and `seq`), and writes the whole group in
//! one transaction: one round trip for `BEGIN IMMEDIATE` and `PRAGMA data_version`, one to load
//! what the cache lacks, and one carrying a few multi-row statements followed by COMMIT. Each
//! caller is answered only after COMMIT, so an answer means the change is durable. Because
//! commands are checked one after the other, two votes cannot spend the same balance and two
//! identical idempotent requests cannot both apply, even within one batch. A request that a
//! check refuses writes nothing and leaves no idempotency record.
//!
//! If the transaction fails, every command of the group gets the error and the in-memory state
//! is dropped, to be reloaded from the database on demand: it is a cache of the database, never
//! ahead of it once a batch ends. It stays correct with other processes writing the same file
//! because `PRAGMA data_version`, read under the write lock, changes when any other connection
//! has committed since; the cache is then thrown away before anything is checked.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use livevote_protocol::{Event, EventResult, EventStatus, Totals};
use serde::Serialize;
use sqlx::{Connection, QueryBuilder, Row, Sqlite, SqliteConnection};
use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;
use uuid::Uuid;

use super::codec::{
    corrupt, event_from_row, from_json, kind_name, status_name, to_json, to_nanos, AnswerKind,
    Fingerprint, StoredCreditAnswer, StoredVoteAnswer, EVENT_COLUMNS,
};
use super::QueryCounter;
use crate::{
    CloseOutcome, CreateOutcome, CreditCommand, CreditReceipt, EventRecord, LedgerEntryKind,
    StoreError, VoteCommand, VoteReceipt,
};

/// Most commands committed together. Large enough that one fsync serves hundreds of votes,
/// small enough that no statement comes near SQLite's limit of bound parameters.
const MAX_BATCH: usize = 512;
/// Rows per multi-row statement (nine parameters each at most: 4,500 of SQLite's 32,766).
const ROWS_PER_STATEMENT: usize = 500;
/// Past these sizes the caches are emptied and refilled on demand, which bounds memory.
const MAX_CACHED_USERS: usize = 1_000_000;
const MAX_CACHED_EVENTS: usize = 20_000;
/// Idempotency keys must be kept at least 24 hours; the extra hour absorbs clock adjustments.
const KEY_LIFETIME: chrono::TimeDelta = chrono::TimeDelta::hours(25);
/// Longest a batch waits for callers the previous batch answered (see `gather_stragglers`).
const STRAGGLER_WAIT: Duration = Duration::from_micros(300);
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// Expired keys deleted per statement, so that a purge never holds the write lock for long.
const PURGE_ROWS: i64 = 10_000;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A write, with the channel its answer goes back on.
pub(crate) enum Command {
    EnsureUser {
        user_id: Uuid,
        initial_balance: i64,
        reply: Reply<i64>,
    },
    CreateEvent {
        event: Box<Event>,
        closes_at: DateTime<Utc>,
        reply: Reply<CreateOutcome>,
    },
    CastVote {
        command: VoteCommand,
        reply: Reply<VoteReceipt>,
    },
    Credit {
        command: CreditCommand,
        reply: Reply<CreditReceipt>,
    },
    CloseEvent {
        event_id: Uuid,
        chosen_option: Option<String>,
        now: DateTime<Utc>,
        reply: Reply<CloseOutcome>,
    },
}

impl Command {
    fn fail(self, message: &str) {
        match self {
            Command::EnsureUser { reply, .. } => send_failure(reply, message),
            Command::CreateEvent { reply, .. } => send_failure(reply, message),
            Command::CastVote { reply, .. } => send_failure(reply, message),
            Command::Credit { reply, .. } => send_failure(reply, message),
            Command::CloseEvent { reply, .. } => send_failure(reply, message),
        }
    }
}

fn send_failure<T>(reply: Reply<T>, message: &str) {
    // A caller that stopped waiting has nobody to tell.
    let _ = reply.send(Err(StoreError::Database(message.to_owned())));
}

/// An answer held back until the batch commits; called with the failure if it does not.
type Staged = Box<dyn FnOnce(Option<&str>) + Send + Sync>;

fn stage<T: Send + Sync + 'static>(reply: Reply<T>, result: Result<T, StoreError>) -> Staged {
    Box::new(move |failure: Option<&str>| {
        let answer = match failure {
            Some(message) => Err(StoreError::Database(message.to_owned())),
            None => result,
        };
        // The caller may have given up waiting; what was committed stays committed.
        let _ = reply.send(answer);
    })
}

/// The outer error aborts the whole batch (a database failure); the inner one is this command's
/// own answer (a client's mistake) and the batch carries on.
type Outcome<T> = Result<Result<T, StoreError>, StoreError>;

fn settle<T: Send + Sync + 'static>(
    batch: &mut Batch,
    reply: Reply<T>,
    outcome: Outcome<T>,
) -> Result<(), StoreError> {
    match outcome {
        Ok(result) => {
            batch.staged.push(stage(reply, result));
            Ok(())
        }
        Err(fatal) => {
            send_failure(reply, &failure_message(&fatal));
            Err(fatal)
        }
    }
}

fn failure_message(error: &StoreError) -> String {
    match error {
        StoreError::Database(message) => message.clone(),
        other => other.to_string(),
    }
}

pub(crate) struct Writer {
    connection: SqliteConnection,
    state: State,
}

/// What the writer knows, as of its last commit.
struct State {
    queries: QueryCounter,
    balances: HashMap<Uuid, i64>,
    events: HashMap<Uuid, EventRecord>,
    /// `PRAGMA data_version` when the cache was last known to match the database.
    data_version: Option<i64>,
    /// The id the next ledger entry gets. Assigned here rather than by SQLite so that every
    /// receipt can name its entry, which orders one user's balances (`balance_version`).
    next_ledger_id: Option<i64>,
}

/// One group of commands on its way to a single commit.
struct Batch {
    now: i64,
    /// Idempotency answers: those the database holds for this batch's keys, and those the batch
    /// adds (`fresh`), so that a repeat within the same batch replays too.
    answers: HashMap<(Uuid, String), Answer>,
    /// Users first seen in this batch.
    new_users: Vec<Uuid>,
    dirty_events: HashSet<Uuid>,
    ledger: Vec<LedgerRow>,
    staged: Vec<Staged>,
}

struct Answer {
    kind: AnswerKind,
    fingerprint: Fingerprint,
    response: String,
    fresh: bool,
}

struct LedgerRow {
    id: i64,
    user_id: Uuid,
    amount: i64,
    /// The user's balance after this entry.
    balance: i64,
    kind: LedgerEntryKind,
    /// For vote debits: what the votes went to.
    vote: Option<VoteTarget>,
    reason: Option<String>,
    created_at: i64,
}

struct VoteTarget {
    event_id: Uuid,
    option_id: String,
    votes: i64,
}

/// Serializes like [`StoredVoteAnswer`] without cloning the totals.
#[derive(Serialize)]
struct VoteAnswerView<'a> {
    balance: i64,
    totals: &'a Totals,
    seq: u64,
}

impl Writer {
    pub(crate) fn new(connection: SqliteConnection, queries: QueryCounter) -> Self {
        Writer {
            connection,
            state: State {
                queries,
                balances: HashMap::new(),
                events: HashMap::new(),
                data_version: None,
                next_ledger_id: None,
            },
        }
    }

    /// Serves commands until every sender is gone, then closes the connection.
    pub(crate) async fn run(mut self, mut receiver: mpsc::Receiver<Command>) {
        let mut commands = Vec::with_capacity(MAX_BATCH);
        let mut previous_batch = 0;
        let mut purge = tokio::time::interval(PURGE_EVERY);
        purge.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let received = tokio::select! {
                biased;
                received = receiver.recv_many(&mut commands, MAX_BATCH) => Some(received),
                _ = purge.tick() => None,
            };
            match received {
                Some(0) => break,
                Some(_) => {
                    gather_stragglers(&mut receiver, &mut commands, previous_batch).await;
                    previous_batch = commands.len();
                    self.run_batch(&mut commands).await;
                }
                None => self.purge_expired_keys(&receiver).await,
            }
        }
        if let Err(error) = self.connection.close().await {
            tracing::warn!(%error, "closing the storage writer's connection failed");
        }
    }

    async fn run_batch(&mut self, commands: &mut Vec<Command>) {
        let mut batch = Batch {
            now: Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX),
            answers: HashMap::new(),
            new_users: Vec::new(),
            dirty_events: HashSet::new(),
            ledger: Vec::new(),
            staged: Vec::with_capacity(commands.len()),
        };
        let mut pending = commands.drain(..);
        match self.try_batch(&mut pending, &mut batch).await {
            Ok(()) => {
                for staged in batch.staged {
                    staged(None);
                }
            }
            Err(error) => {
                tracing::error!(%error, "a storage batch failed; each of its commands gets the error");
                self.state.forget();
                let message = failure_message(&error);
                for staged in batch.staged {
                    staged(Some(&message));
                }
                for command in pending {
                    command.fail(&message);
                }
            }
        }
    }

    async fn try_batch(
        &mut self,
        commands: &mut std::vec::Drain<'_, Command>,
        batch: &mut Batch,
    ) -> Result<(), StoreError> {
        let Writer { connection, state } = self;
        state.trim_caches();
        // IMMEDIATE takes the write lock now, so that the data_version read in the same round
        // trip, and every read that follows, see the state this batch will commit on top of.
        state.queries.add(2);
        let version: i64 = sqlx::query_scalar("BEGIN IMMEDIATE; PRAGMA data_version")
            .fetch_one(&mut *connection)
            .await?;
        let written = state.write(connection, version, commands, batch).await;
        if written.is_err() {
            // The transaction is still open unless the failure was the COMMIT itself.
            state.queries.add(1);
            if let Err(error) = sqlx::query("ROLLBACK").execute(&mut *connection).await {
                tracing::debug!(%error, "rolling back a failed batch");
            }
        }
        written
    }

    async fn purge_expired_keys(&mut self, receiver: &mpsc::Receiver<Command>) {
        let Ok(cutoff) = to_nanos(Utc::now() - KEY_LIFETIME) else {
            return;
        };
        loop {
            let deleted = sqlx::query(
                // Rows are in age order by id: everything below the oldest young row is expired,
                // and finding that row scans only the expired ones before it.
                "DELETE FROM idempotency_keys WHERE id < coalesce( \
                 (SELECT id FROM idempotency_keys WHERE created_at >= ?1 ORDER BY id LIMIT 1), \
                 (SELECT max(id) + 1 FROM idempotency_keys)) \
                 AND id < (SELECT min(id) FROM idempotency_keys) + ?2",
            )
            .bind(cutoff)
            .bind(PURGE_ROWS)
            .execute(&mut self.connection)
            .await;
            match deleted {
                // Votes waiting take precedence; the rest goes at the next tick.
                Ok(done) if done.rows_affected() == PURGE_ROWS as u64 && receiver.is_empty() => {
                    continue
                }
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "purging expired idempotency keys failed");
                    break;
                }
            }
        }
    }
}

impl State {
    fn forget(&mut self) {
        self.balances.clear();
        self.events.clear();
        self.data_version = None;
        self.next_ledger_id = None;
    }

    fn trim_caches(&mut self) {
        if self.balances.len() > MAX_CACHED_USERS {
            self.balances.clear();
        }
        if self.events.len() > MAX_CACHED_EVENTS {
            self.events
                .retain(|_, record| record.status == EventStatus::Open);
            if self.events.len() > MAX_CACHED_EVENTS {
                self.events.clear();
            }
        }
    }

    /// Everything of a batch after BEGIN, COMMIT included.
    async fn write(
        &mut self,
        connection: &mut SqliteConnection,
        data_version: i64,
        commands: &mut std::vec::Drain<'_, Command>,
        batch: &mut Batch,
    ) -> Result<(), StoreError> {
        if self.data_version != Some(data_version) {
            if self.data_version.is_some() {
                tracing::debug!("another connection wrote to the database; reloading the cache");
                self.balances.clear();
                self.events.clear();
                self.next_ledger_id = None;
            }
            self.data_version = Some(data_version);
        }
        if self.next_ledger_id.is_none() {
            self.queries.add(1);
            let next: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) + 1 FROM ledger")
                .fetch_one(&mut *connection)
                .await?;
            self.next_ledger_id = Some(next);
        }
        self.prefetch(connection, commands.as_slice(), batch)
            .await?;
        for command in commands.by_ref() {
            self.apply(connection, command, batch).await?;
        }
        self.flush_and_commit(connection, batch).await
    }

    /// Loads, in a few statements, everything the batch's commands will look at and the cache
    /// lacks. Afterwards a user or event missing from the cache does not exist.
    async fn prefetch(
        &mut self,
        connection: &mut SqliteConnection,
        commands: &[Command],
        batch: &mut Batch,
    ) -> Result<(), StoreError> {
        let mut users = Vec::new();
        let mut events = Vec::new();
        let mut keys = Vec::new();
        for command in commands {
            match command {
                Command::EnsureUser { user_id, .. } => users.push(*user_id),
                Command::CreateEvent { event, .. } => events.push(event.id),
                Command::CloseEvent { event_id, .. } => events.push(*event_id),
                Command::CastVote { command, .. } => {
                    users.push(command.user_id);
                    events.push(command.event_id);
                    if let Some(key) = &command.idempotency {
                        keys.push((command.user_id, key.key.as_str()));
                    }
                }
                Command::Credit { command, .. } => {
                    users.push(command.user_id);
                    if let Some(key) = &command.idempotency {
                        keys.push((command.admin_id, key.key.as_str()));
                    }
                }
            }
        }
        users.retain(|user_id| !self.balances.contains_key(user_id));
        users.sort_unstable();
        users.dedup();
        events.retain(|event_id| !self.events.contains_key(event_id));
        events.sort_unstable();
        events.dedup();
        keys.sort_unstable();
        keys.dedup();

        for chunk in users.chunks(ROWS_PER_STATEMENT) {
            // A known user always has an entry (the initial credit), and the latest one holds
            // the balance.
            let mut query = QueryBuilder::<Sqlite>::new(
                "SELECT user_id, (SELECT balance FROM ledger WHERE ledger.user_id = users.user_id \
                 ORDER BY id DESC LIMIT 1) AS balance FROM users WHERE user_id IN (",
            );
            let mut list = query.separated(", ");
            for user_id in chunk {
                list.push_bind(*user_id);
            }
            query.push(")");
            self.queries.add(1);
            for row in query.build().fetch_all(&mut *connection).await? {
                let user_id: Uuid = row.try_get("user_id")?;
                let balance: Option<i64> = row.try_get("balance")?;
                let balance = balance
                    .ok_or_else(|| corrupt(format!("user {user_id} has no ledger entry")))?;
                self.balances.insert(user_id, balance);
            }
        }
        for chunk in events.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Sqlite>::new(format!(
                "SELECT id, {EVENT_COLUMNS} FROM events WHERE id IN ("
            ));
            let mut list = query.separated(", ");
            for event_id in chunk {
                list.push_bind(*event_id);
            }
            query.push(")");
            self.queries.add(1);
            for row in query.build().fetch_all(&mut *connection).await? {
                self.events
                    .insert(row.try_get("id")?, event_from_row(&row)?);
            }
        }
        for chunk in keys.chunks(ROWS_PER_STATEMENT) {
            // A join with the wanted pairs, because `(scope, key) IN (VALUES ...)` scans the table.
            let mut query = QueryBuilder::<Sqlite>::new(
                "SELECT k.scope AS scope, k.key AS key, k.kind AS kind, k.fingerprint AS fingerprint, \
                 k.response AS response FROM (",
            );
            query.push_values(chunk, |mut row, (scope, key)| {
                row.push_bind(*scope).push_bind(*key);
            });
            query.push(
                ") AS wanted JOIN idempotency_keys AS k \
                 ON k.scope = wanted.column1 AND k.key = wanted.column2",
            );
            self.queries.add(1);
            for row in query.build().fetch_all(&mut *connection).await? {
                let answer = Answer {
                    kind: AnswerKind::parse(row.try_get::<&str, _>("kind")?)?,
                    fingerprint: Fingerprint::from_column(row.try_get::<&[u8], _>("fingerprint")?)?,
                    response: row.try_get("response")?,
                    fresh: false,
                };
                batch
                    .answers
                    .insert((row.try_get("scope")?, row.try_get("key")?), answer);
            }
        }
        Ok(())
    }

    async fn apply(
        &mut self,
        connection: &mut SqliteConnection,
        command: Command,
        batch: &mut Batch,
    ) -> Result<(), StoreError> {
        match command {
            Command::EnsureUser {
                user_id,
                initial_balance,
                reply,
            } => {
                let balance = self.known_balance(user_id, initial_balance, batch);
                settle(batch, reply, Ok(Ok(balance)))
            }
            Command::CreateEvent {
                event,
                closes_at,
                reply,
            } => {
                let outcome = self.create_event(connection, *event, closes_at).await;
                settle(batch, reply, outcome)
            }
            Command::CastVote { command, reply } => {
                let outcome = self.cast_vote(command, batch);
                settle(batch, reply, outcome)
            }
            Command::Credit { command, reply } => {
                let outcome = self.credit(command, batch);
                settle(batch, reply, outcome)
            }
            Command::CloseEvent {
                event_id,
                chosen_option,
                now,
                reply,
            } => {
                let outcome = self
                    .close_event(connection, event_id, chosen_option, now, batch)
                    .await;
                settle(batch, reply, outcome)
            }
        }
    }

    /// The user's balance, first making the user known to the ledger with an initial credit
    /// entry (recorded even when it is 0, so that "known" is itself durable).
    fn known_balance(&mut self, user_id: Uuid, initial_balance: i64, batch: &mut Batch) -> i64 {
        if let Some(balance) = self.balances.get(&user_id) {
            return *balance;
        }
        self.balances.insert(user_id, initial_balance);
        batch.new_users.push(user_id);
        let id = take_ledger_id(&mut self.next_ledger_id);
        batch.ledger.push(LedgerRow {
            id,
            user_id,
            amount: initial_balance,
            balance: initial_balance,
            kind: LedgerEntryKind::InitialCredit,
            vote: None,
            reason: None,
            created_at: batch.now,
        });
        initial_balance
    }

    fn cast_vote(&mut self, command: VoteCommand, batch: &mut Batch) -> Outcome<VoteReceipt> {
        let VoteCommand {
            user_id,
            event_id,
            option_id,
            votes,
            idempotency,
            now,
            initial_balance,
        } = command;
        let balance = self.known_balance(user_id, initial_balance, batch);
        if let Some(key) = &idempotency {
            if let Some(answer) = batch.answers.get(&(user_id, key.key.clone())) {
                if answer.kind != AnswerKind::Vote
                    || answer.fingerprint != Fingerprint::of(&key.fingerprint)
                {
                    return Ok(Err(StoreError::IdempotencyKeyReused));
                }
                let stored: StoredVoteAnswer = from_json(&answer.response)?;
                return Ok(Ok(VoteReceipt {
                    balance: stored.balance,
                    totals: stored.totals,
                    seq: stored.seq,
                    balance_version: 0,
                    replayed: true,
                }));
            }
        }
        let Some(record) = self.events.get_mut(&event_id) else {
            return Ok(Err(StoreError::NotFound));
        };
        if record.status == EventStatus::Closed || now >= record.closes_at {
            return Ok(Err(StoreError::EventClosed));
        }
        if !record
            .event
            .options
            .iter()
            .any(|option| option.id == option_id)
        {
            return Ok(Err(StoreError::UnknownOption(option_id)));
        }
        let needed = i64::try_from(u128::from(votes) * u128::from(record.event.cost_per_vote))
            .unwrap_or(i64::MAX);
        if balance < needed {
            return Ok(Err(StoreError::InsufficientBalance { balance, needed }));
        }
        let created_at = match to_nanos(now) {
            Ok(created_at) => created_at,
            Err(error) => return Ok(Err(error)),
        };

        let balance = balance - needed;
        self.balances.insert(user_id, balance);
        match record.totals.get_mut(&option_id) {
            Some(total) => *total += u64::from(votes),
            None => {
                record.totals.insert(option_id.clone(), u64::from(votes));
            }
        }
        record.seq += 1;
        batch.dirty_events.insert(event_id);
        let id = take_ledger_id(&mut self.next_ledger_id);
        batch.ledger.push(LedgerRow {
            id,
            user_id,
            amount: -needed,
            balance,
            kind: LedgerEntryKind::VoteDebit,
            vote: Some(VoteTarget {
                event_id,
                option_id,
                votes: i64::from(votes),
            }),
            reason: None,
            created_at,
        });
        if let Some(key) = idempotency {
            let response = to_json(&VoteAnswerView {
                balance,
                totals: &record.totals,
                seq: record.seq,
            })?;
            batch.answers.insert(
                (user_id, key.key),
                Answer {
                    kind: AnswerKind::Vote,
                    fingerprint: Fingerprint::of(&key.fingerprint),
                    response,
                    fresh: true,
                },
            );
        }
        Ok(Ok(VoteReceipt {
            balance,
            totals: record.totals.clone(),
            seq: record.seq,
            balance_version: id as u64,
            replayed: false,
        }))
    }

    fn credit(&mut self, command: CreditCommand, batch: &mut Batch) -> Outcome<CreditReceipt> {
        let CreditCommand {
            admin_id,
            user_id,
            amount,
            reason,
            idempotency,
            initial_balance,
        } = command;
        let balance = self.known_balance(user_id, initial_balance, batch);
        if let Some(key) = &idempotency {
            if let Some(answer) = batch.answers.get(&(admin_id, key.key.clone())) {
                if answer.kind != AnswerKind::Credit
                    || answer.fingerprint != Fingerprint::of(&key.fingerprint)
                {
                    return Ok(Err(StoreError::IdempotencyKeyReused));
                }
                let stored: StoredCreditAnswer = from_json(&answer.response)?;
                return Ok(Ok(CreditReceipt {
                    balance: stored.balance,
                    balance_version: 0,
                    replayed: true,
                }));
            }
        }
        let Some(balance) = balance.checked_add(amount) else {
            return Ok(Err(StoreError::Database(format!(
                "crediting {amount} would overflow the balance"
            ))));
        };
        self.balances.insert(user_id, balance);
        let id = take_ledger_id(&mut self.next_ledger_id);
        batch.ledger.push(LedgerRow {
            id,
            user_id,
            amount,
            balance,
            kind: LedgerEntryKind::AdminCredit,
            vote: None,
            reason: Some(reason),
            created_at: batch.now,
        });
        if let Some(key) = idempotency {
            let response = to_json(&StoredCreditAnswer { balance })?;
            batch.answers.insert(
                (admin_id, key.key),
                Answer {
                    kind: AnswerKind::Credit,
                    fingerprint: Fingerprint::of(&key.fingerprint),
                    response,
                    fresh: true,
                },
            );
        }
        Ok(Ok(CreditReceipt {
            balance,
            balance_version: id as u64,
            replayed: false,
        }))
    }

    async fn create_event(
        &mut self,
        connection: &mut SqliteConnection,
        event: Event,
        closes_at: DateTime<Utc>,
    ) -> Outcome<CreateOutcome> {
        if let Some(existing) = self.events.get(&event.id) {
            return Ok(compare_existing(existing, &event, closes_at));
        }
        let closes_at_nanos = match to_nanos(closes_at) {
            Ok(nanos) => nanos,
            Err(error) => return Ok(Err(error)),
        };
        let record = EventRecord {
            totals: event
                .options
                .iter()
                .map(|option| (option.id.clone(), 0))
                .collect(),
            event,
            closes_at,
            status: EventStatus::Open,
            seq: 0,
            result: None,
            closed_at: None,
        };
        let event_id = record.event.id;
        self.queries.add(1);
        let inserted = sqlx::query(
            "INSERT INTO events (id, streamer_id, body, closes_at, status, totals, seq, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, 0, ?) ON CONFLICT (id) DO NOTHING",
        )
        .bind(event_id)
        .bind(record.event.streamer_id)
        .bind(to_json(&record.event)?)
        .bind(closes_at_nanos)
        .bind(status_name(EventStatus::Open))
        .bind(to_json(&record.totals)?)
        .bind(to_nanos(Utc::now())?)
        .execute(&mut *connection)
        .await?;
        if inserted.rows_affected() == 0 {
            // Only a cache that missed a row gets here; the row is the truth.
            let existing = self.load_event(connection, event_id).await?;
            return Ok(compare_existing(&existing, &record.event, closes_at));
        }
        self.events.insert(event_id, record.clone());
        Ok(Ok(CreateOutcome::Created(record)))
    }

    async fn close_event(
        &mut self,
        connection: &mut SqliteConnection,
        event_id: Uuid,
        chosen_option: Option<String>,
        now: DateTime<Utc>,
        batch: &mut Batch,
    ) -> Outcome<CloseOutcome> {
        let Some(record) = self.events.get(&event_id) else {
            return Ok(Err(StoreError::NotFound));
        };
        if record.status == EventStatus::Closed {
            return Ok(Ok(CloseOutcome {
                record: record.clone(),
                newly_closed: false,
            }));
        }
        let winner = match chosen_option {
            Some(option_id)
                if record
                    .event
                    .options
                    .iter()
                    .any(|option| option.id == option_id) =>
            {
                option_id
            }
            Some(option_id) => return Ok(Err(StoreError::UnknownOption(option_id))),
            None => leading_option(record),
        };
        let closed_at = match to_nanos(now) {
            Ok(nanos) => nanos,
            Err(error) => return Ok(Err(error)),
        };
        let mut closed = record.clone();
        closed.status = EventStatus::Closed;
        closed.seq += 1;
        closed.closed_at = Some(now);
        closed.result = Some(EventResult {
            option_id: winner,
            totals: closed.totals.clone(),
        });

        self.queries.add(1);
        // Conditional on the row still being open, so that exactly one closer wins even when
        // several processes share the file.
        let updated = sqlx::query(
            "UPDATE events SET status = ?, result = ?, closed_at = ?, totals = ?, seq = ? \
             WHERE id = ? AND status = ?",
        )
        .bind(status_name(EventStatus::Closed))
        .bind(to_json(&closed.result)?)
        .bind(closed_at)
        .bind(to_json(&closed.totals)?)
        .bind(seq_column(closed.seq)?)
        .bind(event_id)
        .bind(status_name(EventStatus::Open))
        .execute(&mut *connection)
        .await?;
        if updated.rows_affected() == 1 {
            // The statement above wrote this batch's totals and seq already.
            batch.dirty_events.remove(&event_id);
            self.events.insert(event_id, closed.clone());
            return Ok(Ok(CloseOutcome {
                record: closed,
                newly_closed: true,
            }));
        }
        if batch.dirty_events.contains(&event_id) {
            return Err(StoreError::Database(
                "an event this batch voted on was closed by another connection".to_owned(),
            ));
        }
        let current = self.load_event(connection, event_id).await?;
        if current.status != EventStatus::Closed {
            return Err(StoreError::Database(format!(
                "closing event {event_id} changed no row although it is open"
            )));
        }
        Ok(Ok(CloseOutcome {
            record: current,
            newly_closed: false,
        }))
    }

    async fn load_event(
        &mut self,
        connection: &mut SqliteConnection,
        event_id: Uuid,
    ) -> Result<EventRecord, StoreError> {
        self.queries.add(1);
        let row = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?"))
            .bind(event_id)
            .fetch_optional(&mut *connection)
            .await?
            .ok_or_else(|| {
                StoreError::Database(format!("event {event_id} vanished during a write"))
            })?;
        let record = event_from_row(&row)?;
        self.events.insert(event_id, record.clone());
        Ok(record)
    }

    /// Writes everything the batch changed and commits, in one round trip to the connection's
    /// thread: a few multi-row statements of up to [`ROWS_PER_STATEMENT`] rows, then COMMIT.
    async fn flush_and_commit(
        &mut self,
        connection: &mut SqliteConnection,
        batch: &Batch,
    ) -> Result<(), StoreError> {
        let mut events = Vec::with_capacity(batch.dirty_events.len());
        for event_id in &batch.dirty_events {
            let record = self.events.get(event_id).ok_or_else(|| {
                StoreError::Database(format!("event {event_id} left the cache mid-batch"))
            })?;
            events.push((*event_id, to_json(&record.totals)?, seq_column(record.seq)?));
        }
        let fresh: Vec<_> = batch
            .answers
            .iter()
            .filter(|(_, answer)| answer.fresh)
            .collect();

        let mut query = QueryBuilder::<Sqlite>::new("");
        let mut statements = 1;
        // Users first: ledger entries and votes refer to them.
        for chunk in batch.new_users.chunks(ROWS_PER_STATEMENT) {
            statements += 1;
            query.push("INSERT INTO users (user_id, created_at) ");
            query.push_values(chunk, |mut row, user_id| {
                row.push_bind(*user_id).push_bind(batch.now);
            });
            query.push("; ");
        }
        for chunk in batch.ledger.chunks(ROWS_PER_STATEMENT) {
            statements += 1;
            query.push(
                "INSERT INTO ledger (id, user_id, amount, balance, kind, event_id, option_id, \
                 votes, reason, created_at) ",
            );
            query.push_values(chunk, |mut row, entry| {
                let vote = entry.vote.as_ref();
                row.push_bind(entry.id)
                    .push_bind(entry.user_id)
                    .push_bind(entry.amount)
                    .push_bind(entry.balance)
                    .push_bind(kind_name(entry.kind))
                    .push_bind(vote.map(|vote| vote.event_id))
                    .push_bind(vote.map(|vote| vote.option_id.as_str()))
                    .push_bind(vote.map(|vote| vote.votes))
                    .push_bind(entry.reason.as_deref())
                    .push_bind(entry.created_at);
            });
            query.push("; ");
        }
        for chunk in events.chunks(ROWS_PER_STATEMENT) {
            statements += 1;
            query.push("UPDATE events SET totals = batch.column2, seq = batch.column3 FROM (");
            query.push_values(chunk, |mut row, (event_id, totals, seq)| {
                row.push_bind(*event_id)
                    .push_bind(totals.as_str())
                    .push_bind(*seq);
            });
            query.push(") AS batch WHERE events.id = batch.column1; ");
        }
        for chunk in fresh.chunks(ROWS_PER_STATEMENT) {
            statements += 1;
            query.push(
                "INSERT INTO idempotency_keys (scope, key, kind, fingerprint, response, created_at) ",
            );
            query.push_values(chunk, |mut row, ((scope, key), answer)| {
                row.push_bind(*scope)
                    .push_bind(key.as_str())
                    .push_bind(answer.kind.name())
                    .push_bind(answer.fingerprint.as_bytes())
                    .push_bind(answer.response.as_str())
                    .push_bind(batch.now);
            });
            query.push("; ");
        }
        query.push("COMMIT");
        self.queries.add(statements);
        query.build().execute(&mut *connection).await?;
        Ok(())
    }
}

/// The id of the ledger entry about to be pushed; `write` loads the counter before any command
/// runs. A free function so it can be called while an event of the cache is borrowed.
fn take_ledger_id(next_ledger_id: &mut Option<i64>) -> i64 {
    let id = next_ledger_id.unwrap_or(1);
    *next_ledger_id = Some(id + 1);
    id
}

fn compare_existing(
    existing: &EventRecord,
    event: &Event,
    closes_at: DateTime<Utc>,
) -> Result<CreateOutcome, StoreError> {
    if existing.event == *event && existing.closes_at == closes_at {
        Ok(CreateOutcome::AlreadyExists(existing.clone()))
    } else {
        Err(StoreError::Conflict)
    }
}

/// The option with the most votes; on a tie, the one listed first.
fn leading_option(record: &EventRecord) -> String {
    let mut leader: Option<(&str, u64)> = None;
    for option in &record.event.options {
        let votes = record.totals.get(&option.id).copied().unwrap_or(0);
        if leader.is_none_or(|(_, most)| votes > most) {
            leader = Some((&option.id, votes));
        }
    }
    leader
        .map(|(option_id, _)| option_id.to_owned())
        .unwrap_or_default()
}

fn seq_column(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::Database(format!("seq {seq} does not fit a column")))
}

/// Callers answered by the previous batch are just now sending their next command. Waiting a
/// moment for them makes this batch bigger, and one more command in a batch costs far less than
/// one more commit. The wait ends as soon as as many commands are queued as the previous batch
/// answered, so a lone request waits only for a couple of yields to the scheduler.
async fn gather_stragglers(
    receiver: &mut mpsc::Receiver<Command>,
    commands: &mut Vec<Command>,
    expected: usize,
) {
    let expected = expected.min(MAX_BATCH);
    let started = std::time::Instant::now();
    for attempt in 0.. {
        while commands.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(command) => commands.push(command),
                Err(_) => break,
            }
        }
        let waited = std::time::Instant::now() - started;
        if commands.len() >= expected.max(1) && attempt >= 2 || waited >= STRAGGLER_WAIT {
            return;
        }
        tokio::task::yield_now().await;
    }
}
