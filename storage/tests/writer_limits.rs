//! A stalled, full or dead writer is seen and answered at once: readiness fails within its
//! deadline, writes get `Unavailable` instead of hanging, a full queue sheds, and what timed
//! out while queued is never written later.

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use livevote_storage::sqlite::WriterOptions;
use livevote_storage::{Store, StoreError, Unavailable};
use sqlx::{Connection, PgConnection, SqliteConnection};
use support::{open_event, vote, AnyStore, TestDatabase};
use uuid::Uuid;

const CALL_DEADLINE: Duration = Duration::from_millis(600);
const READY_DEADLINE: Duration = Duration::from_millis(300);

async fn store_on(database: &TestDatabase, queue_capacity: usize) -> AnyStore {
    let options = WriterOptions {
        call_deadline: CALL_DEADLINE,
        ready_deadline: READY_DEADLINE,
        queue_capacity,
    };
    database.connect_with(options).await
}

/// Another process's transaction holding the database's write lock until rolled back.
enum WriteLock {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

async fn hold_write_lock(database: &TestDatabase) -> WriteLock {
    if database.is_postgres() {
        let mut other = PgConnection::connect(&database.url)
            .await
            .expect("a second connection");
        sqlx::raw_sql("BEGIN; SELECT * FROM writer_lock FOR UPDATE")
            .execute(&mut other)
            .await
            .expect("take the write lock");
        WriteLock::Postgres(other)
    } else {
        let mut other = SqliteConnection::connect(&database.url)
            .await
            .expect("a second connection");
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .expect("take the write lock");
        WriteLock::Sqlite(other)
    }
}

async fn release(lock: WriteLock) {
    match lock {
        WriteLock::Sqlite(mut other) => {
            sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
            other.close().await.unwrap();
        }
        WriteLock::Postgres(mut other) => {
            sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
            other.close().await.unwrap();
        }
    }
}

/// Waits (bounded) until the store is ready again.
async fn until_ready(store: &AnyStore) {
    let started = Instant::now();
    while let Err(error) = store.ready().await {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "never ready again: {error}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_writer_kept_from_the_write_lock_is_not_ready_and_writes_time_out(
    database: TestDatabase,
) {
    let store = store_on(&database, 64).await;
    let user_id = Uuid::new_v4();
    store.ensure_user(user_id, 10).await.unwrap();
    let event = open_event(&store, 1).await;
    store
        .ready()
        .await
        .expect("ready while nobody holds the lock");

    let other = hold_write_lock(&database).await;
    let started = Instant::now();
    let ready = store.ready().await;
    let waited = started.elapsed();
    assert!(
        matches!(
            ready,
            Err(StoreError::Unavailable(Unavailable::DeadlineExceeded))
        ),
        "{ready:?}"
    );
    assert!(
        waited >= READY_DEADLINE && waited < READY_DEADLINE + Duration::from_millis(500),
        "readiness answered after {waited:?}"
    );

    let started = Instant::now();
    let voted = store.cast_vote(vote(user_id, &event, "a", 1)).await;
    let waited = started.elapsed();
    assert!(
        matches!(voted, Err(StoreError::Unavailable(_))),
        "{voted:?}"
    );
    assert!(
        waited < CALL_DEADLINE + Duration::from_millis(500),
        "the vote answered after {waited:?}"
    );

    release(other).await;
    until_ready(&store).await;
    // The vote timed out while queued: once the writer got the lock it refused it unwritten.
    assert_eq!(store.balance(user_id).await.unwrap(), Some(10));
    let record = store.get_event(event.id).await.unwrap().unwrap();
    assert_eq!((record.totals["a"], record.seq), (0, 0));
    store
        .cast_vote(vote(user_id, &event, "a", 1))
        .await
        .unwrap();
    store.close().await;
}

on_every_store!(
    a_writer_kept_from_the_write_lock_is_not_ready_and_writes_time_out,
    flavor = "multi_thread",
    worker_threads = 2
);

async fn a_full_queue_refuses_writes_at_once(database: TestDatabase) {
    const CAPACITY: usize = 4;
    let store = store_on(&database, CAPACITY).await;
    let user_id = Uuid::new_v4();
    store.ensure_user(user_id, 100).await.unwrap();
    let event = open_event(&store, 1).await;

    let other = hold_write_lock(&database).await;
    let stuck = {
        let command = vote(user_id, &event, "a", 1);
        let store = &store;
        async move { store.cast_vote(command).await }
    };
    let flood = async {
        // Let the writer take the first vote into a batch and block on the lock.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let started = Instant::now();
        let answers = join_all((0..CAPACITY + 6).map(|_| {
            let command = vote(user_id, &event, "b", 1);
            let store = &store;
            async move {
                let answer = store.cast_vote(command).await;
                (answer, started.elapsed())
            }
        }))
        .await;
        answers
    };
    let (stuck, flood) = tokio::join!(stuck, flood);
    assert!(
        matches!(stuck, Err(StoreError::Unavailable(_))),
        "{stuck:?}"
    );
    let shed: Vec<_> = flood
        .iter()
        .filter(|(answer, _)| {
            matches!(answer, Err(StoreError::Unavailable(Unavailable::QueueFull)))
        })
        .collect();
    assert_eq!(shed.len(), 6, "{flood:?}");
    assert!(
        shed.iter()
            .all(|(_, waited)| *waited < Duration::from_millis(100)),
        "shedding waited: {shed:?}"
    );
    assert!(flood.iter().all(|(answer, _)| answer.is_err()));

    release(other).await;
    until_ready(&store).await;
    assert_eq!(store.balance(user_id).await.unwrap(), Some(100));
    store.close().await;
}

on_every_store!(
    a_full_queue_refuses_writes_at_once,
    flavor = "multi_thread",
    worker_threads = 2
);

fn a_dead_writer_is_not_ready_and_refuses_writes(postgres: bool) {
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let Some((store, event, database)) = first.block_on(async {
        let database = if postgres {
            TestDatabase::postgres().await?
        } else {
            TestDatabase::sqlite().await
        };
        let store = store_on(&database, 64).await;
        let event = open_event(&store, 1).await;
        store.ready().await.unwrap();
        Some((store, event, database))
    }) else {
        return;
    };
    // Shutting the runtime down ends the writer task, as a panic in it would.
    drop(first);

    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async {
        assert!(matches!(
            store.ready().await,
            Err(StoreError::Unavailable(Unavailable::WriterStopped))
        ));
        let started = Instant::now();
        assert!(matches!(
            store.cast_vote(vote(Uuid::new_v4(), &event, "a", 1)).await,
            Err(StoreError::Unavailable(Unavailable::WriterStopped))
        ));
        assert!(started.elapsed() < Duration::from_millis(100));
        drop(store);
    });
    drop(database);
}

mod a_dead_writer_is_not_ready_and_refuses_writes {
    #[test]
    fn sqlite() {
        super::a_dead_writer_is_not_ready_and_refuses_writes(false);
    }

