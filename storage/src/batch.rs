//! The single writer task and its group commit, for any database behind [`Backend`].
//!
//! It takes whatever commands are queued (up to [`MAX_BATCH`], after a short wait for callers
//! it has just answered), opens one transaction holding the database's write lock, loads what
//! the ledger cache lacks, runs each command in arrival order through the rules of
//! [`crate::ledger`], writes what they produced and commits. Each caller is answered only after
//! COMMIT, so an answer means the change is durable. Because commands are checked one after the
//! other, two votes cannot spend the same balance and two identical idempotent requests cannot
//! both apply, even within one batch. A request that a rule refuses writes nothing and leaves
//! no idempotency record.
//!
//! If the transaction fails, every command of the group gets the error and the cache is
//! dropped, to be reloaded on demand: it is a cache of the database, never ahead of it once a
//! batch ends.
//!
//! Every command carries a deadline. One still queued when the batch that took it holds the
//! write lock, but past its deadline, is refused with nothing written: its caller has stopped
//! waiting and was told the store is unavailable. A [`Command::Ready`] probe runs a whole
//! (empty) transaction, so it is answered only when the writer can take the write lock now.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use livevote_protocol::Event;
use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;
use uuid::Uuid;

use crate::ledger::{compare_existing, Changes, Ledger, Plan};
use crate::{
    CloseOutcome, CreateOutcome, CreditCommand, CreditReceipt, EventRecord, StoreError,
    Unavailable, VoteCommand, VoteReceipt,
};

mod queue;

pub(crate) use queue::{until, Queue};

/// Most commands committed together. Large enough that one fsync serves hundreds of votes,
/// small enough that no statement comes near a database's limit of bound parameters.
pub(crate) const MAX_BATCH: usize = 512;
/// Longest a batch waits for callers the previous batch answered (see `gather_stragglers`).
const STRAGGLER_WAIT: Duration = Duration::from_micros(300);
/// How often the backend's upkeep runs between batches.
const UPKEEP_EVERY: Duration = Duration::from_secs(60);

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
    /// Readiness: answered after the commit of the batch it rides in.
    Ready { reply: Reply<()> },
}

/// A command and the instant its caller stops waiting.
pub(crate) struct Queued {
    pub(crate) command: Command,
    pub(crate) deadline: Instant,
}

impl Command {
    fn fail(self, error: StoreError) {
        match self {
            Command::EnsureUser { reply, .. } => send(reply, Err(error)),
            Command::CreateEvent { reply, .. } => send(reply, Err(error)),
            Command::CastVote { reply, .. } => send(reply, Err(error)),
            Command::Credit { reply, .. } => send(reply, Err(error)),
            Command::CloseEvent { reply, .. } => send(reply, Err(error)),
            Command::Ready { reply } => send(reply, Err(error)),
        }
    }
}

fn send<T>(reply: Reply<T>, answer: Result<T, StoreError>) {
    // A caller that stopped waiting has nobody to tell; what was committed stays committed.
    let _ = reply.send(answer);
}

/// What the ids, events and keys of a batch's commands are, for the backend to load.
#[derive(Debug, Default)]
pub(crate) struct Wanted {
    /// Every user the commands name, sorted and without repeats: all of them must be loaded
    /// when the cache turns out to be stale once the lock is taken.
    pub(crate) users: Vec<Uuid>,
    /// Every event the commands name, sorted and without repeats.
    pub(crate) events: Vec<Uuid>,
    /// Every `(scope, key)` the commands carry, sorted and without repeats.
    pub(crate) keys: Vec<(Uuid, String)>,
}

impl Wanted {
    /// The wanted users `ledger` does not know.
    pub(crate) fn missing_users(&self, ledger: &Ledger) -> Vec<Uuid> {
        let unknown = |user_id: &&Uuid| ledger.balance(**user_id).is_none();
        self.users.iter().filter(unknown).copied().collect()
    }

    /// The wanted events `ledger` does not know.
    pub(crate) fn missing_events(&self, ledger: &Ledger) -> Vec<Uuid> {
        let unknown = |event_id: &&Uuid| ledger.event(**event_id).is_none();
        self.events.iter().filter(unknown).copied().collect()
    }
}

