//! Casting votes: balances never overdraw under concurrency, totals equal the accepted votes,
//! the ledger sums to every balance, and refused votes change nothing.

#[macro_use]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Duration;
use livevote_storage::{LedgerEntryKind, StoreError};
use support::{
    assert_ledger_sums, credit, event_with, memory_store, now, open_event, vote, AnyStore,
    TestDatabase,
};
use uuid::Uuid;

/// 200 single votes at once against a balance that pays for exactly 100 of them.
async fn one_user_cannot_overdraw(store: Arc<AnyStore>) {
    let user_id = Uuid::new_v4();
    assert_eq!(store.ensure_user(user_id, 100).await.unwrap(), 100);
    let event = open_event(&*store, 1).await;

    let mut tasks = Vec::new();
    for attempt in 0..200 {
        let store = store.clone();
        let command = vote(user_id, &event, if attempt % 2 == 0 { "a" } else { "b" }, 1);
        tasks.push(tokio::spawn(async move { store.cast_vote(command).await }));
    }
    let mut accepted = BTreeMap::<String, u64>::new();
    let mut refused = 0;
    for (attempt, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(receipt) => {
                assert!(receipt.balance >= 0);
                assert!(!receipt.replayed);
                *accepted
                    .entry(if attempt % 2 == 0 { "a" } else { "b" }.to_owned())
                    .or_default() += 1;
            }
            Err(StoreError::InsufficientBalance { balance, needed }) => {
                assert_eq!((balance, needed), (0, 1));
                refused += 1;
            }
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(accepted.values().sum::<u64>(), 100);
    assert_eq!(refused, 100);
    assert_eq!(store.balance(user_id).await.unwrap(), Some(0));
    assert_eq!(assert_ledger_sums(&*store, user_id).await, 0);

    let record = store.get_event(event.id).await.unwrap().unwrap();
    for option in ["a", "b"] {
        assert_eq!(
            record.totals.get(option).copied().unwrap_or(0),
            accepted.get(option).copied().unwrap_or(0)
        );
    }
    assert_eq!(
        record.seq, 100,
        "seq grows by one per accepted vote request"
    );
}

async fn concurrent_votes_never_overdraw(database: TestDatabase) {
    let store = Arc::new(database.connect().await);
    one_user_cannot_overdraw(store.clone()).await;

    // The votes recorded in the ledger add up to the totals, not only the cached counters.
    let per_option = database
        .numbers(
            "SELECT CAST(SUM(votes) AS BIGINT) FROM ledger WHERE kind = 'vote_debit' \
             GROUP BY option_id",
        )
        .await;
    assert_eq!(per_option.iter().sum::<i64>(), 100);
    database.audit().await;
}

on_every_store!(
    concurrent_votes_never_overdraw,
    flavor = "multi_thread",
    worker_threads = 4
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_votes_never_overdraw_in_memory() {
    one_user_cannot_overdraw(Arc::new(AnyStore::Sqlite(memory_store().await))).await;
}

/// Many users, several events, votes of several sizes and credits, all at once: afterwards every
/// balance equals its ledger and every event's totals equal the votes that were accepted.
async fn ledger_sums_to_every_balance_after_a_concurrent_workload(database: TestDatabase) {
    let store = Arc::new(database.connect().await);
    let admin_id = Uuid::new_v4();
    let users: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
    let mut events = Vec::new();
    for cost in [1, 2, 5] {
        events.push(open_event(&*store, cost).await);
    }
    let events = Arc::new(events);

    let mut tasks = Vec::new();
    for worker in 0..64u32 {
        let store = store.clone();
        let users = users.clone();
        let events = events.clone();
        tasks.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            for step in 0..40u32 {
                let user_id = users[((worker * 7 + step * 3) % 20) as usize];
                if step % 13 == 0 {
                    store.credit(credit(admin_id, user_id, 7)).await.unwrap();
                    continue;
                }
                let event = &events[((worker + step) % 3) as usize];
                let option = if (worker + step) % 2 == 0 { "a" } else { "b" };
                let mut command = vote(user_id, event, option, 1 + step % 4);
                command.initial_balance = 50;
                match store.cast_vote(command).await {
                    Ok(_) => accepted.push((event.id, option, u64::from(1 + step % 4))),
                    Err(StoreError::InsufficientBalance { .. }) => {}
                    Err(other) => panic!("unexpected error {other:?}"),
                }
            }
            accepted
        }));
    }
    let mut expected = BTreeMap::<(Uuid, &str), u64>::new();
    for task in tasks {
        for (event_id, option, votes) in task.await.unwrap() {
            *expected.entry((event_id, option)).or_default() += votes;
        }
    }

    for user_id in &users {
        assert_ledger_sums(&*store, *user_id).await;
        let entries = store.ledger_entries(*user_id).await.unwrap();
        let initial = entries
            .iter()
            .filter(|entry| entry.kind == LedgerEntryKind::InitialCredit)
            .count();
        assert_eq!(
            initial, 1,
            "each user is credited its initial balance exactly once"
        );
        assert_eq!(
            entries[0].kind,
            LedgerEntryKind::InitialCredit,
            "entries come oldest first"
        );
    }
    for event in events.iter() {
        let record = store.get_event(event.id).await.unwrap().unwrap();
        for option in ["a", "b"] {
            assert_eq!(
                record.totals[option],
                expected.get(&(event.id, option)).copied().unwrap_or(0)
            );
        }
    }

    // The same invariant checked by the database itself, over every entry of every user: each
    // entry's recorded balance is the running sum of the user's amounts.
    let mismatches = database
        .numbers(
            "SELECT COUNT(*) FROM (SELECT balance, \
             SUM(amount) OVER (PARTITION BY user_id ORDER BY id) AS running FROM ledger) \
             AS running_sums WHERE balance <> running",
        )
        .await;
    assert_eq!(mismatches, vec![0]);
    let entries = database.numbers("SELECT COUNT(*) FROM ledger").await;
    assert!(entries[0] > 20);
    database.audit().await;
}

