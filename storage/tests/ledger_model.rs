//! The ledger against a small model of it: random sequences of creations, credits, votes (with
//! and without idempotency keys, replays with the same and with another body), and closes, run
//! through the ledger rules alone and through a real store (`SqliteStore` on a file, and
//! `PostgresStore` when a Postgres answers). Every answer and every final balance and event must
//! equal the model's, and no balance may go below 0.

mod support;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, TimeZone, Utc};
use livevote_protocol::{Event, EventOption, EventResult, EventStatus, Timestamp};
use livevote_storage::ledger::{Changes, Ledger, Plan};
use livevote_storage::{
    CloseOutcome, CreateOutcome, CreditCommand, CreditReceipt, EventRecord, IdempotencyKey, Store,
    StoreError, VoteCommand, VoteReceipt,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use support::TestDatabase;
use uuid::Uuid;

const USERS: usize = 3;
const EVENTS: usize = 3;
const KEYS: [&str; 2] = ["key-1", "key-2"];
const BODIES: [&str; 2] = ["body-1", "body-2"];
/// Option indexes past the event's two options name an option the event does not have.
const OPTIONS: [&str; 3] = ["a", "b", "zz"];

fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 12, 0, 0).unwrap()
}

fn closes_at() -> DateTime<Utc> {
    base() + Duration::hours(1)
}

#[derive(Debug, Clone)]
enum Step {
    Create {
        event: usize,
        other_title: bool,
    },
    Vote {
        user: usize,
        event: usize,
        option: usize,
        votes: u32,
        key: Option<(usize, usize)>,
        after_closes_at: bool,
        initial: i64,
    },
    Credit {
        admin: usize,
        user: usize,
        amount: i64,
        key: Option<(usize, usize)>,
        initial: i64,
    },
    Close {
        event: usize,
        chosen: Option<usize>,
    },
}

fn key_strategy() -> impl Strategy<Value = Option<(usize, usize)>> {
    prop::option::weighted(0.6, (0..KEYS.len(), 0..BODIES.len()))
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0..EVENTS, prop::bool::weighted(0.2))
            .prop_map(|(event, other_title)| Step::Create { event, other_title }),
        6 => (
            0..USERS,
            0..EVENTS,
            prop::sample::select(vec![0usize, 0, 1, 1, 2]),
            1..=3u32,
            key_strategy(),
            prop::bool::weighted(0.1),
            0..=6i64,
        )
            .prop_map(|(user, event, option, votes, key, after_closes_at, initial)| Step::Vote {
                user,
                event,
                option,
                votes,
                key,
                after_closes_at,
                initial,
            }),
        3 => (0..USERS, 0..USERS, 1..=6i64, key_strategy(), 0..=6i64).prop_map(
            |(admin, user, amount, key, initial)| Step::Credit {
                admin,
                user,
                amount,
                key,
                initial,
            }
        ),
        1 => (0..EVENTS, prop::option::weighted(0.5, 0..OPTIONS.len()))
            .prop_map(|(event, chosen)| Step::Close { event, chosen }),
    ]
}

/// Groups of steps: each group is sent at once, so that it can share one batch.
fn scenario_strategy() -> impl Strategy<Value = Vec<Vec<Step>>> {
    prop::collection::vec(prop::collection::vec(step_strategy(), 1..=5), 1..=10)
}

/// The ids one scenario uses; fresh for every case, so that cases never share rows.
struct Ids {
    users: Vec<Uuid>,
    events: Vec<Uuid>,
    streamer: Uuid,
}

impl Ids {
    fn new() -> Self {
        Ids {
            users: (0..USERS).map(|_| Uuid::new_v4()).collect(),
            events: (0..EVENTS).map(|_| Uuid::new_v4()).collect(),
            streamer: Uuid::new_v4(),
        }
    }

    fn event(&self, index: usize, other_title: bool) -> Event {
        Event {
            id: self.events[index],
            streamer_id: self.streamer,
            game_id: None,
            title: if other_title { "Another" } else { "Who wins?" }.to_owned(),
            options: OPTIONS[..2]
                .iter()
                .map(|id| EventOption {
                    id: (*id).to_owned(),
                    label: id.to_uppercase(),
                })
                .collect(),
            closes_at: Timestamp(closes_at().to_rfc3339()),
            cost_per_vote: index as u64 + 1,
            prompt_versions: None,
        }
    }
}

