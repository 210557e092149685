//! Failures and housekeeping: a write that fails leaves no trace in the database or in the
//! writer's memory, and expired idempotency keys are purged while young ones stay.

#[macro_use]
mod support;

use std::time::Duration;

use chrono::Utc;
use livevote_storage::{Store, StoreError};
use support::{assert_ledger_sums, keyed, open_event, vote, TestDatabase};
use uuid::Uuid;

async fn a_failed_write_is_rolled_back_and_forgotten(database: TestDatabase) {
    let stored = database.connect().await;
    let store = &stored;
    let user_id = Uuid::new_v4();
    store.ensure_user(user_id, 100).await.unwrap();
    let event = open_event(store, 1).await;

    // Another connection makes every ledger insert of exactly seven votes fail, standing in for
    // a disk error in the middle of a batch.
    if database.is_postgres() {
        database
            .execute(
                "CREATE FUNCTION injected_failure() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN IF NEW.votes = 7 THEN RAISE EXCEPTION 'injected failure'; END IF; \
                 RETURN NEW; END $$; \
                 CREATE TRIGGER injected_failure BEFORE INSERT ON ledger FOR EACH ROW \
                 EXECUTE FUNCTION injected_failure()",
            )
            .await;
    } else {
        database
            .execute(
                "CREATE TRIGGER injected_failure BEFORE INSERT ON ledger WHEN NEW.votes = 7 \
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
            )
            .await;
    }

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
    database
        .execute(if database.is_postgres() {
            "DROP TRIGGER injected_failure ON ledger"
        } else {
            "DROP TRIGGER injected_failure"
        })
        .await;
    let retried = store
        .cast_vote(keyed(vote(user_id, &event, "a", 7), "seven", "a×7"))
        .await
        .unwrap();
    assert!(!retried.replayed);
    assert_eq!(retried.balance, 92);
    assert_ledger_sums(store, user_id).await;
    stored.close().await;
    database.audit().await;
}

on_every_store!(a_failed_write_is_rolled_back_and_forgotten);

async fn expired_idempotency_keys_are_purged_and_young_ones_kept(database: TestDatabase) {
    let store = database.connect().await;
    let user_id = Uuid::new_v4();
    store.ensure_user(user_id, 10).await.unwrap();
    let event = open_event(&store, 1).await;
    store.close().await;

    let two_days_ago = (Utc::now() - chrono::Duration::days(2))
        .timestamp_nanos_opt()
        .unwrap();
    let an_hour_ago = (Utc::now() - chrono::Duration::hours(1))
        .timestamp_nanos_opt()
        .unwrap();
    let (scope, fingerprint) = if database.is_postgres() {
        (
            format!("'{user_id}'"),
            "decode(repeat('00', 32), 'hex')".to_owned(),
        )
    } else {
        (
            format!("X'{}'", user_id.simple()),
            "zeroblob(32)".to_owned(),
        )
    };
    for (key, created_at) in [
        ("old-1", two_days_ago),
        ("old-2", two_days_ago),
        ("young", an_hour_ago),
    ] {
        database
            .execute(&format!(
                "INSERT INTO idempotency_keys (scope, key, kind, fingerprint, response, created_at) \
                 VALUES ({scope}, '{key}', 'vote', {fingerprint}, \
                 '{{\"balance\":1,\"totals\":{{}},\"seq\":1}}', {created_at})"
            ))
            .await;
    }
    assert_eq!(
        database
            .numbers("SELECT count(*) FROM idempotency_keys")
            .await,
        vec![3]
    );

    // The writer purges when it starts and then every minute.
    let store = database.connect().await;
    let mut remaining = Vec::new();
    for _ in 0..100 {
        remaining = database
            .numbers(
                "SELECT count(*) FROM idempotency_keys \
                 UNION ALL SELECT count(*) FROM idempotency_keys WHERE key = 'young'",
            )
            .await;
        if remaining[0] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(remaining, vec![1, 1], "only the young key is left");

    // An expired key is a fresh key again.
    let receipt = store
        .cast_vote(keyed(vote(user_id, &event, "a", 1), "old-1", "a×1"))
        .await
        .unwrap();
    assert!(!receipt.replayed);
    assert_eq!(receipt.balance, 9);
    store.close().await;
}

on_every_store!(expired_idempotency_keys_are_purged_and_young_ones_kept);
