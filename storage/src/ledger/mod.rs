//! The ledger's rules, apart from any database: what each write command may do and answers,
//! given the state it sees. A store loads that state ([`Ledger`]), runs its commands through
//! these rules one after the other in arrival order, writes what they produced ([`Changes`])
//! and answers after its commit. SQLite does that in [`crate::sqlite`], Postgres in
//! [`crate::postgres`], each with its own statements.
//!
//! The rules: a vote costs `votes × costPerVote` and is refused, with nothing written, when the
//! balance is smaller, the event is unknown, closed or past its `closesAt`, or the option is not
//! the event's; a user new to the ledger is credited its initial balance first, as an entry,
//! even when the command itself is then refused; a request repeating an idempotency key gets
//! the first answer and changes nothing, and a key reused for another request is refused; an
//! event is created once (an identical repeat is told so, a different body is a conflict) and
//! closed once, with the chosen option or the leading one (ties: the first listed).

mod idempotency;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use livevote_protocol::{Event, EventResult, EventStatus};
use uuid::Uuid;

use crate::{
    CloseOutcome, CreateOutcome, CreditCommand, CreditReceipt, EventRecord, LedgerEntryKind,
    StoreError, VoteCommand, VoteReceipt,
};

pub use idempotency::{Answer, Answers, Fingerprint, StoredResponse};

/// Past these sizes the caches are emptied and refilled on demand, which bounds memory.
const MAX_CACHED_USERS: usize = 1_000_000;
const MAX_CACHED_EVENTS: usize = 20_000;

/// What the rules know of the database, as of the last commit: balances of known users and
/// events with their totals and `seq`. A cache: a store may [`forget`](Ledger::forget) it at
/// any time and load again what the next commands need.
#[derive(Debug, Default)]
pub struct Ledger {
    balances: HashMap<Uuid, i64>,
    events: HashMap<Uuid, EventRecord>,
    /// The id the next ledger entry gets. Assigned here rather than by the database so that
    /// every receipt can name its entry, which orders one user's balances (`balance_version`).
    next_entry_id: Option<i64>,
}

/// What one batch of commands adds to the database, for the store to write before it commits.
#[derive(Debug)]
pub struct Changes {
    /// The batch's clock: when its users, credits and idempotency keys were created.
    pub now: DateTime<Utc>,
    /// Users first seen in this batch, in order.
    pub new_users: Vec<Uuid>,
    /// New ledger entries, in id order.
    pub entries: Vec<NewEntry>,
    /// Events whose totals and `seq` changed and are not yet written.
    pub dirty_events: HashSet<Uuid>,
    /// Idempotency answers for this batch's keys, loaded and fresh.
    pub answers: Answers,
}

/// A ledger entry the batch adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// Grows with every entry, across users.
    pub id: i64,
    /// Whose entry it is.
    pub user_id: Uuid,
    /// Positive for credits, negative for debits.
    pub amount: i64,
    /// The user's balance after this entry.
    pub balance: i64,
    /// Why the balance changed.
    pub kind: LedgerEntryKind,
    /// For vote debits: what the votes went to.
    pub vote: Option<VoteTarget>,
    /// For admin credits: the admin's reason.
    pub reason: Option<String>,
    /// When the entry was made.
    pub created_at: DateTime<Utc>,
}

/// What a vote debit bought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoteTarget {
    /// The event voted on.
    pub event_id: Uuid,
    /// The option voted for.
    pub option_id: String,
    /// How many votes.
    pub votes: i64,
}

/// What a command that needs a conditional write (create, close) decided before that write.
// Made and taken apart at once, never stored: boxing the record would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Plan<Outcome> {
    /// The answer needs no write.
    Answered(Result<Outcome, StoreError>),
    /// Write this record (inserted if new, or the closed record), then confirm it with
    /// [`Ledger::created`] or [`Ledger::closed`]. Another process may have written first:
    /// then load the row, [`Ledger::remember_event`] it and plan again.
    Write(EventRecord),
}

impl Changes {
    /// An empty batch at `now`.
    pub fn new(now: DateTime<Utc>) -> Self {
        Changes {
            now,
            new_users: Vec::new(),
            entries: Vec::new(),
            dirty_events: HashSet::new(),
            answers: Answers::new(),
        }
    }
}

impl Ledger {
    /// An empty cache.
    pub fn new() -> Self {
        Ledger::default()
    }

    /// Drops everything, to be loaded again (after a failed batch, or another writer's commit).
    pub fn forget(&mut self) {
        self.balances.clear();
        self.events.clear();
        self.next_entry_id = None;
    }