/// A store's request, built from a step.
enum Request {
    Create(Event),
    Vote(VoteCommand),
    Credit(CreditCommand),
    Close(Uuid, Option<String>),
}

fn idempotency(key: Option<(usize, usize)>) -> Option<IdempotencyKey> {
    key.map(|(key, body)| IdempotencyKey {
        key: KEYS[key].to_owned(),
        fingerprint: BODIES[body].to_owned(),
    })
}

fn request(ids: &Ids, step: &Step) -> Request {
    match *step {
        Step::Create { event, other_title } => Request::Create(ids.event(event, other_title)),
        Step::Vote {
            user,
            event,
            option,
            votes,
            key,
            after_closes_at,
            initial,
        } => Request::Vote(VoteCommand {
            user_id: ids.users[user],
            event_id: ids.events[event],
            option_id: OPTIONS[option].to_owned(),
            votes,
            idempotency: idempotency(key),
            now: if after_closes_at { closes_at() } else { base() },
            initial_balance: initial,
        }),
        Step::Credit {
            admin,
            user,
            amount,
            key,
            initial,
        } => Request::Credit(CreditCommand {
            admin_id: ids.users[admin],
            user_id: ids.users[user],
            amount,
            reason: "model".to_owned(),
            idempotency: idempotency(key),
            initial_balance: initial,
        }),
        Step::Close { event, chosen } => Request::Close(
            ids.events[event],
            chosen.map(|option| OPTIONS[option].to_owned()),
        ),
    }
}

/// An answer, in a form the model, the rules and the store can all be compared in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Vote {
        balance: i64,
        totals: BTreeMap<String, u64>,
        seq: u64,
        replayed: bool,
    },
    Credit {
        balance: i64,
        replayed: bool,
    },
    Created(EventRecord),
    AlreadyExists(EventRecord),
    Closed {
        record: EventRecord,
        newly_closed: bool,
    },
    Refused(String),
}

fn seen_vote(answer: Result<VoteReceipt, StoreError>) -> Seen {
    match answer {
        Ok(receipt) => Seen::Vote {
            balance: receipt.balance,
            totals: receipt.totals,
            seq: receipt.seq,
            replayed: receipt.replayed,
        },
        Err(error) => Seen::Refused(error.to_string()),
    }
}

fn seen_credit(answer: Result<CreditReceipt, StoreError>) -> Seen {
    match answer {
        Ok(receipt) => Seen::Credit {
            balance: receipt.balance,
            replayed: receipt.replayed,
        },
        Err(error) => Seen::Refused(error.to_string()),
    }
}

fn seen_create(answer: Result<CreateOutcome, StoreError>) -> Seen {
    match answer {
        Ok(CreateOutcome::Created(record)) => Seen::Created(record),
        Ok(CreateOutcome::AlreadyExists(record)) => Seen::AlreadyExists(record),
        Err(error) => Seen::Refused(error.to_string()),
    }
}

fn seen_close(answer: Result<CloseOutcome, StoreError>) -> Seen {
    match answer {
        Ok(outcome) => Seen::Closed {
            record: outcome.record,
            newly_closed: outcome.newly_closed,
        },
        Err(error) => Seen::Refused(error.to_string()),
    }
}

/// The ledger as the contract states it, written as plainly as possible.
#[derive(Default)]
struct Model {
    balances: HashMap<Uuid, i64>,
    events: HashMap<Uuid, EventRecord>,
    /// `(scope, key)` → (is a vote, fingerprint, first answer).
    keys: HashMap<(Uuid, String), (bool, String, Seen)>,
}

impl Model {
    fn known(&mut self, user: Uuid, initial: i64) -> i64 {
        *self.balances.entry(user).or_insert(initial)
    }

