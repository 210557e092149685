//! Unit tests of the ledger rules, without a database: each rule on a small hand-made state.

use chrono::{Duration, TimeZone};
use livevote_protocol::{EventOption, Timestamp};

use super::*;
use crate::IdempotencyKey;

fn at(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0).unwrap() + Duration::minutes(minutes)
}

fn event(cost_per_vote: u64) -> Event {
    Event {
        id: Uuid::from_u128(7),
        streamer_id: Uuid::from_u128(8),
        game_id: None,
        title: "Who wins?".to_owned(),
        options: ["a", "b", "c"]
            .iter()
            .map(|id| EventOption {
                id: (*id).to_owned(),
                label: id.to_uppercase(),
            })
            .collect(),
        closes_at: Timestamp(at(60).to_rfc3339()),
        cost_per_vote,
        prompt_versions: None,
    }
}

/// A ledger with one open event (closing at minute 60) and the next entry id loaded.
fn ledger_with_event(cost_per_vote: u64) -> (Ledger, Uuid) {
    let mut ledger = Ledger::new();
    ledger.set_next_entry_id(1);
    let Plan::Write(record) = ledger.plan_create(event(cost_per_vote), at(60)) else {
        panic!("a new event is written");
    };
    let event_id = record.event.id;
    ledger.created(record);
    (ledger, event_id)
}

fn vote(user_id: Uuid, event_id: Uuid, option: &str, votes: u32) -> VoteCommand {
    VoteCommand {
        user_id,
        event_id,
        option_id: option.to_owned(),
        votes,
        idempotency: None,
        now: at(0),
        initial_balance: 0,
    }
}

fn key(key: &str, fingerprint: &str) -> Option<IdempotencyKey> {
    Some(IdempotencyKey {
        key: key.to_owned(),
        fingerprint: fingerprint.to_owned(),
    })
}

fn credit(admin_id: Uuid, user_id: Uuid, amount: i64) -> CreditCommand {
    CreditCommand {
        admin_id,
        user_id,
        amount,
        reason: "top-up".to_owned(),
        idempotency: None,
        initial_balance: 0,
    }
}

#[test]
fn a_balance_of_exactly_the_cost_votes_and_one_less_is_refused_with_nothing_written() {
    let (mut ledger, event_id) = ledger_with_event(5);
    let (rich, poor) = (Uuid::from_u128(1), Uuid::from_u128(2));
    let mut changes = Changes::new(at(0));
    let mut command = vote(rich, event_id, "a", 2);
    command.initial_balance = 10;
    let receipt = ledger.cast_vote(command, &mut changes).unwrap();
    assert_eq!(
        (receipt.balance, receipt.seq, receipt.totals["a"]),
        (0, 1, 2)
    );

    let mut command = vote(poor, event_id, "a", 2);
    command.initial_balance = 9;
    let refused = ledger.cast_vote(command, &mut changes);
    assert!(matches!(
        refused,
        Err(StoreError::InsufficientBalance {
            balance: 9,
            needed: 10
        })
    ));
    assert_eq!(ledger.balance(poor), Some(9), "initial credit kept");
    let kinds: Vec<_> = changes
        .entries
        .iter()
        .map(|entry| (entry.user_id, entry.kind, entry.amount))
        .collect();
    assert_eq!(
        kinds,
        [
            (rich, LedgerEntryKind::InitialCredit, 10),
            (rich, LedgerEntryKind::VoteDebit, -10),
            (poor, LedgerEntryKind::InitialCredit, 9),
        ]
    );
    assert_eq!(
        ledger.event(event_id).unwrap().seq,
        1,
        "a refusal moves no seq"
    );
}

#[test]
fn votes_are_refused_for_unknown_events_unknown_options_and_at_closes_at() {
    let (mut ledger, event_id) = ledger_with_event(1);
    let user = Uuid::from_u128(1);
    let mut changes = Changes::new(at(0));
    let rich = |mut command: VoteCommand| {
        command.initial_balance = 100;
        command
    };
    assert!(matches!(
        ledger.cast_vote(rich(vote(user, Uuid::from_u128(99), "a", 1)), &mut changes),
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        ledger.cast_vote(rich(vote(user, event_id, "z", 1)), &mut changes),
        Err(StoreError::UnknownOption(option)) if option == "z"
    ));
    let mut late = rich(vote(user, event_id, "a", 1));
    late.now = at(60);
    assert!(matches!(
        ledger.cast_vote(late, &mut changes),
        Err(StoreError::EventClosed)
    ));
    let mut just_in_time = rich(vote(user, event_id, "a", 1));
    just_in_time.now = at(60) - Duration::milliseconds(1);
    assert_eq!(
        ledger
            .cast_vote(just_in_time, &mut changes)
            .unwrap()
            .balance,
        99
    );
}

