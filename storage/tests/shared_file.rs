//! Two stores on one database (one SQLite file, or one Postgres database), as two server processes
//! would be: closing stays exactly once and balances still never overdraw, because each writer
//! notices the other's commits.

#[macro_use]
mod support;

use std::sync::Arc;

use livevote_storage::{Store, StoreError};
use support::{assert_ledger_sums, now, open_event, vote, TestDatabase};
use uuid::Uuid;

async fn two_stores_on_one_database_close_once_and_never_overdraw(database: TestDatabase) {
    let first = Arc::new(database.connect().await);
    let second = Arc::new(database.connect().await);
    let stores = [first.clone(), second.clone()];

    let user_id = Uuid::new_v4();
    first.ensure_user(user_id, 60).await.unwrap();
    let event = open_event(&*first, 1).await;
    // Both writers cache the user and the event before the race starts.
    first
        .cast_vote(vote(user_id, &event, "a", 1))
        .await
        .unwrap();
    second
        .cast_vote(vote(user_id, &event, "b", 1))
        .await
        .unwrap();

    let mut tasks = Vec::new();
    for attempt in 0..120 {
        let store = stores[attempt % 2].clone();
        let command = vote(user_id, &event, "a", 1);
        tasks.push(tokio::spawn(async move { store.cast_vote(command).await }));
    }
    let mut accepted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => accepted += 1,
            Err(StoreError::InsufficientBalance { .. }) => {}
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(accepted, 58);
    assert_eq!(first.balance(user_id).await.unwrap(), Some(0));
    assert_ledger_sums(&*first, user_id).await;
    let record = second.get_event(event.id).await.unwrap().unwrap();
    assert_eq!(record.totals["a"] + record.totals["b"], 60);
    assert_eq!(record.seq, 60);

    let closing_time = now();
    let closes: Vec<_> = (0..20)
        .map(|attempt| {
            let store = stores[attempt % 2].clone();
            tokio::spawn(async move { store.close_event(event.id, None, closing_time).await })
        })
        .collect();
    let mut newly_closed = 0;
    for task in closes {
        let outcome = task.await.unwrap().unwrap();
        newly_closed += usize::from(outcome.newly_closed);
        assert_eq!(
            outcome.record.result.as_ref().unwrap().totals,
            record.totals
        );
        assert_eq!(outcome.record.seq, 61);
    }
    assert_eq!(newly_closed, 1);
    for store in &stores {
        assert!(matches!(
            store.cast_vote(vote(user_id, &event, "a", 1)).await,
            Err(StoreError::EventClosed)
        ));
    }
}

on_every_store!(
    two_stores_on_one_database_close_once_and_never_overdraw,
    flavor = "multi_thread",
    worker_threads = 4
);