    fn replay(&self, scope: Uuid, key: &Option<IdempotencyKey>, vote: bool) -> Option<Seen> {
        let key = key.as_ref()?;
        let (kind, fingerprint, answer) = self.keys.get(&(scope, key.key.clone()))?;
        if *kind != vote || *fingerprint != key.fingerprint {
            return Some(Seen::Refused(StoreError::IdempotencyKeyReused.to_string()));
        }
        let mut answer = answer.clone();
        match &mut answer {
            Seen::Vote { replayed, .. } | Seen::Credit { replayed, .. } => *replayed = true,
            _ => unreachable!("only votes and credits keep answers"),
        }
        Some(answer)
    }

    fn apply(&mut self, request: &Request) -> Seen {
        let refused = |error: StoreError| Seen::Refused(error.to_string());
        match request {
            Request::Create(event) => match self.events.get(&event.id) {
                Some(existing) if existing.event == *event => Seen::AlreadyExists(existing.clone()),
                Some(_) => refused(StoreError::Conflict),
                None => {
                    let record = EventRecord {
                        event: event.clone(),
                        closes_at: closes_at(),
                        status: EventStatus::Open,
                        totals: OPTIONS[..2].iter().map(|id| (id.to_string(), 0)).collect(),
                        seq: 0,
                        result: None,
                        closed_at: None,
                    };
                    self.events.insert(event.id, record.clone());
                    Seen::Created(record)
                }
            },
            Request::Vote(vote) => {
                let balance = self.known(vote.user_id, vote.initial_balance);
                if let Some(replayed) = self.replay(vote.user_id, &vote.idempotency, true) {
                    return replayed;
                }
                let Some(record) = self.events.get_mut(&vote.event_id) else {
                    return refused(StoreError::NotFound);
                };
                if record.status == EventStatus::Closed || vote.now >= record.closes_at {
                    return refused(StoreError::EventClosed);
                }
                if !record.totals.contains_key(&vote.option_id) {
                    return refused(StoreError::UnknownOption(vote.option_id.clone()));
                }
                let needed = i64::from(vote.votes) * record.event.cost_per_vote as i64;
                if balance < needed {
                    return refused(StoreError::InsufficientBalance { balance, needed });
                }
                self.balances.insert(vote.user_id, balance - needed);
                *record.totals.get_mut(&vote.option_id).unwrap() += u64::from(vote.votes);
                record.seq += 1;
                let answer = Seen::Vote {
                    balance: balance - needed,
                    totals: record.totals.clone(),
                    seq: record.seq,
                    replayed: false,
                };
                if let Some(key) = &vote.idempotency {
                    self.keys.insert(
                        (vote.user_id, key.key.clone()),
                        (true, key.fingerprint.clone(), answer.clone()),
                    );
                }
                answer
            }
            Request::Credit(credit) => {
                let balance = self.known(credit.user_id, credit.initial_balance);
                if let Some(replayed) = self.replay(credit.admin_id, &credit.idempotency, false) {
                    return replayed;
                }
                self.balances
                    .insert(credit.user_id, balance + credit.amount);
                let answer = Seen::Credit {
                    balance: balance + credit.amount,
                    replayed: false,
                };
                if let Some(key) = &credit.idempotency {
                    self.keys.insert(
                        (credit.admin_id, key.key.clone()),
                        (false, key.fingerprint.clone(), answer.clone()),
                    );
                }
                answer
            }
            Request::Close(event_id, chosen) => {
                let Some(record) = self.events.get_mut(event_id) else {
                    return refused(StoreError::NotFound);
                };
                if record.status == EventStatus::Closed {
                    return Seen::Closed {
                        record: record.clone(),
                        newly_closed: false,
                    };
                }
                let winner = match chosen {
                    Some(option) if record.totals.contains_key(option) => option.clone(),
                    Some(option) => return refused(StoreError::UnknownOption(option.clone())),
                    // Most votes; ties go to the first listed, and "a" is listed first.
                    None if record.totals["b"] > record.totals["a"] => "b".to_owned(),
                    None => "a".to_owned(),
                };
                record.status = EventStatus::Closed;
                record.seq += 1;
                record.closed_at = Some(base());
                record.result = Some(EventResult {
                    option_id: winner,
                    totals: record.totals.clone(),
                });
                Seen::Closed {
                    record: record.clone(),
                    newly_closed: true,
                }
            }
        }
    }
}