    #[test]
    fn postgres() {
        super::a_dead_writer_is_not_ready_and_refuses_writes(true);
    }
}

async fn concurrent_readiness_probes_share_one_place_in_the_queue(database: TestDatabase) {
    const CAPACITY: usize = 4;
    let store = store_on(&database, CAPACITY).await;
    let other = hold_write_lock(&database).await;
    // Five times the queue: probes that each took a place would be refused QueueFull.
    let probes = join_all((0..CAPACITY * 5).map(|_| store.ready())).await;
    assert!(
        probes.iter().all(|probe| matches!(
            probe,
            Err(StoreError::Unavailable(Unavailable::DeadlineExceeded))
        )),
        "{probes:?}"
    );
    release(other).await;
    until_ready(&store).await;
    let probes = join_all((0..CAPACITY * 5).map(|_| store.ready())).await;
    assert!(probes.iter().all(Result::is_ok), "{probes:?}");
    store.close().await;
}

/// Probes that time out one after another while the writer is blocked: each caller gives up
/// with its probe still queued, and the next one must wait for that probe rather than queue
/// another, or a long stall fills the queue with probes and refuses votes QueueFull. Seen under
/// load as one `QueueFull` among the concurrent probes above.
async fn probes_that_time_out_one_after_another_never_fill_the_queue(database: TestDatabase) {
    const CAPACITY: usize = 2;
    let store = store_on(&database, CAPACITY).await;
    let other = hold_write_lock(&database).await;
    for round in 0..CAPACITY + 2 {
        let probe = store.ready().await;
        assert!(
            matches!(
                probe,
                Err(StoreError::Unavailable(Unavailable::DeadlineExceeded))
            ),
            "probe {round}: {probe:?}"
        );
    }
    release(other).await;
    until_ready(&store).await;
    store.close().await;
}

on_every_store!(
    probes_that_time_out_one_after_another_never_fill_the_queue,
    flavor = "multi_thread",
    worker_threads = 2
);

on_every_store!(
    concurrent_readiness_probes_share_one_place_in_the_queue,
    flavor = "multi_thread",
    worker_threads = 2
);
