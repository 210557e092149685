//! Idempotency keys: a repeat replays the first answer and changes nothing (even when both
//! copies arrive at once), a reused key with another body is refused, a failed request is not
//! remembered, and keys are scoped per user (per admin for credits).

#[macro_use]
mod support;

use std::sync::Arc;

use livevote_storage::{IdempotencyKey, Store, StoreError};
use support::{
    assert_ledger_sums, credit, keyed, memory_store, open_event, vote, AnyStore, TestDatabase,
};
use uuid::Uuid;

async fn a_repeat_replays_the_first_answer_and_debits_once(database: TestDatabase) {
    let store = database.connect().await;
    let user_id = Uuid::new_v4();
    store.ensure_user(user_id, 100).await.unwrap();
    let event = open_event(&store, 10).await;

    let first = store
        .cast_vote(keyed(
            vote(user_id, &event, "a", 2),
            "key-1",
            "POST /votes a×2",
        ))
        .await
        .unwrap();
    assert!(!first.replayed);
    assert_eq!(first.balance, 80);

    // Another vote in between must not change what the repeat answers.
    store
        .cast_vote(vote(user_id, &event, "b", 1))
        .await
        .unwrap();

    let repeat = store
        .cast_vote(keyed(
            vote(user_id, &event, "a", 2),
            "key-1",
            "POST /votes a×2",
        ))
        .await
        .unwrap();
    assert!(repeat.replayed);
    assert_eq!(
        (repeat.balance, &repeat.totals, repeat.seq),
        (first.balance, &first.totals, first.seq)
    );

    assert_eq!(store.balance(user_id).await.unwrap(), Some(70));
    let record = store.get_event(event.id).await.unwrap().unwrap();
    assert_eq!(
        (record.totals["a"], record.totals["b"], record.seq),
        (2, 1, 2)
    );
    assert_ledger_sums(&store, user_id).await;
}

on_every_store!(a_repeat_replays_the_first_answer_and_debits_once);

async fn identical_requests_at_once_apply_once(store: Arc<AnyStore>) {
    let user_id = Uuid::new_v4();
    store.ensure_user(user_id, 100).await.unwrap();
    let event = open_event(&*store, 1).await;

    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            let command = keyed(vote(user_id, &event, "a", 5), "same-key", "POST /votes a×5");
            tokio::spawn(async move { store.cast_vote(command).await })
        })
        .collect();
    let mut receipts = Vec::new();
    for task in tasks {
        receipts.push(task.await.unwrap().unwrap());
    }
    assert_eq!(
        receipts.iter().filter(|receipt| !receipt.replayed).count(),
        1
    );
    for receipt in &receipts {
        assert_eq!(
            (receipt.balance, receipt.totals["a"], receipt.seq),
            (95, 5, 1)
        );
    }
    assert_eq!(store.balance(user_id).await.unwrap(), Some(95));
    assert_eq!(
        store.get_event(event.id).await.unwrap().unwrap().totals["a"],
        5
    );
    assert_ledger_sums(&*store, user_id).await;
}

async fn identical_requests_at_once_apply_once_in_a_database(database: TestDatabase) {
    identical_requests_at_once_apply_once(Arc::new(database.connect().await)).await;
    database.audit().await;
}

on_every_store!(
    identical_requests_at_once_apply_once_in_a_database,
    flavor = "multi_thread",
    worker_threads = 4
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identical_requests_at_once_apply_once_in_memory() {
    identical_requests_at_once_apply_once(Arc::new(AnyStore::Sqlite(memory_store().await))).await;
}

async fn a_key_reused_with_another_body_is_refused(database: TestDatabase) {
    let store = database.connect().await;
    let user_id = Uuid::new_v4();
    store.ensure_user(user_id, 100).await.unwrap();
    let event = open_event(&store, 1).await;

    store
        .cast_vote(keyed(vote(user_id, &event, "a", 1), "key", "body a"))
        .await
        .unwrap();
    let reused = store
        .cast_vote(keyed(vote(user_id, &event, "b", 1), "key", "body b"))
        .await;
    assert!(
        matches!(reused, Err(StoreError::IdempotencyKeyReused)),
        "{reused:?}"
    );
    assert_eq!(store.balance(user_id).await.unwrap(), Some(99));

    // A credit under the same scope and key is another request too, whatever its fingerprint.
    let mut same_key_credit = credit(user_id, user_id, 5);
    same_key_credit.idempotency = Some(IdempotencyKey {
        key: "key".to_owned(),
        fingerprint: "body a".to_owned(),
    });
    assert!(matches!(
        store.credit(same_key_credit).await,
        Err(StoreError::IdempotencyKeyReused)
    ));
}

on_every_store!(a_key_reused_with_another_body_is_refused);

async fn keys_are_scoped_per_user(database: TestDatabase) {
    let store = database.connect().await;
    let event = open_event(&store, 1).await;
    for _ in 0..2 {
        let user_id = Uuid::new_v4();
        store.ensure_user(user_id, 10).await.unwrap();
        let receipt = store
            .cast_vote(keyed(vote(user_id, &event, "a", 1), "shared", "body"))
            .await
            .unwrap();
        assert!(!receipt.replayed);
        assert_eq!(receipt.balance, 9);
    }
    assert_eq!(
        store.get_event(event.id).await.unwrap().unwrap().totals["a"],
        2
    );
}

on_every_store!(keys_are_scoped_per_user);

async fn a_failed_request_is_not_remembered(database: TestDatabase) {
    let store = database.connect().await;
    let admin_id = Uuid::new_v4();
    let user_id = Uuid::new_v4();
    store.ensure_user(user_id, 5).await.unwrap();
    let event = open_event(&store, 10).await;

    let attempt = || keyed(vote(user_id, &event, "a", 1), "retry-me", "POST /votes a×1");
    assert!(matches!(
        store.cast_vote(attempt()).await,
        Err(StoreError::InsufficientBalance {
            balance: 5,
            needed: 10
        })
    ));
    store.credit(credit(admin_id, user_id, 20)).await.unwrap();
    let receipt = store.cast_vote(attempt()).await.unwrap();
    assert!(!receipt.replayed);
    assert_eq!(receipt.balance, 15);
    let repeat = store.cast_vote(attempt()).await.unwrap();
    assert!(repeat.replayed);
    assert_eq!(store.balance(user_id).await.unwrap(), Some(15));
    assert_ledger_sums(&store, user_id).await;
}

on_every_store!(a_failed_request_is_not_remembered);

async fn credit_keys_are_scoped_per_admin(database: TestDatabase) {
    let store = database.connect().await;
    let user_id = Uuid::new_v4();
    let first_admin = Uuid::new_v4();
    let second_admin = Uuid::new_v4();
    let with_key = |admin_id| {
        let mut command = credit(admin_id, user_id, 10);
        command.idempotency = Some(IdempotencyKey {
            key: "top-up".to_owned(),
            fingerprint: "POST /api/ledger/credit 10".to_owned(),
        });
        command
    };

    let first = store.credit(with_key(first_admin)).await.unwrap();
    let repeat = store.credit(with_key(first_admin)).await.unwrap();
    assert_eq!((first.balance, first.replayed), (10, false));
    assert_eq!((repeat.balance, repeat.replayed), (10, true));
    let other = store.credit(with_key(second_admin)).await.unwrap();
    assert_eq!((other.balance, other.replayed), (20, false));
    assert_ledger_sums(&store, user_id).await;
}

on_every_store!(credit_keys_are_scoped_per_admin);
