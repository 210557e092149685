//! Several nodes on one Postgres database: two `PostgresStore`s (each its own writer, cache and
//! connections, as two server processes have) share one database. Concurrent votes of one user
//! from both never overdraw, totals equal the votes in the ledger, one Idempotency-Key sent to
//! both at once debits once and both get the first answer, and concurrent closes on both close
//! once. Skips, saying why, when no Postgres answers.

#[macro_use]
mod support;

use std::sync::Arc;

use livevote_storage::{Store, StoreError};
use support::{keyed, open_event, vote, AnyStore, TestDatabase};
use uuid::Uuid;

async fn two_nodes() -> Option<(TestDatabase, Arc<AnyStore>, Arc<AnyStore>)> {
    let database = TestDatabase::postgres().await?;
    let first = Arc::new(database.connect().await);
    let second = Arc::new(database.connect().await);
    Some((database, first, second))
}

/// Each node's writer caches balances; a vote on the other node must be seen by the next batch
/// here, or these alternating votes would spend the same point twice.
#[tokio::test]
async fn alternating_nodes_see_each_others_writes() {
    let Some((database, first, second)) = two_nodes().await else {
        return;
    };
    let user_id = Uuid::new_v4();
    first.ensure_user(user_id, 5).await.unwrap();
    let event = open_event(&*first, 1).await;
    for round in 0..5u64 {
        let node = if round % 2 == 0 { &first } else { &second };
        let receipt = node.cast_vote(vote(user_id, &event, "a", 1)).await.unwrap();
        assert_eq!(receipt.balance, 4 - round as i64);
        assert_eq!((receipt.totals["a"], receipt.seq), (round + 1, round + 1));
    }
    assert!(matches!(
        first.cast_vote(vote(user_id, &event, "a", 1)).await,
        Err(StoreError::InsufficientBalance {
            balance: 0,
            needed: 1
        })
    ));
    assert_eq!(second.balance(user_id).await.unwrap(), Some(0));
    database.audit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_votes_from_two_nodes_never_overdraw() {
    let Some((database, first, second)) = two_nodes().await else {
        return;
    };
    let user_id = Uuid::new_v4();
    first.ensure_user(user_id, 100).await.unwrap();
    let event = open_event(&*second, 1).await;

    let mut tasks = Vec::new();
    for attempt in 0..200 {
        let node = if attempt % 2 == 0 { &first } else { &second }.clone();
        let command = vote(user_id, &event, if attempt % 3 == 0 { "a" } else { "b" }, 1);
        tasks.push(tokio::spawn(async move { node.cast_vote(command).await }));
    }
    let mut accepted = 0u64;
    let mut versions = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(receipt) => {
                assert!(receipt.balance >= 0);
                accepted += 1;
                versions.push((receipt.balance_version, receipt.balance));
            }
            Err(StoreError::InsufficientBalance { balance, needed }) => {
                assert_eq!((balance, needed), (0, 1));
            }
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(accepted, 100);
    // One user's versions order its balances across both nodes: a newer entry, a lower balance.
    versions.sort_unstable();
    assert!(
        versions.windows(2).all(|pair| pair[0].1 > pair[1].1),
        "{versions:?}"
    );
    for node in [&first, &second] {
        assert_eq!(node.balance(user_id).await.unwrap(), Some(0));
        let record = node.get_event(event.id).await.unwrap().unwrap();
        assert_eq!(record.totals.values().sum::<u64>(), 100);
        assert_eq!(record.seq, 100);
    }
    let entries = first.ledger_entries(user_id).await.unwrap();
    assert_eq!(entries.iter().map(|entry| entry.amount).sum::<i64>(), 0);
    let in_ledger = database
        .numbers("SELECT CAST(SUM(votes) AS BIGINT) FROM ledger WHERE kind = 'vote_debit'")
        .await;
    assert_eq!(in_ledger, vec![100]);
    database.audit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_key_sent_to_two_nodes_at_once_debits_once() {
    let Some((database, first, second)) = two_nodes().await else {
        return;
    };
    for round in 0..10 {
        let user_id = Uuid::new_v4();
        first.ensure_user(user_id, 10).await.unwrap();
        let event = open_event(&*first, 2).await;
        let key = format!("key-{round}");
        let mut tasks = Vec::new();
        for attempt in 0..8 {
            let node = if attempt % 2 == 0 { &first } else { &second }.clone();
            let command = keyed(vote(user_id, &event, "a", 3), &key, "a×3");
            tasks.push(tokio::spawn(async move { node.cast_vote(command).await }));
        }
        let mut receipts = Vec::new();
        for task in tasks {
            receipts.push(task.await.unwrap().expect("every copy is answered"));
        }
        assert_eq!(
            receipts.iter().filter(|receipt| !receipt.replayed).count(),
            1,
            "{receipts:?}"
        );
        for receipt in &receipts {
            assert_eq!(
                (receipt.balance, receipt.totals["a"], receipt.seq),
                (4, 3, 1),
                "every copy gets the first answer"
            );
        }
        assert_eq!(second.balance(user_id).await.unwrap(), Some(4));
    }
    database.audit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_closes_on_two_nodes_close_once() {
    let Some((database, first, second)) = two_nodes().await else {
        return;
    };
    let user_id = Uuid::new_v4();
    first.ensure_user(user_id, 1_000).await.unwrap();
    let event = open_event(&*first, 1).await;
    let mut tasks = Vec::new();
    for attempt in 0..40 {
        let node = if attempt % 2 == 0 { &first } else { &second }.clone();
        let event = event.clone();
        tasks.push(tokio::spawn(async move {
            if attempt % 4 < 2 {
                node.cast_vote(vote(user_id, &event, "b", 1))
                    .await
                    .map(|_| false)
            } else {
                node.close_event(event.id, None, support::now())
                    .await
                    .map(|outcome| outcome.newly_closed)
            }
        }));
    }
    let mut closers = 0;
    let mut votes = 0;
    for (attempt, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(true) => closers += 1,
            Ok(false) if attempt % 4 < 2 => votes += 1,
            Ok(false) => {}
            Err(StoreError::EventClosed) => assert!(attempt % 4 < 2),
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(closers, 1);
    let record = second.get_event(event.id).await.unwrap().unwrap();
    let result = record.result.expect("a closed event has a result");
    assert_eq!(
        result.totals["b"], votes,
        "the result counts every accepted vote"
    );
    assert_eq!(record.totals["b"], votes);
    assert_eq!(
        first.balance(user_id).await.unwrap(),
        Some(1_000 - votes as i64)
    );
    database.audit().await;
}

/// The ledger refuses changes in the database itself, whoever asks.
#[tokio::test]
async fn the_ledger_refuses_update_delete_and_truncate() {
    let Some(database) = TestDatabase::postgres().await else {
        return;
    };
    let store = database.connect().await;
    store.ensure_user(Uuid::new_v4(), 10).await.unwrap();
    let url = database.url.clone();
    for statement in [
        "UPDATE ledger SET amount = amount + 1",
        "DELETE FROM ledger",
        "TRUNCATE ledger CASCADE",
        "INSERT INTO ledger (id, user_id, amount, balance, kind, created_at) \
         SELECT id + 1000, user_id, -20, -10, 'admin_credit', 0 FROM ledger",
    ] {
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(&url).await.unwrap();
        let refused = sqlx::raw_sql(statement).execute(&mut connection).await;
        assert!(refused.is_err(), "`{statement}` was allowed");
        connection.close().await.unwrap();
    }
    assert_eq!(
        database.numbers("SELECT count(*) FROM ledger").await,
        vec![1]
    );
    store.close().await;
}

/// Postgres ends the writer's and readers' connections (a restart, a failover, an idle
/// timeout): the calls in flight are answered unavailable or succeed, never half-applied, and
/// the store reconnects by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_connections_are_killed_reconnects() {
    let Some(database) = TestDatabase::postgres().await else {
        return;
    };
    let store = database.connect().await;
    let user_id = Uuid::new_v4();
    store.ensure_user(user_id, 100).await.unwrap();
    let event = open_event(&store, 1).await;
    store
        .cast_vote(vote(user_id, &event, "a", 1))
        .await
        .unwrap();

    let mut accepted = 1;
    for _ in 0..3 {
        let killed = database
            .numbers(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()) AS killed",
            )
            .await;
        assert!(killed[0] >= 1, "the store's connections were found");
        let mut answered = false;
        for _ in 0..50 {
            match store.cast_vote(vote(user_id, &event, "a", 1)).await {
                Ok(_) => {
                    accepted += 1;
                    answered = true;
                    break;
                }
                Err(StoreError::Unavailable(_)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(other) => panic!("a lost connection answered {other:?}"),
            }
        }
        assert!(answered, "the store never reconnected");
    }
    store.ready().await.expect("ready again");
    assert_eq!(store.balance(user_id).await.unwrap(), Some(100 - accepted));
    let record = store.get_event(event.id).await.unwrap().unwrap();
    assert_eq!(record.totals["a"], accepted as u64);
    store.close().await;
    database.audit().await;
}

/// Expired keys are purged by one node at a time: while another holds the purge lock, a
/// starting store leaves them; the next purge without a holder removes them.
#[tokio::test]
async fn one_node_at_a_time_purges_expired_keys() {
    use sqlx::Connection;
    let Some(database) = TestDatabase::postgres().await else {
        return;
    };
    let store = database.connect().await;
    let user_id = Uuid::new_v4();
    store.ensure_user(user_id, 10).await.unwrap();
    store.close().await;
    let two_days_ago = (chrono::Utc::now() - chrono::Duration::days(2))
        .timestamp_nanos_opt()
        .unwrap();
    database
        .execute(&format!(
            "INSERT INTO idempotency_keys (scope, key, kind, fingerprint, response, created_at) \
             VALUES ('{user_id}', 'old', 'vote', decode(repeat('00', 32), 'hex'), \
             '{{\"balance\":1,\"totals\":{{}},\"seq\":1}}', {two_days_ago})"
        ))
        .await;

    // Another node is purging: it holds the lock.
    let mut other = sqlx::PgConnection::connect(&database.url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(livevote_storage::postgres::PURGE_LOCK)
        .execute(&mut other)
        .await
        .unwrap();
    let store = database.connect().await;
    store.ready().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        database
            .numbers("SELECT count(*) FROM idempotency_keys")
            .await,
        vec![1],
        "a purge ran while another node held the lock"
    );
    store.close().await;
    other.close().await.unwrap();

    // Nobody holds it: a starting store purges.
    let store = database.connect().await;
    let mut remaining = vec![1];
    for _ in 0..100 {
        remaining = database
            .numbers("SELECT count(*) FROM idempotency_keys")
            .await;
        if remaining == [0] {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(remaining, vec![0]);
    store.close().await;
}
