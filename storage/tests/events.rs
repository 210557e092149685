//! Events: creation is idempotent on identical bodies and conflicts otherwise, closing happens
//! exactly once with the right winner, and the listing calls return the right window and order.

#[macro_use]
mod support;

use std::sync::Arc;

use chrono::Duration;
use livevote_protocol::EventStatus;
use livevote_storage::{CreateOutcome, EventFilter, Store, StoreError};
use support::{event_with, now, open_event, vote, TestDatabase};
use uuid::Uuid;

async fn creating_the_same_event_twice_is_harmless_and_a_different_body_conflicts(
    database: TestDatabase,
) {
    let store = database.connect().await;
    let closes_at = now() + Duration::minutes(10);
    let event = event_with(&["red", "blue", "green"], 5, closes_at);

    let created = match store.create_event(&event, closes_at).await.unwrap() {
        CreateOutcome::Created(record) => record,
        other => panic!("expected Created, got {other:?}"),
    };
    assert_eq!(
        created.event, event,
        "the event is echoed exactly, promptVersions included"
    );
    assert_eq!(created.status, EventStatus::Open);
    assert_eq!(created.seq, 0);
    assert_eq!(created.result, None);
    assert_eq!(
        created
            .totals
            .iter()
            .map(|(option, votes)| (option.as_str(), *votes))
            .collect::<Vec<_>>(),
        vec![("blue", 0), ("green", 0), ("red", 0)]
    );
    assert_eq!(
        store.get_event(event.id).await.unwrap(),
        Some(created.clone())
    );

    match store.create_event(&event, closes_at).await.unwrap() {
        CreateOutcome::AlreadyExists(record) => assert_eq!(record, created),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    let mut different = event.clone();
    different.title = "Another question".to_owned();
    assert!(matches!(
        store.create_event(&different, closes_at).await,
        Err(StoreError::Conflict)
    ));
    assert!(matches!(
        store
            .create_event(&event, closes_at + Duration::seconds(1))
            .await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(store.get_event(Uuid::new_v4()).await.unwrap(), None);
}

on_every_store!(creating_the_same_event_twice_is_harmless_and_a_different_body_conflicts);

async fn fifty_concurrent_closes_close_exactly_once(database: TestDatabase) {
    let store = Arc::new(database.connect().await);
    let user_id = Uuid::new_v4();
    store.ensure_user(user_id, 100).await.unwrap();
    let event = open_event(&*store, 1).await;
    store
        .cast_vote(vote(user_id, &event, "b", 3))
        .await
        .unwrap();

    let closing_time = now();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.close_event(event.id, None, closing_time).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap().unwrap());
    }
    assert_eq!(
        outcomes
            .iter()
            .filter(|outcome| outcome.newly_closed)
            .count(),
        1
    );
    let record = &outcomes[0].record;
    assert!(outcomes.iter().all(|outcome| outcome.record == *record));
    assert_eq!(record.status, EventStatus::Closed);
    assert_eq!(record.closed_at, Some(closing_time));
    assert_eq!(record.seq, 2, "one vote, then one more at close");
    let result = record.result.as_ref().unwrap();
    assert_eq!(result.option_id, "b");
    assert_eq!(result.totals, record.totals);
    assert_eq!(
        store.get_event(event.id).await.unwrap().as_ref(),
        Some(record)
    );

    assert!(matches!(
        store.cast_vote(vote(user_id, &event, "a", 1)).await,
        Err(StoreError::EventClosed)
    ));
    assert_eq!(store.balance(user_id).await.unwrap(), Some(97));
}

on_every_store!(
    fifty_concurrent_closes_close_exactly_once,
    flavor = "multi_thread",
    worker_threads = 4
);

async fn the_winner_is_the_most_voted_option_and_ties_go_to_the_first_listed(
    database: TestDatabase,
) {
    let store = database.connect().await;
    let user_id = Uuid::new_v4();
    store.ensure_user(user_id, 100).await.unwrap();
    let closes_at = now() + Duration::hours(1);

    let untouched = event_with(&["x", "y", "z"], 1, closes_at);
    store.create_event(&untouched, closes_at).await.unwrap();
    let outcome = store.close_event(untouched.id, None, now()).await.unwrap();
    assert_eq!(
        outcome.record.result.unwrap().option_id,
        "x",
        "no votes: the first option wins"
    );

    let tied = event_with(&["x", "y", "z"], 1, closes_at);
    store.create_event(&tied, closes_at).await.unwrap();
    store.cast_vote(vote(user_id, &tied, "z", 2)).await.unwrap();
    store.cast_vote(vote(user_id, &tied, "y", 2)).await.unwrap();
    let outcome = store.close_event(tied.id, None, now()).await.unwrap();
    assert_eq!(
        outcome.record.result.unwrap().option_id,
        "y",
        "a tie goes to the option listed first"
    );

    let clear = event_with(&["x", "y", "z"], 1, closes_at);
    store.create_event(&clear, closes_at).await.unwrap();
    store
        .cast_vote(vote(user_id, &clear, "x", 1))
        .await
        .unwrap();
    store
        .cast_vote(vote(user_id, &clear, "z", 3))
        .await
        .unwrap();
    let outcome = store.close_event(clear.id, None, now()).await.unwrap();
    assert_eq!(outcome.record.result.unwrap().option_id, "z");
}

on_every_store!(the_winner_is_the_most_voted_option_and_ties_go_to_the_first_listed);

async fn a_close_may_choose_the_winner_but_only_among_the_options(database: TestDatabase) {
    let store = database.connect().await;
    let user_id = Uuid::new_v4();
    store.ensure_user(user_id, 100).await.unwrap();
    let event = open_event(&store, 1).await;
    store
        .cast_vote(vote(user_id, &event, "a", 5))
        .await
        .unwrap();

    match store
        .close_event(event.id, Some("nope".to_owned()), now())
        .await
    {
        Err(StoreError::UnknownOption(option)) => assert_eq!(option, "nope"),
        other => panic!("expected UnknownOption, got {other:?}"),
    }
    assert_eq!(
        store.get_event(event.id).await.unwrap().unwrap().status,
        EventStatus::Open
    );

    let closed = store
        .close_event(event.id, Some("b".to_owned()), now())
        .await
        .unwrap();
    assert!(closed.newly_closed);
    let result = closed.record.result.clone().unwrap();
    assert_eq!(result.option_id, "b");
    assert_eq!(result.totals["a"], 5);

    // Closing again returns the same record, whatever the second caller asks for.
    let again = store
        .close_event(event.id, Some("a".to_owned()), now())
        .await
        .unwrap();
    assert!(!again.newly_closed);
    assert_eq!(again.record, closed.record);

    assert!(matches!(
        store.close_event(Uuid::new_v4(), None, now()).await,
        Err(StoreError::NotFound)
    ));
}

on_every_store!(a_close_may_choose_the_winner_but_only_among_the_options);

async fn live_events_are_the_open_ones_and_the_recently_closed(database: TestDatabase) {
    let store = database.connect().await;
    let base = now();
    let open = open_event(&store, 1).await;
    let old = open_event(&store, 1).await;
    let recent = open_event(&store, 1).await;
    store
        .close_event(old.id, None, base - Duration::minutes(10))
        .await
        .unwrap();
    store
        .close_event(recent.id, None, base - Duration::seconds(30))
        .await
        .unwrap();

    let window = base - Duration::minutes(1);
    let mut live: Vec<Uuid> = store
        .live_events(window)
        .await
        .unwrap()
        .iter()
        .map(|record| record.event.id)
        .collect();
    live.sort();
    let mut expected = vec![open.id, recent.id];
    expected.sort();
    assert_eq!(live, expected);

    // The bound is inclusive: an event closed exactly at `closed_since` is still live.
    let at_bound = store
        .live_events(base - Duration::seconds(30))
        .await
        .unwrap();
    assert!(at_bound.iter().any(|record| record.event.id == recent.id));
}

on_every_store!(live_events_are_the_open_ones_and_the_recently_closed);

async fn list_events_filters_and_puts_the_latest_closing_first(database: TestDatabase) {
    let store = database.connect().await;
    let base = now();
    let mut created = Vec::new();
    for minutes in [5, 30, 15] {
        let closes_at = base + Duration::minutes(minutes);
        let event = event_with(&["a", "b"], 1, closes_at);
        store.create_event(&event, closes_at).await.unwrap();
        created.push(event);
    }
    let streamer = created[0].streamer_id;
    store.close_event(created[2].id, None, base).await.unwrap();

    let all = store.list_events(&EventFilter::default()).await.unwrap();
    let order: Vec<Uuid> = all.iter().map(|record| record.event.id).collect();
    assert_eq!(order, vec![created[1].id, created[2].id, created[0].id]);

    let open = EventFilter {
        status: Some(EventStatus::Open),
        ..EventFilter::default()
    };
    let open_ids: Vec<Uuid> = store
        .list_events(&open)
        .await
        .unwrap()
        .iter()
        .map(|record| record.event.id)
        .collect();
    assert_eq!(open_ids, vec![created[1].id, created[0].id]);

    let by_streamer = EventFilter {
        streamer_id: Some(streamer),
        ..EventFilter::default()
    };
    let mine = store.list_events(&by_streamer).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].event, created[0]);

    // Pages of one: each starts after the last event of the previous one.
    let mut paged = Vec::new();
    let mut after = None;
    for _ in 0..5 {
        let page = store
            .list_events(&EventFilter {
                limit: Some(1),
                after,
                ..EventFilter::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(livevote_storage::EventPosition {
            closes_at: last.closes_at,
            event_id: last.event.id,
        });
        paged.extend(page.iter().map(|record| record.event.id));
    }
    assert_eq!(paged, order);
}

on_every_store!(list_events_filters_and_puts_the_latest_closing_first);