#[test]
fn one_replay_serves_votes_and_credits_and_refuses_a_reused_key() {
    let (mut ledger, event_id) = ledger_with_event(1);
    let user = Uuid::from_u128(1);
    let mut changes = Changes::new(at(0));
    let mut first = vote(user, event_id, "a", 3);
    first.initial_balance = 10;
    first.idempotency = key("k", "body-1");
    let answered = ledger.cast_vote(first.clone(), &mut changes).unwrap();
    assert!(!answered.replayed);

    let replayed = ledger.cast_vote(first.clone(), &mut changes).unwrap();
    assert!(replayed.replayed);
    assert_eq!(replayed.balance_version, 0);
    assert_eq!(
        (replayed.balance, replayed.totals.clone(), replayed.seq),
        (answered.balance, answered.totals.clone(), answered.seq)
    );
    assert_eq!(ledger.balance(user), Some(7), "a replay debits nothing");

    let mut other_body = first.clone();
    other_body.idempotency = key("k", "body-2");
    assert!(matches!(
        ledger.cast_vote(other_body, &mut changes),
        Err(StoreError::IdempotencyKeyReused)
    ));
    // Same scope (the user as an admin), same key and fingerprint, another kind of request.
    let mut as_credit = credit(user, user, 5);
    as_credit.idempotency = key("k", "body-1");
    assert!(matches!(
        ledger.credit(as_credit, &mut changes),
        Err(StoreError::IdempotencyKeyReused)
    ));

    let admin = Uuid::from_u128(2);
    let mut top_up = credit(admin, user, 5);
    top_up.idempotency = key("k", "credit-body");
    assert_eq!(
        ledger.credit(top_up.clone(), &mut changes).unwrap().balance,
        12
    );
    let again = ledger.credit(top_up, &mut changes).unwrap();
    assert!(again.replayed);
    assert_eq!((again.balance, ledger.balance(user)), (12, Some(12)));
    assert_eq!(changes.answers.len(), 2);
    assert!(changes.answers.values().all(|answer| answer.fresh));
}

#[test]
fn a_refused_keyed_request_leaves_no_answer_and_its_retry_runs() {
    let (mut ledger, event_id) = ledger_with_event(4);
    let user = Uuid::from_u128(1);
    let mut changes = Changes::new(at(0));
    let mut keyed = vote(user, event_id, "b", 1);
    keyed.idempotency = key("retry", "body");
    assert!(ledger.cast_vote(keyed.clone(), &mut changes).is_err());
    assert!(changes.answers.is_empty());
    ledger
        .credit(credit(Uuid::from_u128(2), user, 4), &mut changes)
        .unwrap();
    let receipt = ledger.cast_vote(keyed, &mut changes).unwrap();
    assert!(!receipt.replayed);
    assert_eq!(receipt.balance, 0);
}

#[test]
fn closing_picks_the_first_listed_leader_and_happens_once() {
    let (mut ledger, event_id) = ledger_with_event(1);
    let mut changes = Changes::new(at(0));
    for (user, option) in [(1, "b"), (2, "c"), (3, "a")] {
        let mut command = vote(Uuid::from_u128(user), event_id, option, 1);
        command.initial_balance = 1;
        ledger.cast_vote(command, &mut changes).unwrap();
    }
    assert!(matches!(
        ledger.plan_close(event_id, Some("z".to_owned()), at(1)),
        Plan::Answered(Err(StoreError::UnknownOption(_)))
    ));
    let Plan::Write(closed) = ledger.plan_close(event_id, None, at(1)) else {
        panic!("an open event is closed");
    };
    assert_eq!(
        closed.result.as_ref().unwrap().option_id,
        "a",
        "ties: first listed"
    );
    assert_eq!(closed.seq, 4);
    assert!(changes.dirty_events.contains(&event_id));
    let outcome = ledger.closed(closed, &mut changes);
    assert!(outcome.newly_closed);
    assert!(
        !changes.dirty_events.contains(&event_id),
        "the close wrote totals and seq"
    );

    match ledger.plan_close(event_id, Some("b".to_owned()), at(2)) {
        Plan::Answered(Ok(again)) => {
            assert!(!again.newly_closed);
            assert_eq!(again.record, outcome.record);
        }
        other => panic!("closing twice: {other:?}"),
    }
    let mut late = vote(Uuid::from_u128(1), event_id, "a", 1);
    late.initial_balance = 5;
    assert!(matches!(
        ledger.cast_vote(late, &mut changes),
        Err(StoreError::EventClosed)
    ));
}

#[test]
fn a_second_creation_is_the_same_event_or_a_conflict() {
    let (ledger, event_id) = ledger_with_event(1);
    match ledger.plan_create(event(1), at(60)) {
        Plan::Answered(Ok(CreateOutcome::AlreadyExists(record))) => {
            assert_eq!(record.event.id, event_id)
        }
        other => panic!("identical creation: {other:?}"),
    }
    let mut changed = event(1);
    changed.title = "Another title".to_owned();
    assert!(matches!(
        ledger.plan_create(changed, at(60)),
        Plan::Answered(Err(StoreError::Conflict))
    ));
    assert!(matches!(
        ledger.plan_create(event(1), at(61)),
        Plan::Answered(Err(StoreError::Conflict))
    ));
}

#[test]
fn entry_ids_grow_across_users_and_a_forgotten_ledger_knows_nothing() {
    let (mut ledger, event_id) = ledger_with_event(1);
    ledger.set_next_entry_id(41);
    let mut changes = Changes::new(at(0));
    let mut first = vote(Uuid::from_u128(1), event_id, "a", 1);
    first.initial_balance = 3;
    let receipt = ledger.cast_vote(first, &mut changes).unwrap();
    assert_eq!(receipt.balance_version, 42, "41 was the initial credit");
    let ids: Vec<_> = changes.entries.iter().map(|entry| entry.id).collect();
    assert_eq!(ids, [41, 42]);

    ledger.forget();
    assert!(!ledger.knows_next_entry_id());
    assert_eq!(ledger.balance(Uuid::from_u128(1)), None);
    assert!(ledger.event(event_id).is_none());
}

#[test]
fn instants_outside_the_stores_range_are_refused() {
    let far = DateTime::<Utc>::MAX_UTC;
    assert!(representable(far).is_err());
    let ledger = Ledger::new();
    assert!(matches!(
        ledger.plan_create(event(1), far),
        Plan::Answered(Err(StoreError::Database(_)))
    ));
}