/// Receipts name their ledger entry: 0 on a replay, and growing for each user otherwise.
fn check_version(
    versions: &mut HashMap<Uuid, u64>,
    user: Uuid,
    version: u64,
    replayed: bool,
) -> Result<(), TestCaseError> {
    if replayed {
        prop_assert_eq!(version, 0);
    } else {
        let last = versions.entry(user).or_insert(0);
        prop_assert!(version > *last, "version {} after {}", version, *last);
        *last = version;
    }
    Ok(())
}

/// What kind of answer a step got, to check that the scenarios reach every rule.
fn answer_kind(seen: &Seen) -> String {
    match seen {
        Seen::Vote { replayed, .. } => format!("vote replayed={replayed}"),
        Seen::Credit { replayed, .. } => format!("credit replayed={replayed}"),
        Seen::Created(_) => "created".to_owned(),
        Seen::AlreadyExists(_) => "already exists".to_owned(),
        Seen::Closed { newly_closed, .. } => format!("closed newly={newly_closed}"),
        Seen::Refused(message) if message.starts_with("balance ") => "insufficient".to_owned(),
        Seen::Refused(message) => message.split(' ').take(3).collect::<Vec<_>>().join(" "),
    }
}

/// The rules alone. Between groups the stored answers are handed to the next batch as a
/// database would load them (no longer fresh).
fn run_rules(
    groups: &[Vec<Step>],
    kinds: &std::cell::RefCell<BTreeMap<String, usize>>,
) -> Result<(), TestCaseError> {
    let ids = Ids::new();
    let mut model = Model::default();
    let mut ledger = Ledger::new();
    ledger.set_next_entry_id(1);
    let mut stored_answers = livevote_storage::ledger::Answers::new();
    let mut entries = Vec::new();
    let mut versions = HashMap::new();
    for group in groups {
        let mut changes = Changes::new(base());
        changes.answers = stored_answers.clone();
        for step in group {
            let request = request(&ids, step);
            let expected = model.apply(&request);
            let seen = match request {
                Request::Create(event) => {
                    seen_create(match ledger.plan_create(event, closes_at()) {
                        Plan::Answered(answer) => answer,
                        Plan::Write(record) => Ok(ledger.created(record)),
                    })
                }
                Request::Vote(vote) => {
                    let user = vote.user_id;
                    let answer = ledger.cast_vote(vote, &mut changes);
                    if let Ok(receipt) = &answer {
                        check_version(
                            &mut versions,
                            user,
                            receipt.balance_version,
                            receipt.replayed,
                        )?;
                    }
                    seen_vote(answer)
                }
                Request::Credit(credit) => {
                    let user = credit.user_id;
                    let answer = ledger.credit(credit, &mut changes);
                    if let Ok(receipt) = &answer {
                        check_version(
                            &mut versions,
                            user,
                            receipt.balance_version,
                            receipt.replayed,
                        )?;
                    }
                    seen_credit(answer)
                }
                Request::Close(event_id, chosen) => {
                    seen_close(match ledger.plan_close(event_id, chosen, base()) {
                        Plan::Answered(answer) => answer,
                        Plan::Write(closed) => Ok(ledger.closed(closed, &mut changes)),
                    })
                }
            };
            *kinds.borrow_mut().entry(answer_kind(&seen)).or_insert(0) += 1;
            prop_assert_eq!(seen, expected, "after {:?}", step);
        }
        for (scope_key, mut answer) in changes.answers {
            answer.fresh = false;
            stored_answers.insert(scope_key, answer);
        }
        entries.extend(changes.entries);
    }
    for user in &ids.users {
        prop_assert_eq!(ledger.balance(*user), model.balances.get(user).copied());
        let mine: Vec<_> = entries
            .iter()
            .filter(|entry| entry.user_id == *user)
            .collect();
        let sum: i64 = mine.iter().map(|entry| entry.amount).sum();
        prop_assert_eq!(Some(sum), model.balances.get(user).copied().or(Some(0)));
        prop_assert!(
            mine.iter().all(|entry| entry.balance >= 0),
            "a balance went below 0"
        );
    }
    for event_id in &ids.events {
        prop_assert_eq!(ledger.event(*event_id), model.events.get(event_id));
    }
    Ok(())
}