on_every_store!(
    ledger_sums_to_every_balance_after_a_concurrent_workload,
    flavor = "multi_thread",
    worker_threads = 4
);

async fn a_refused_vote_changes_nothing(database: TestDatabase) {
    let store = database.connect().await;
    let user_id = Uuid::new_v4();
    store.ensure_user(user_id, 10).await.unwrap();
    let event = open_event(&store, 4).await;

    let error = store
        .cast_vote(vote(user_id, &event, "a", 3))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::InsufficientBalance {
                balance: 10,
                needed: 12
            }
        ),
        "{error:?}"
    );
    assert_eq!(store.balance(user_id).await.unwrap(), Some(10));
    assert_eq!(store.ledger_entries(user_id).await.unwrap().len(), 1);
    let record = store.get_event(event.id).await.unwrap().unwrap();
    assert_eq!(record.seq, 0);
    assert_eq!(record.totals.values().sum::<u64>(), 0);

    let receipt = store
        .cast_vote(vote(user_id, &event, "b", 2))
        .await
        .unwrap();
    assert_eq!(receipt.balance, 2);
    assert_eq!(receipt.totals["b"], 2);
    assert_eq!(receipt.seq, 1);
}

on_every_store!(a_refused_vote_changes_nothing);

async fn unknown_events_and_options_are_refused(database: TestDatabase) {
    let store = database.connect().await;
    let user_id = Uuid::new_v4();
    store.ensure_user(user_id, 10).await.unwrap();
    let event = open_event(&store, 1).await;

    let mut missing = vote(user_id, &event, "a", 1);
    missing.event_id = Uuid::new_v4();
    assert!(matches!(
        store.cast_vote(missing).await,
        Err(StoreError::NotFound)
    ));
    match store.cast_vote(vote(user_id, &event, "c", 1)).await {
        Err(StoreError::UnknownOption(option)) => assert_eq!(option, "c"),
        other => panic!("expected UnknownOption, got {other:?}"),
    }
    assert_eq!(store.balance(user_id).await.unwrap(), Some(10));
}

on_every_store!(unknown_events_and_options_are_refused);

async fn votes_at_or_after_closes_at_are_refused(database: TestDatabase) {
    let store = database.connect().await;
    let user_id = Uuid::new_v4();
    store.ensure_user(user_id, 10).await.unwrap();
    let closes_at = now() + Duration::minutes(5);
    let event = event_with(&["a", "b"], 1, closes_at);
    store.create_event(&event, closes_at).await.unwrap();

    let mut before = vote(user_id, &event, "a", 1);
    before.now = closes_at - Duration::milliseconds(1);
    assert!(store.cast_vote(before).await.is_ok());
    for late in [
        closes_at,
        closes_at + Duration::milliseconds(1),
        closes_at + Duration::hours(1),
    ] {
        let mut command = vote(user_id, &event, "a", 1);
        command.now = late;
        assert!(matches!(
            store.cast_vote(command).await,
            Err(StoreError::EventClosed)
        ));
    }
    assert_eq!(store.balance(user_id).await.unwrap(), Some(9));
}

on_every_store!(votes_at_or_after_closes_at_are_refused);

