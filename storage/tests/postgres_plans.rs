//! The Postgres store reads by index however young the database is and however large its
//! tables have grown: a batch's idempotency-key lookup and a resync's balance read must not
//! scan the whole key table or ledger, and lookups of single users that arrive together share
//! one query. Postgres's own counters (`pg_stat_user_tables`) tell
//! what was read. Skips, saying why, when no Postgres answers.

mod support;

use std::time::{Duration, Instant};

use livevote_storage::Store;
use support::{keyed, open_event, vote, TestDatabase};
use uuid::Uuid;

/// Rows put behind the store's back, more than any index lookup of these tests reads.
const ROWS: i64 = 100_000;

/// `(seq_tup_read, idx_scan)` of a table, once the store's connections have closed (a
/// backend reports its counters when it exits, and the collector takes a moment to show them).
async fn table_reads(
    database: &TestDatabase,
    table: &str,
    index_scans_expected: i64,
) -> (i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counters = database
            .numbers(&format!(
                "SELECT unnest(ARRAY[coalesce(seq_tup_read, 0), coalesce(idx_scan, 0)]) \
                 FROM pg_stat_user_tables WHERE relname = '{table}'"
            ))
            .await;
        let (sequential, indexed) = (counters[0], counters[1]);
        if indexed >= index_scans_expected || sequential >= ROWS || Instant::now() > deadline {
            return (sequential, indexed);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first batches run on an empty key table, as on any new cluster: a plan cached from
/// that moment (sqlx prepares every statement) must not scan the table once it holds rows.
#[tokio::test]
async fn key_lookups_use_the_index_after_the_table_grew() {
    let Some(database) = TestDatabase::postgres().await else {
        return;
    };
    let store = database.connect().await;
    let user_id = Uuid::new_v4();
    store.ensure_user(user_id, 1_000).await.unwrap();
    let event = open_event(&store, 1).await;
    // More runs than Postgres makes custom plans for before it may settle on a generic one.
    for attempt in 0..10 {
        let key = format!("early-{attempt}");
        store
            .cast_vote(keyed(vote(user_id, &event, "a", 1), &key, &key))
            .await
            .unwrap();
    }
    database
        .execute(&format!(
            "INSERT INTO idempotency_keys (scope, key, kind, fingerprint, response, created_at) \
             SELECT gen_random_uuid(), 'grown-' || n, 'vote', sha256(int8send(n)), '{{}}', 0 \
             FROM generate_series(1, {ROWS}) AS n"
        ))
        .await;
    let late_votes = 20;
    for attempt in 0..late_votes {
        let key = format!("late-{attempt}");
        store
            .cast_vote(keyed(vote(user_id, &event, "a", 1), &key, &key))
            .await
            .unwrap();
    }
    store.close().await;

    let (sequential, indexed) = table_reads(&database, "idempotency_keys", late_votes).await;
    assert!(
        sequential < ROWS,
        "the key lookups read {sequential} rows sequentially ({indexed} index scans): \
         at least one batch scanned the whole table"
    );
    assert!(
        indexed >= late_votes,
        "only {indexed} index scans of the key table"
    );
    database.audit().await;
}

/// A resync asks for the balances of every cached user, in chunks that may hold most of the
/// ledger's rows; each balance is still one probe of the user's latest entry.
#[tokio::test]
async fn balances_of_many_users_read_only_their_latest_entries() {
    let Some(database) = TestDatabase::postgres().await else {
        return;
    };
    let store = database.connect().await;
    // Users with a long history each, written directly (ids far above the store's own, so
    // its writer, which numbers entries from what it has seen, never collides with them).
    let users = 500;
    let entries_each = ROWS / users;
    database
        .execute(&format!(
            "CREATE TEMPORARY TABLE grown AS SELECT gen_random_uuid() AS user_id, n \
             FROM generate_series(1, {users}) AS n; \
             INSERT INTO users (user_id, created_at) SELECT user_id, 0 FROM grown; \
             INSERT INTO ledger (id, user_id, amount, balance, kind, created_at) \
             SELECT 1000000000000 + grown.n * {entries_each} + entry, grown.user_id, 1, entry, \
             'admin_credit', 0 FROM grown, generate_series(1, {entries_each}) AS entry"
        ))
        .await;
    let user_ids: Vec<Uuid> = database
        .texts("SELECT user_id::text FROM users ORDER BY user_id")
        .await
        .iter()
        .map(|text| text.parse().unwrap())
        .collect();
    assert_eq!(user_ids.len(), users as usize);
    for _ in 0..3 {
        let balances = store.balances(&user_ids).await.unwrap();
        assert_eq!(balances.len(), user_ids.len());
        assert!(balances
            .iter()
            .all(|found| found.balance == entries_each && found.version > 1_000_000_000_000));
    }
    store.close().await;

    let (sequential, indexed) = table_reads(&database, "ledger", 3 * users).await;
    assert!(
        sequential < ROWS,
        "reading 3 × {users} balances read {sequential} ledger rows sequentially"
    );
    assert!(
        indexed >= 3 * users,
        "only {indexed} index scans of the ledger"
    );
    database.audit().await;
}

/// Votes of many different users arrive together, so that one batch asks for hundreds of
/// users and keys at once while the tables are still small, as in the first minute of a vote
/// storm on a new cluster. The planner then finds a scan of the whole table cheaper than
/// hundreds of index probes, and every batch (under the cluster's write lock) read every user
/// and every key; the loads must probe the index per user and per key however many are asked.
#[tokio::test]
async fn a_batch_of_many_users_probes_their_rows_instead_of_scanning_the_tables() {
    let Some(database) = TestDatabase::postgres().await else {
        return;
    };
    let store = database.connect().await;
    let event = open_event(&store, 1).await;
    let voters = 2_000;
    let user_ids: Vec<Uuid> = (0..voters).map(|_| Uuid::new_v4()).collect();
    for chunk in user_ids.chunks(500) {
        let calls = chunk
            .iter()
            .map(|user_id| store.ensure_user(*user_id, 1_000));
        for known in futures_util::future::join_all(calls).await {
            known.unwrap();
        }
    }
    store.close().await;
    // Another node: its cache is empty, so its batches load every voter.
    let node = database.connect().await;
    for round in 0..3 {
        let calls = user_ids.iter().map(|user_id| {
            let key = format!("round-{round}");
            node.cast_vote(keyed(vote(*user_id, &event, "a", 1), &key, &key))
        });
        for receipt in futures_util::future::join_all(calls).await {
            receipt.unwrap();
        }
    }
    node.close().await;

    // Once the statistics show every ledger row the two stores wrote, they show all their reads.
    let entries = 4 * voters as i64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while database
        .numbers("SELECT coalesce(n_tup_ins, 0) FROM pg_stat_user_tables WHERE relname = 'ledger'")
        .await[0]
        < entries
    {
        assert!(
            Instant::now() < deadline,
            "the statistics never showed {entries} entries"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One scan of either table would read about as many rows as there are voters.
    let (users_scanned, _) = table_reads(&database, "users", 0).await;
    let (keys_scanned, _) = table_reads(&database, "idempotency_keys", 0).await;
    assert!(
        users_scanned < voters as i64,
        "loading the batches' users read {users_scanned} user rows sequentially"
    );
    assert!(
        keys_scanned < voters as i64,
        "loading the batches' keys read {keys_scanned} key rows sequentially"
    );
    database.audit().await;
}

/// An event opening on a busy stream brings thousands of viewers a node has not seen in the same
/// second, and each one's first request looks up that viewer's balance: read one by one, those
/// lookups queued behind each other on the reader pool. Lookups waiting together share a query.
#[tokio::test]
async fn balance_lookups_that_arrive_together_share_a_query() {
    let Some(database) = TestDatabase::postgres().await else {
        return;
    };
    let store = database.connect().await;
    let user_ids: Vec<Uuid> = (0..400).map(|_| Uuid::new_v4()).collect();
    for (index, user_id) in user_ids.iter().enumerate() {
        store
            .ensure_user(*user_id, 1_000 + index as i64)
            .await
            .unwrap();
    }
    store.close().await;
    let node = database.connect().await;
    let stranger = Uuid::new_v4();
    let queries_before = node.query_count();
    let lookups = user_ids
        .iter()
        .chain(std::iter::once(&stranger))
        .map(|user_id| node.balance(*user_id));
    let balances = futures_util::future::join_all(lookups).await;
    let queries = node.query_count() - queries_before;
    for (index, balance) in balances[..user_ids.len()].iter().enumerate() {
        assert_eq!(balance.as_ref().unwrap(), &Some(1_000 + index as i64));
    }
    assert_eq!(
        balances[user_ids.len()].as_ref().unwrap(),
        &None,
        "an unknown user"
    );
    assert!(
        queries <= 10,
        "{} lookups made at once took {queries} queries",
        user_ids.len() + 1
    );
    node.close().await;
    database.audit().await;
}