/// A real store. A group's calls are started in order within one poll, so they queue in
/// that order and the writer may take several into one batch. Every case uses ids of its own,
/// so cases may share a database.
async fn run_store(database: &TestDatabase, groups: Vec<Vec<Step>>) -> Result<(), TestCaseError> {
    let store = database.connect().await;
    let ids = Ids::new();
    let mut model = Model::default();
    let mut versions = HashMap::new();
    for group in &groups {
        let requests: Vec<Request> = group.iter().map(|step| request(&ids, step)).collect();
        let expected: Vec<Seen> = requests
            .iter()
            .map(|request| model.apply(request))
            .collect();
        let calls = requests.into_iter().map(|request| {
            let store = &store;
            async move {
                match request {
                    Request::Create(event) => (
                        None,
                        seen_create(store.create_event(&event, closes_at()).await),
                    ),
                    Request::Vote(vote) => {
                        let user = vote.user_id;
                        let answer = store.cast_vote(vote).await;
                        let version = answer
                            .as_ref()
                            .ok()
                            .map(|r| (user, r.balance_version, r.replayed));
                        (version, seen_vote(answer))
                    }
                    Request::Credit(credit) => {
                        let user = credit.user_id;
                        let answer = store.credit(credit).await;
                        let version = answer
                            .as_ref()
                            .ok()
                            .map(|r| (user, r.balance_version, r.replayed));
                        (version, seen_credit(answer))
                    }
                    Request::Close(event_id, chosen) => (
                        None,
                        seen_close(store.close_event(event_id, chosen, base()).await),
                    ),
                }
            }
        });
        let answers = futures_util::future::join_all(calls).await;
        for ((version, seen), (expected, step)) in
            answers.into_iter().zip(expected.iter().zip(group))
        {
            if let Some((user, version, replayed)) = version {
                check_version(&mut versions, user, version, replayed)?;
            }
            prop_assert_eq!(&seen, expected, "after {:?}", step);
        }
    }
    for user in &ids.users {
        let balance = store.balance(*user).await.expect("balance");
        prop_assert_eq!(balance, model.balances.get(user).copied());
        let mut running = 0;
        for entry in store.ledger_entries(*user).await.expect("ledger entries") {
            running += entry.amount;
            prop_assert!(running >= 0, "a balance went below 0");
        }
        prop_assert_eq!(running, balance.unwrap_or(0));
    }
    for event_id in &ids.events {
        let record = store.get_event(*event_id).await.expect("get event");
        prop_assert_eq!(record.as_ref(), model.events.get(event_id));
    }
    store.close().await;
    Ok(())
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        // Nothing written next to the sources; a failure prints its minimal scenario.
        failure_persistence: None,
        ..Config::default()
    })
}

#[test]
fn the_rules_answer_like_the_model() {
    let kinds = std::cell::RefCell::new(BTreeMap::new());
    runner(1_000)
        .run(&scenario_strategy(), |groups| run_rules(&groups, &kinds))
        .unwrap();
    // A generator that never reached a rule would pass without testing it.
    let kinds = kinds.into_inner();
    for kind in [
        "vote replayed=false",
        "vote replayed=true",
        "credit replayed=false",
        "credit replayed=true",
        "created",
        "already exists",
        "closed newly=true",
        "closed newly=false",
        "event not found",
        "an event with",
        "the event is",
        "the event has",
        "insufficient",
        "this Idempotency-Key was",
    ] {
        assert!(
            kinds.get(kind).copied().unwrap_or(0) >= 5,
            "{kind} seldom or never seen: {kinds:?}"
        );
    }
}

#[test]
fn the_sqlite_store_answers_like_the_model() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runner(48)
        .run(&scenario_strategy(), |groups| {
            runtime.block_on(async {
                let database = TestDatabase::sqlite().await;
                run_store(&database, groups).await
            })
        })
        .unwrap();
}

#[test]
fn the_postgres_store_answers_like_the_model() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let Some(database) = runtime.block_on(TestDatabase::postgres()) else {
        return;
    };
    runner(48)
        .run(&scenario_strategy(), |groups| {
            runtime.block_on(run_store(&database, groups))
        })
        .unwrap();
    runtime.block_on(database.audit());
}