    /// Bounds the cache's memory between batches; closed events go first.
    pub fn trim(&mut self) {
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

    /// Whether the next entry id is known; a store loads it before any command runs.
    pub fn knows_next_entry_id(&self) -> bool {
        self.next_entry_id.is_some()
    }

    /// Sets the id the next ledger entry gets (one more than the largest in the database).
    pub fn set_next_entry_id(&mut self, next_entry_id: i64) {
        self.next_entry_id = Some(next_entry_id);
    }

    /// A known user's balance.
    pub fn balance(&self, user_id: Uuid) -> Option<i64> {
        self.balances.get(&user_id).copied()
    }

    /// Records a balance loaded from the database.
    pub fn remember_balance(&mut self, user_id: Uuid, balance: i64) {
        self.balances.insert(user_id, balance);
    }

    /// A known event.
    pub fn event(&self, event_id: Uuid) -> Option<&EventRecord> {
        self.events.get(&event_id)
    }

    /// Records an event loaded from the database.
    pub fn remember_event(&mut self, record: EventRecord) {
        self.events.insert(record.event.id, record);
    }

    /// The user's balance, first making the user known to the ledger with an initial credit
    /// entry (recorded even when it is 0, so that "known" is itself durable).
    pub fn ensure_user(
        &mut self,
        user_id: Uuid,
        initial_balance: i64,
        changes: &mut Changes,
    ) -> i64 {
        if let Some(balance) = self.balances.get(&user_id) {
            return *balance;
        }
        self.balances.insert(user_id, initial_balance);
        changes.new_users.push(user_id);
        let id = self.take_entry_id();
        changes.entries.push(NewEntry {
            id,
            user_id,
            amount: initial_balance,
            balance: initial_balance,
            kind: LedgerEntryKind::InitialCredit,
            vote: None,
            reason: None,
            created_at: changes.now,
        });
        initial_balance
    }

    /// Debits `votes × costPerVote` and adds the votes to the event's totals, or refuses.
    pub fn cast_vote(
        &mut self,
        command: VoteCommand,
        changes: &mut Changes,
    ) -> Result<VoteReceipt, StoreError> {
        let VoteCommand {
            user_id,
            event_id,
            option_id,
            votes,
            idempotency,
            now,
            initial_balance,
        } = command;
        let balance = self.ensure_user(user_id, initial_balance, changes);
        if let Some(key) = &idempotency {
            if let Some(replayed) = idempotency::replay(&changes.answers, user_id, key) {
                return replayed;
            }
        }
        let next_entry_id = &mut self.next_entry_id;
        let Some(record) = self.events.get_mut(&event_id) else {
            return Err(StoreError::NotFound);
        };
        if record.status == EventStatus::Closed || now >= record.closes_at {
            return Err(StoreError::EventClosed);
        }
        if !record
            .event
            .options
            .iter()
            .any(|option| option.id == option_id)
        {
            return Err(StoreError::UnknownOption(option_id));
        }
        let needed = i64::try_from(u128::from(votes) * u128::from(record.event.cost_per_vote))
            .unwrap_or(i64::MAX);
        if balance < needed {
            return Err(StoreError::InsufficientBalance { balance, needed });
        }
        let created_at = representable(now)?;

        let balance = balance - needed;
        self.balances.insert(user_id, balance);
        *record.totals.entry(option_id.clone()).or_insert(0) += u64::from(votes);
        record.seq += 1;
        changes.dirty_events.insert(event_id);
        let id = take_entry_id(next_entry_id);
        changes.entries.push(NewEntry {
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
            let response = StoredResponse::Vote {
                balance,
                totals: record.totals.clone(),
                seq: record.seq,
            };
            idempotency::remember(&mut changes.answers, user_id, key, response);
        }
        Ok(VoteReceipt {
            balance,
            totals: record.totals.clone(),
            seq: record.seq,
            balance_version: entry_version(id),
            replayed: false,
        })
    }

    /// Adds an admin's credit to a user's balance. Keys are scoped to the admin.
    pub fn credit(
        &mut self,
        command: CreditCommand,
        changes: &mut Changes,
    ) -> Result<CreditReceipt, StoreError> {
        let CreditCommand {
            admin_id,
            user_id,
            amount,
            reason,
            idempotency,
            initial_balance,
        } = command;
        let balance = self.ensure_user(user_id, initial_balance, changes);
        if let Some(key) = &idempotency {
            if let Some(replayed) = idempotency::replay(&changes.answers, admin_id, key) {
                return replayed;
            }
        }
        let Some(balance) = balance.checked_add(amount) else {
            return Err(StoreError::Database(format!(
                "crediting {amount} would overflow the balance"
            )));
        };
        self.balances.insert(user_id, balance);
        let id = self.take_entry_id();
        changes.entries.push(NewEntry {
            id,
            user_id,
            amount,
            balance,
            kind: LedgerEntryKind::AdminCredit,
            vote: None,
            reason: Some(reason),
            created_at: changes.now,
        });
        if let Some(key) = idempotency {
            let response = StoredResponse::Credit { balance };
            idempotency::remember(&mut changes.answers, admin_id, key, response);
        }
        Ok(CreditReceipt {
            balance,
            balance_version: entry_version(id),
            replayed: false,
        })
    }

    /// Decides a creation: answered from a known event with this id, or a new record to insert.
    pub fn plan_create(&self, event: Event, closes_at: DateTime<Utc>) -> Plan<CreateOutcome> {
        if let Some(existing) = self.events.get(&event.id) {
            return Plan::Answered(compare_existing(existing, &event, closes_at));
        }
        if let Err(error) = representable(closes_at) {
            return Plan::Answered(Err(error));
        }
        Plan::Write(EventRecord {
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
        })
    }

    /// Confirms that the record [`plan_create`](Ledger::plan_create) asked for was inserted.
    pub fn created(&mut self, record: EventRecord) -> CreateOutcome {
        self.events.insert(record.event.id, record.clone());
        CreateOutcome::Created(record)
    }

    /// Decides a close: answered (unknown event, unknown option, already closed), or the
    /// closed record to write, on the condition that the event is still open.
    pub fn plan_close(
        &self,
        event_id: Uuid,
        chosen_option: Option<String>,
        now: DateTime<Utc>,
    ) -> Plan<CloseOutcome> {
        let Some(record) = self.events.get(&event_id) else {
            return Plan::Answered(Err(StoreError::NotFound));
        };
        if record.status == EventStatus::Closed {
            return Plan::Answered(Ok(CloseOutcome {
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
            Some(option_id) => return Plan::Answered(Err(StoreError::UnknownOption(option_id))),
            None => leading_option(record),
        };
        if let Err(error) = representable(now) {
            return Plan::Answered(Err(error));
        }
        let mut closed = record.clone();
        closed.status = EventStatus::Closed;
        closed.seq += 1;
        closed.closed_at = Some(now);
        closed.result = Some(EventResult {
            option_id: winner,
            totals: closed.totals.clone(),
        });
        Plan::Write(closed)
    }

    /// Confirms that the closed record [`plan_close`](Ledger::plan_close) asked for was
    /// written, totals and `seq` included.
    pub fn closed(&mut self, record: EventRecord, changes: &mut Changes) -> CloseOutcome {
        changes.dirty_events.remove(&record.event.id);
        self.events.insert(record.event.id, record.clone());
        CloseOutcome {
            record,
            newly_closed: true,
        }
    }

    fn take_entry_id(&mut self) -> i64 {
        take_entry_id(&mut self.next_entry_id)
    }
}

/// A free function so that it can be called while an event of the cache is borrowed. A store
/// sets the counter before any command runs; 1 is the first id of an empty ledger.
fn take_entry_id(next_entry_id: &mut Option<i64>) -> i64 {
    let id = next_entry_id.unwrap_or(1);
    *next_entry_id = Some(id + 1);
    id
}

fn entry_version(id: i64) -> u64 {
    u64::try_from(id).unwrap_or(0)
}

/// Refuses a vote that breaks a rule the trait leaves to its caller (at least one vote, an
/// initial balance of at least 0), before it reaches a writer.
pub fn check_vote_call(command: &VoteCommand) -> Result<(), StoreError> {
    if command.votes == 0 {
        return Err(precondition("a vote request casts at least one vote"));
    }
    if command.initial_balance < 0 {
        return Err(precondition("the initial balance cannot be negative"));
    }
    Ok(())
}

/// Refuses a credit that breaks a rule the trait leaves to its caller (at least 1, an initial
/// balance of at least 0), before it reaches a writer.
pub fn check_credit_call(command: &CreditCommand) -> Result<(), StoreError> {
    if command.amount < 1 {
        return Err(precondition("a credit is at least 1"));
    }
    if command.initial_balance < 0 {
        return Err(precondition("the initial balance cannot be negative"));
    }
    Ok(())
}

/// The caller broke a rule the trait leaves to it (the server validates requests first): a bug
/// on the server's side, so it is reported like a database failure rather than as a client's
/// mistake, and nothing is written.
fn precondition(rule: &str) -> StoreError {
    StoreError::Database(format!("invalid store call: {rule}"))
}

/// The answer to a creation whose id is taken: the same event again, or a conflict.
pub fn compare_existing(
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
pub fn leading_option(record: &EventRecord) -> String {
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

/// Instants are kept as Unix nanoseconds (1677 to 2262), the narrowest range of the stores.
pub fn representable(instant: DateTime<Utc>) -> Result<DateTime<Utc>, StoreError> {
    match instant.timestamp_nanos_opt() {
        Some(_) => Ok(instant),
        None => Err(StoreError::Database(format!(
            "{instant} is outside the range the store can hold"
        ))),
    }
}
