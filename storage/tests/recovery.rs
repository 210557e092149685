//! Failures and housekeeping: a write that fails leaves no trace in the database or in the
//! writer's memory, and expired idempotency keys are purged while young ones stay.

mod support;

use std::time::Duration;

use chrono::Utc;
use livevote_storage::sqlite::SqliteStore;
use livevote_storage::{Store, StoreError};
use support::{assert_ledger_sums, file_store, keyed, open_event, vote};
use uuid::Uuid;

#[tokio::test]
async fn a_failed_write_is_rolled_back_and_forgotten() {
    let file = file_store().await;
    let store = &file.store;
    let user_id = Uuid::new_v4();
    store.ensure_user(user_id, 100).await.unwrap();
    let event = open_event(store, 1).await;

    // Another connection makes every ledger insert of exactly seven votes fail, standing in for
    // a disk error in the middle of a batch.
    let pool = sqlx::SqlitePool::connect(&file.url).await.unwrap();
    sqlx::query(
        "CREATE TRIGGER injected_failure BEFORE INSERT ON ledger WHEN NEW.votes = 7 \
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
    )
    .execute(&pool)
    .await
    .unwrap();

    let failed = store
        .cast_vote(keyed(vote(user_id, &event, "a", 7), "seven", "a×7"))
        .await;
    assert!(matches!(failed, Err(StoreError::Database(_))), "{failed:?}");
    assert_eq!(store.balance(user_id).await.unwrap(), Some(100));
    let record = store.get_event(event.id).await.unwrap().unwrap();
    assert_eq!((record.totals["a"], record.seq), (0, 0));

    // Had the writer kept its own view of the failed batch, this would answer 92 and seq 2.
    let receipt = store
        .cast_vote(vote(user_id, &event, "a", 1))
        .await
        .unwrap();
    assert_eq!(
        (receipt.balance, receipt.totals["a"], receipt.seq),
        (99, 1, 1)
    );

    // The failed request's key was not remembered: once the fault is gone, it applies.
    sqlx::query("DROP TRIGGER injected_failure")
        .execute(&pool)
        .await
        .unwrap();
    let retried = store
        .cast_vote(keyed(vote(user_id, &event, "a", 7), "seven", "a×7"))
        .await
        .unwrap();
    assert!(!retried.replayed);
    assert_eq!(retried.balance, 92);
    assert_ledger_sums(store, user_id).await;
    pool.close().await;
}

#[tokio::test]
async fn expired_idempotency_keys_are_purged_and_young_ones_kept() {
    let file = file_store().await;
    let user_id = Uuid::new_v4();
    file.store.ensure_user(user_id, 10).await.unwrap();
    let event = open_event(&file.store, 1).await;
    let url = file.url.clone();
    file.store.close().await;

    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let two_days_ago = (Utc::now() - chrono::Duration::days(2))
        .timestamp_nanos_opt()
        .unwrap();
    let an_hour_ago = (Utc::now() - chrono::Duration::hours(1))
        .timestamp_nanos_opt()
        .unwrap();
    for (key, created_at) in [
        ("old-1", two_days_ago),
        ("old-2", two_days_ago),
        ("young", an_hour_ago),
    ] {
        sqlx::query(
            "INSERT INTO idempotency_keys (scope, key, kind, fingerprint, response, created_at) \
             VALUES (?, ?, 'vote', zeroblob(32), '{\"balance\":1,\"totals\":{},\"seq\":1}', ?)",
        )
        .bind(user_id)
        .bind(key)
        .bind(created_at)
        .execute(&pool)
        .await
        .unwrap();
    }

    // The writer purges when it starts and then every minute.
    let store = SqliteStore::connect(&url).await.unwrap();
    let mut remaining = Vec::new();
    for _ in 0..100 {
        remaining = sqlx::query_scalar::<_, String>("SELECT key FROM idempotency_keys ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
        if remaining.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(remaining, vec!["young".to_owned()]);

    // An expired key is a fresh key again.
    let receipt = store
        .cast_vote(keyed(vote(user_id, &event, "a", 1), "old-1", "a×1"))
        .await
        .unwrap();
    assert!(!receipt.replayed);
    assert_eq!(receipt.balance, 9);
    store.close().await;
    pool.close().await;
}
