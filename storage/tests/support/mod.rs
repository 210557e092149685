//! Helpers shared by the storage tests: stores on a temporary file or in memory, and events
//! and commands with sensible defaults.

#![allow(dead_code)]

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use livevote_protocol::{Event, EventOption, Timestamp};
use livevote_storage::sqlite::SqliteStore;
use livevote_storage::{CreditCommand, IdempotencyKey, Store, VoteCommand};
use tempfile::TempDir;
use uuid::Uuid;

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
pub async fn open_event(store: &impl Store, cost_per_vote: u64) -> Event {
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
pub async fn assert_ledger_sums(store: &impl Store, user_id: Uuid) -> i64 {
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