/// The database side of the writer: one connection that holds the write lock for a batch.
/// Everything a command decides comes from the rules; the backend only reads and writes.
#[async_trait]
pub(crate) trait Backend: Send + 'static {
    /// Opens the batch's transaction holding the write lock, brings `ledger` in line with
    /// whatever another writer committed since (forgetting it, and loading the next entry id
    /// when the ledger lacks it), and loads the users and events of `wanted` the ledger then
    /// lacks (afterwards one still missing does not exist), and into `changes.answers` the
    /// stored answers of its keys. A backend does this in as few round trips as it can: every
    /// one after the lock is taken is time every other node's writer waits.
    async fn begin(
        &mut self,
        ledger: &mut Ledger,
        wanted: &Wanted,
        changes: &mut Changes,
    ) -> Result<(), StoreError>;
    /// Inserts a new event unless its id exists; false when it did.
    async fn insert_event(
        &mut self,
        record: &EventRecord,
        changes: &Changes,
    ) -> Result<bool, StoreError>;
    /// Writes a closed record (status, result, closed_at, totals, seq) if the row is still
    /// open; false when it was not.
    async fn close_event(&mut self, closed: &EventRecord) -> Result<bool, StoreError>;
    /// Reads one event row within the transaction.
    async fn load_event(&mut self, event_id: Uuid) -> Result<Option<EventRecord>, StoreError>;
    /// Writes `changes` (new users, entries, the dirty events' totals and seq as `ledger` has
    /// them, fresh answers) and commits.
    async fn commit(&mut self, ledger: &Ledger, changes: &Changes) -> Result<(), StoreError>;
    /// Rolls back after a failure, if the transaction is still open.
    async fn rollback(&mut self);
    /// Background work between batches; stops early when `commands_waiting` says so.
    async fn upkeep(&mut self, commands_waiting: &(dyn Fn() -> bool + Sync));
    /// Closes the connection.
    async fn close(self);
}

/// An answer held back until the batch commits; called with the failure if it does not.
type Staged = Box<dyn FnOnce(Option<&StoreError>) + Send + Sync>;

fn stage<T: Send + Sync + 'static>(reply: Reply<T>, result: Result<T, StoreError>) -> Staged {
    Box::new(move |failure: Option<&StoreError>| {
        let answer = match failure {
            Some(error) => Err(same_failure(error)),
            None => result,
        };
        send(reply, answer);
    })
}

/// A batch's failure, once for each of its commands: unavailability stays unavailability
/// (answered 503, retry later), anything else is a database failure.
pub(crate) fn same_failure(error: &StoreError) -> StoreError {
    match error {
        StoreError::Unavailable(reason) => StoreError::Unavailable(*reason),
        StoreError::Database(message) => StoreError::Database(message.clone()),
        other => StoreError::Database(other.to_string()),
    }
}

/// The writer task: the ledger cache and the backend's connection.
pub(crate) struct Writer<B: Backend> {
    backend: B,
    ledger: Ledger,
}

impl<B: Backend> Writer<B> {
    pub(crate) fn new(backend: B) -> Self {
        Writer {
            backend,
            ledger: Ledger::new(),
        }
    }