async fn a_first_vote_makes_the_user_known_with_the_initial_balance(database: TestDatabase) {
    let store = database.connect().await;
    let user_id = Uuid::new_v4();
    let event = open_event(&store, 3).await;
    let mut command = vote(user_id, &event, "a", 2);
    command.initial_balance = 10;
    assert_eq!(store.cast_vote(command).await.unwrap().balance, 4);

    let entries = store.ledger_entries(user_id).await.unwrap();
    let summary: Vec<_> = entries
        .iter()
        .map(|entry| (entry.kind, entry.amount, entry.event_id))
        .collect();
    assert_eq!(
        summary,
        vec![
            (LedgerEntryKind::InitialCredit, 10, None),
            (LedgerEntryKind::VoteDebit, -6, Some(event.id))
        ]
    );

    // A refused vote still counts as the user's first authenticated request.
    let newcomer = Uuid::new_v4();
    let mut refused = vote(newcomer, &event, "a", 1);
    refused.initial_balance = 2;
    assert!(matches!(
        store.cast_vote(refused).await,
        Err(StoreError::InsufficientBalance {
            balance: 2,
            needed: 3
        })
    ));
    assert_eq!(store.balance(newcomer).await.unwrap(), Some(2));
}

on_every_store!(a_first_vote_makes_the_user_known_with_the_initial_balance);

async fn credits_make_the_target_known_first(database: TestDatabase) {
    let store = database.connect().await;
    let admin_id = Uuid::new_v4();
    let user_id = Uuid::new_v4();
    let mut command = credit(admin_id, user_id, 25);
    command.initial_balance = 5;
    let receipt = store.credit(command).await.unwrap();
    assert_eq!((receipt.balance, receipt.replayed), (30, false));
    let kinds: Vec<_> = store
        .ledger_entries(user_id)
        .await
        .unwrap()
        .iter()
        .map(|entry| entry.kind)
        .collect();
    assert_eq!(
        kinds,
        vec![LedgerEntryKind::InitialCredit, LedgerEntryKind::AdminCredit]
    );
    assert_eq!(
        store.balance(admin_id).await.unwrap(),
        None,
        "crediting does not make the admin known"
    );
}

on_every_store!(credits_make_the_target_known_first);

/// Each balance change names its ledger entry; one user's versions only grow, across a
/// restart too, so a subscriber can tell a newer balance from a stale one arriving late.
async fn balance_versions_grow_with_every_change(database: TestDatabase) {
    let stored = database.connect().await;
    let user_id = Uuid::new_v4();
    stored.ensure_user(user_id, 100).await.unwrap();
    let event = open_event(&stored, 1).await;
    let mut versions = Vec::new();
    for _ in 0..3 {
        let receipt = stored
            .cast_vote(vote(user_id, &event, "a", 1))
            .await
            .unwrap();
        versions.push(receipt.balance_version);
    }
    let credited = stored
        .credit(credit(Uuid::new_v4(), user_id, 5))
        .await
        .unwrap();
    versions.push(credited.balance_version);
    assert!(
        versions.windows(2).all(|pair| pair[0] < pair[1]),
        "{versions:?}"
    );

    stored.close().await;
    let reopened = database.connect().await;
    let after_restart = reopened
        .cast_vote(vote(user_id, &event, "a", 1))
        .await
        .unwrap();
    assert!(after_restart.balance_version > *versions.last().unwrap());
    reopened.close().await;
    database.audit().await;
}

on_every_store!(balance_versions_grow_with_every_change);

/// What a node reads to bring its balance cache back to the truth: the newest balance of each
/// known user with the version its receipts carried; unknown users are left out.
async fn balances_are_read_with_the_version_of_their_last_change(database: TestDatabase) {
    let store = database.connect().await;
    let event = open_event(&store, 1).await;
    let (voter, credited, stranger) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    store.ensure_user(voter, 100).await.unwrap();
    store.ensure_user(credited, 10).await.unwrap();
    let receipt = store.cast_vote(vote(voter, &event, "a", 3)).await.unwrap();
    let credit_receipt = store
        .credit(credit(Uuid::new_v4(), credited, 5))
        .await
        .unwrap();
    let mut found = store.balances(&[voter, stranger, credited]).await.unwrap();
    found.sort_by_key(|balance| balance.user_id != voter);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(
        (found[0].user_id, found[0].balance, found[0].version),
        (voter, receipt.balance, receipt.balance_version)
    );
    assert_eq!(
        (found[1].user_id, found[1].balance, found[1].version),
        (
            credited,
            credit_receipt.balance,
            credit_receipt.balance_version
        )
    );
    // More users than one statement takes are read in chunks.
    let many: Vec<Uuid> = std::iter::once(voter)
        .chain((0..livevote_storage::BALANCES_PER_QUERY + 5).map(|_| Uuid::new_v4()))
        .collect();
    assert_eq!(store.balances(&many).await.unwrap().len(), 1);
    assert!(store.balances(&[]).await.unwrap().is_empty());
    store.close().await;
    database.audit().await;
}

on_every_store!(balances_are_read_with_the_version_of_their_last_change);
