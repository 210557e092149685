//! Durability and set-up: a reconnected store keeps balances, events and idempotency keys;
//! every accepted URL form works; making a user known is idempotent and race-free.

#[macro_use]
mod support;

use std::sync::Arc;

use livevote_protocol::EventStatus;
use livevote_storage::postgres::PostgresStore;
use livevote_storage::sqlite::SqliteStore;
use livevote_storage::{LedgerEntryKind, Store};
use support::{assert_ledger_sums, credit, keyed, memory_store, open_event, vote, TestDatabase};
use uuid::Uuid;

async fn a_restart_keeps_balances_events_and_idempotency_keys(database: TestDatabase) {
    let stored = database.connect().await;
    let user_id = Uuid::new_v4();
    let admin_id = Uuid::new_v4();
    stored.ensure_user(user_id, 50).await.unwrap();
    let open = open_event(&stored, 2).await;
    let closed = open_event(&stored, 1).await;
    let first = stored
        .cast_vote(keyed(vote(user_id, &open, "a", 3), "before-restart", "a×3"))
        .await
        .unwrap();
    stored
        .cast_vote(vote(user_id, &closed, "b", 1))
        .await
        .unwrap();
    let closing = stored
        .close_event(closed.id, None, support::now())
        .await
        .unwrap();
    stored.credit(credit(admin_id, user_id, 10)).await.unwrap();
    let open_before = stored.get_event(open.id).await.unwrap().unwrap();
    stored.close().await;

    let store = database.connect().await;
    assert_eq!(store.balance(user_id).await.unwrap(), Some(50 - 6 - 1 + 10));
    assert_ledger_sums(&store, user_id).await;
    assert_eq!(store.get_event(open.id).await.unwrap(), Some(open_before));
    assert_eq!(
        store.get_event(closed.id).await.unwrap(),
        Some(closing.record.clone())
    );

    let replay = store
        .cast_vote(keyed(vote(user_id, &open, "a", 3), "before-restart", "a×3"))
        .await
        .unwrap();
    assert!(replay.replayed);
    assert_eq!(
        (replay.balance, replay.totals, replay.seq),
        (first.balance, first.totals, first.seq)
    );

    let again = store
        .close_event(closed.id, None, support::now())
        .await
        .unwrap();
    assert!(
        !again.newly_closed,
        "a restart does not let an event close twice"
    );
    assert_eq!(again.record, closing.record);

    let after = store.cast_vote(vote(user_id, &open, "b", 1)).await.unwrap();
    assert_eq!(after.seq, 2, "seq continues from the stored value");
    assert_eq!(after.balance, 51);
    assert_eq!(
        store.ensure_user(user_id, 1_000).await.unwrap(),
        51,
        "a known user is not credited again"
    );
    store.close().await;
}

on_every_store!(a_restart_keeps_balances_events_and_idempotency_keys);

#[tokio::test]
async fn every_url_form_opens_a_database() {
    let directory = tempfile::tempdir().unwrap();
    let plain = directory.path().join("plain.db");
    let store = SqliteStore::connect(&format!("sqlite:{}", plain.display()))
        .await
        .unwrap();
    store.ready().await.unwrap();
    store.close().await;
    assert!(plain.exists());

    let nested = directory.path().join("slashes.db");
    let store = SqliteStore::connect(&format!("sqlite://{}", nested.display()))
        .await
        .unwrap();
    store.ready().await.unwrap();
    store.close().await;
    assert!(nested.exists());

    // Two in-memory stores are two databases.
    let first = memory_store().await;
    let second = memory_store().await;
    let user_id = Uuid::new_v4();
    first.ensure_user(user_id, 3).await.unwrap();
    assert_eq!(first.balance(user_id).await.unwrap(), Some(3));
    assert_eq!(second.balance(user_id).await.unwrap(), None);

    assert!(SqliteStore::connect("postgres://localhost/livevote")
        .await
        .is_err());
    assert!(PostgresStore::connect("sqlite::memory:").await.is_err());
}

async fn concurrent_first_requests_credit_the_initial_balance_once(database: TestDatabase) {
    let store = Arc::new(database.connect().await);
    let user_id = Uuid::new_v4();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.ensure_user(user_id, 40).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), 40);
    }
    let entries = store.ledger_entries(user_id).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (entries[0].kind, entries[0].amount),
        (LedgerEntryKind::InitialCredit, 40)
    );

    // A zero initial balance is still an entry, so "known to the ledger" is durable.
    let newcomer = Uuid::new_v4();
    assert_eq!(store.ensure_user(newcomer, 0).await.unwrap(), 0);
    assert_eq!(store.balance(newcomer).await.unwrap(), Some(0));
    assert_eq!(store.ledger_entries(newcomer).await.unwrap().len(), 1);
}

on_every_store!(
    concurrent_first_requests_credit_the_initial_balance_once,
    flavor = "multi_thread",
    worker_threads = 4
);

async fn every_call_is_counted_as_queries(database: TestDatabase) {
    let store = database.connect().await;
    let before = store.query_count();
    let event = open_event(&store, 1).await;
    let after_create = store.query_count();
    assert!(after_create > before);
    store.get_event(event.id).await.unwrap();
    assert_eq!(store.query_count(), after_create + 1);
    assert_eq!(
        store.get_event(event.id).await.unwrap().unwrap().status,
        EventStatus::Open
    );
}

on_every_store!(every_call_is_counted_as_queries);