    /// Serves commands until every sender is gone, then closes the connection.
    pub(crate) async fn run(mut self, mut receiver: mpsc::Receiver<Queued>) {
        let mut commands = Vec::with_capacity(MAX_BATCH);
        let mut previous_batch = 0;
        let mut upkeep = tokio::time::interval(UPKEEP_EVERY);
        upkeep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let received = tokio::select! {
                biased;
                received = receiver.recv_many(&mut commands, MAX_BATCH) => Some(received),
                _ = upkeep.tick() => None,
            };
            match received {
                Some(0) => break,
                Some(_) => {
                    gather_stragglers(&mut receiver, &mut commands, previous_batch).await;
                    previous_batch = commands.len();
                    self.run_batch(&mut commands).await;
                }
                None => self.backend.upkeep(&|| !receiver.is_empty()).await,
            }
        }
        self.backend.close().await;
    }

    async fn run_batch(&mut self, queued: &mut Vec<Queued>) {
        let mut changes = Changes::new(Utc::now());
        let mut staged = Vec::with_capacity(queued.len());
        let mut pending = queued.drain(..);
        match self
            .try_batch(&mut pending, &mut changes, &mut staged)
            .await
        {
            Ok(()) => {
                for answer in staged {
                    answer(None);
                }
            }
            Err(error) => {
                tracing::error!(%error, "a storage batch failed; each of its commands gets the error");
                self.ledger.forget();
                for answer in staged {
                    answer(Some(&error));
                }
                for queued in pending {
                    queued.command.fail(same_failure(&error));
                }
            }
        }
    }

    async fn try_batch(
        &mut self,
        pending: &mut std::vec::Drain<'_, Queued>,
        changes: &mut Changes,
        staged: &mut Vec<Staged>,
    ) -> Result<(), StoreError> {
        self.ledger.trim();
        // Commands that expire while the lock is awaited are loaded for nothing, and refused
        // below all the same: harmless, and it lets the lock and the loads share a round trip.
        let wanted = Self::wanted(pending.as_slice(), Instant::now());
        let mut written = self.backend.begin(&mut self.ledger, &wanted, changes).await;
        if written.is_ok() {
            written = self.write(pending, changes, staged).await;
        }
        if written.is_err() {
            // Also after a failed begin: it may have opened the transaction before failing.
            self.backend.rollback().await;
        }
        written
    }

    /// Everything of a batch after the lock was taken, COMMIT included.
    async fn write(
        &mut self,
        pending: &mut std::vec::Drain<'_, Queued>,
        changes: &mut Changes,
        staged: &mut Vec<Staged>,
    ) -> Result<(), StoreError> {
        // The write lock is held from here on: what waited past its deadline is refused now,
        // before it can change anything, rather than committed behind its caller's back.
        let locked_at = Instant::now();
        for queued in pending.by_ref() {
            if queued.deadline <= locked_at {
                queued
                    .command
                    .fail(StoreError::Unavailable(Unavailable::DeadlineExceeded));
                continue;
            }
            self.apply(queued.command, changes, staged).await?;
        }
        self.backend.commit(&self.ledger, changes).await
    }

    /// What the batch's live commands will look at.
    fn wanted(queued: &[Queued], now: Instant) -> Wanted {
        let mut wanted = Wanted::default();
        for queued in queued.iter().filter(|queued| queued.deadline > now) {
            match &queued.command {
                Command::EnsureUser { user_id, .. } => wanted.users.push(*user_id),
                Command::CreateEvent { event, .. } => wanted.events.push(event.id),
                Command::CloseEvent { event_id, .. } => wanted.events.push(*event_id),
                Command::CastVote { command, .. } => {
                    wanted.users.push(command.user_id);
                    wanted.events.push(command.event_id);
                    if let Some(key) = &command.idempotency {
                        wanted.keys.push((command.user_id, key.key.clone()));
                    }
                }
                Command::Credit { command, .. } => {
                    wanted.users.push(command.user_id);
                    if let Some(key) = &command.idempotency {
                        wanted.keys.push((command.admin_id, key.key.clone()));
                    }
                }
                Command::Ready { .. } => {}
            }
        }
        wanted.users.sort_unstable();
        wanted.users.dedup();
        wanted.events.sort_unstable();
        wanted.events.dedup();
        wanted.keys.sort_unstable();
        wanted.keys.dedup();
        wanted
    }

    async fn apply(
        &mut self,
        command: Command,
        changes: &mut Changes,
        staged: &mut Vec<Staged>,
    ) -> Result<(), StoreError> {
        match command {
            Command::EnsureUser {
                user_id,
                initial_balance,
                reply,
            } => {
                let balance = self.ledger.ensure_user(user_id, initial_balance, changes);
                staged.push(stage(reply, Ok(balance)));
            }
            Command::CreateEvent {
                event,
                closes_at,
                reply,
            } => match self.create_event(*event, closes_at, changes).await {
                Ok(result) => staged.push(stage(reply, result)),
                Err(fatal) => return Err(answer_fatal(reply, fatal)),
            },
            Command::CastVote { command, reply } => {
                let result = self.ledger.cast_vote(command, changes);
                staged.push(stage(reply, result));
            }
            Command::Credit { command, reply } => {
                let result = self.ledger.credit(command, changes);
                staged.push(stage(reply, result));
            }
            Command::CloseEvent {
                event_id,
                chosen_option,
                now,
                reply,
            } => match self
                .close_event(event_id, chosen_option, now, changes)
                .await
            {
                Ok(result) => staged.push(stage(reply, result)),
                Err(fatal) => return Err(answer_fatal(reply, fatal)),
            },
            Command::Ready { reply } => staged.push(stage(reply, Ok(()))),
        }
        Ok(())
    }

    /// The outer error aborts the batch (a database failure); the inner one is the command's
    /// own answer and the batch carries on.
    async fn create_event(
        &mut self,
        event: Event,
        closes_at: DateTime<Utc>,
        changes: &Changes,
    ) -> Result<Result<CreateOutcome, StoreError>, StoreError> {
        let event_id = event.id;
        let record = match self.ledger.plan_create(event, closes_at) {
            Plan::Answered(answer) => return Ok(answer),
            Plan::Write(record) => record,
        };
        if self.backend.insert_event(&record, changes).await? {
            return Ok(Ok(self.ledger.created(record)));
        }
        // Only a cache that missed a row gets here; the row is the truth.
        let existing = self.reload_event(event_id).await?;
        Ok(compare_existing(&existing, &record.event, closes_at))
    }

    async fn close_event(
        &mut self,
        event_id: Uuid,
        chosen_option: Option<String>,
        now: DateTime<Utc>,
        changes: &mut Changes,
    ) -> Result<Result<CloseOutcome, StoreError>, StoreError> {
        let closed = match self.ledger.plan_close(event_id, chosen_option, now) {
            Plan::Answered(answer) => return Ok(answer),
            Plan::Write(closed) => closed,
        };
        // Conditional on the row still being open, so that exactly one closer wins even when
        // several processes share the database.
        if self.backend.close_event(&closed).await? {
            return Ok(Ok(self.ledger.closed(closed, changes)));
        }
        if changes.dirty_events.contains(&event_id) {
            return Err(StoreError::Database(
                "an event this batch voted on was closed by another connection".to_owned(),
            ));
        }
        let current = self.reload_event(event_id).await?;
        if current.status != livevote_protocol::EventStatus::Closed {
            return Err(StoreError::Database(format!(
                "closing event {event_id} changed no row although it is open"
            )));
        }
        Ok(Ok(CloseOutcome {
            record: current,
            newly_closed: false,
        }))
    }

    async fn reload_event(&mut self, event_id: Uuid) -> Result<EventRecord, StoreError> {
        let record = self.backend.load_event(event_id).await?.ok_or_else(|| {
            StoreError::Database(format!("event {event_id} vanished during a write"))
        })?;
        self.ledger.remember_event(record.clone());
        Ok(record)
    }
}

/// Tells the caller whose command broke the batch, and hands the error on to abort it.
fn answer_fatal<T>(reply: Reply<T>, fatal: StoreError) -> StoreError {
    send(reply, Err(same_failure(&fatal)));
    fatal
}

/// Callers answered by the previous batch are just now sending their next command. Waiting a
/// moment for them makes this batch bigger, and one more command in a batch costs far less than
/// one more commit. The wait ends as soon as as many commands are queued as the previous batch
/// answered, so a lone request waits only for a couple of yields to the scheduler.
async fn gather_stragglers(
    receiver: &mut mpsc::Receiver<Queued>,
    commands: &mut Vec<Queued>,
    expected: usize,
) {
    let expected = expected.min(MAX_BATCH);
    let started = Instant::now();
    for attempt in 0.. {
        while commands.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(command) => commands.push(command),
                Err(_) => break,
            }
        }
        let waited = Instant::now() - started;
        if commands.len() >= expected.max(1) && attempt >= 2 || waited >= STRAGGLER_WAIT {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// How long callers wait for the writer, and how many may queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterOptions {
    /// Longest a write waits for its answer; past it the caller gets
    /// [`Unavailable::DeadlineExceeded`].
    pub call_deadline: Duration,
    /// Longest [`Store::ready`](crate::Store::ready) waits for the writer.
    pub ready_deadline: Duration,
    /// Commands that may wait for the writer; past it a write is refused at once with
    /// [`Unavailable::QueueFull`] rather than waiting for room.
    pub queue_capacity: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            // Longer than a batch takes under load (tens of milliseconds), short enough that a
            // client is told to retry rather than left hanging.
            call_deadline: Duration::from_secs(5),
            // Orchestrators' probes time out after about a second.
            ready_deadline: Duration::from_secs(1),
            queue_capacity: 8192,
        }
    }
}
