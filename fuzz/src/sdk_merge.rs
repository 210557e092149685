//! The SDK's merge rules under fuzzed traffic: server frames decoded natively (the protocol's
//! serde types, the contract's decoding) and fed to `livevote_sdk::state::Store` together with
//! the client's other moves (a connection lost, a fresh snapshot adopted, an event re-fetched,
//! old closed events pruned). What the browser's `JsValue` decoder adds is checked against the
//! same golden fixtures in Chromium (`sdk-wasm/tests/fixtures.rs`).

use std::collections::{BTreeMap, BTreeSet};

use livevote_protocol::{EventView, ServerMessage};
use livevote_sdk::state::{EventState, Store, MAX_CLOSED_EVENTS};
use uuid::Uuid;

/// One line per step. Its first byte says what happens, the rest (when any) is a JSON frame:
/// `m` a frame on the live connection, `f` a frame on the connection being built aside, `s`
/// the live connection lost, `a` the aside snapshot adopted (events on even-numbered channels
/// count as carried), `v` an answer of `GET /api/events/{id}`, `p` closed events pruned.
pub fn sdk_merge(data: &[u8]) {
    let mut live = Store::default();
    let mut fresh = Store::default();
    let mut before = Snapshot::of(&live);
    for line in data.split(|byte| *byte == b'\n').take(256) {
        let Some((step, frame)) = line.split_first() else {
            continue;
        };
        match step {
            b'm' => frames(frame).into_iter().for_each(|message| {
                live.merge(message);
            }),
            b'f' => frames(frame).into_iter().for_each(|message| {
                fresh.merge(message);
            }),
            b's' => {
                live.mark_stale();
            }
            b'a' => {
                let adopted = std::mem::take(&mut fresh);
                let offered: BTreeSet<Uuid> = adopted
                    .events()
                    .iter()
                    .map(|state| state.event.id)
                    .collect();
                let adoption = live.adopt(adopted, carried);
                for id in &adoption.to_verify {
                    let state = live.get(*id).expect("an event to verify is kept");
                    assert!(!state.closed && !offered.contains(id));
                }
                for id in &adoption.removed {
                    assert!(live.get(*id).is_none(), "a removed event is gone");
                }
            }
            b'v' => {
                if let Ok(view) = serde_json::from_slice::<EventView>(frame) {
                    live.merge_view(view);
                }
            }
            b'p' => {
                live.prune_closed();
                let closed = live.events().iter().filter(|state| state.closed).count();
                assert!(closed <= MAX_CLOSED_EVENTS);
            }
            _ => continue,
        }
        check(&live);
        check(&fresh);
        let after = Snapshot::of(&live);
        before.may_become(&after, *step == b'a');
        before = after;
    }
}

/// A frame is one message or an array of them (the server batches); what does not decode is
/// dropped whole, as the client does.
fn frames(frame: &[u8]) -> Vec<ServerMessage> {
    if let Ok(message) = serde_json::from_slice::<ServerMessage>(frame) {
        return vec![message];
    }
    serde_json::from_slice::<Vec<ServerMessage>>(frame).unwrap_or_default()
}

fn carried(state: &EventState) -> bool {
    state.event.streamer_id.as_u128() % 2 == 0
}

/// What must hold of any state a page renders from.
fn check(store: &Store) {
    let mut seen = BTreeSet::new();
    for state in store.events() {
        assert!(seen.insert(state.event.id), "an event listed twice");
        for option in &state.event.options {
            assert!(
                state.totals.contains_key(&option.id),
                "option {} has no total",
                option.id
            );
        }
        if state.closed {
            assert!(!state.stale, "a closed event is final, never stale");
            if let Some(result) = &state.result {
                for (option, votes) in &result.totals {
                    assert_eq!(state.totals.get(option), Some(votes), "closed totals");
                }
            }
        } else {
            assert!(state.result.is_none(), "an open event with a result");
        }
    }
}

/// Per event, what may only move one way between two steps.
struct Snapshot {
    events: BTreeMap<Uuid, (bool, Option<u64>, Option<Vec<(String, u64)>>)>,
}

impl Snapshot {
    fn of(store: &Store) -> Self {
        Snapshot {
            events: store
                .events()
                .iter()
                .map(|state| {
                    let final_totals = state.closed.then(|| {
                        state
                            .totals
                            .iter()
                            .map(|(option, votes)| (option.clone(), *votes))
                            .collect()
                    });
                    (state.event.id, (state.closed, state.seq, final_totals))
                })
                .collect(),
        }
    }

    /// Closing is terminal and its totals final; an open event's `seq` never goes back, except
    /// when `adopting` replaces its state by the fresh snapshot's.
    fn may_become(&self, after: &Snapshot, adopting: bool) {
        for (id, (closed, seq, final_totals)) in &self.events {
            let Some((closed_after, seq_after, final_after)) = after.events.get(id) else {
                continue;
            };
            if *closed {
                assert!(*closed_after, "a closed event opened again");
                assert_eq!(final_totals, final_after, "final totals changed");
            } else if !closed_after && !adopting {
                // `None < Some(_)`: a first update may arrive, a known seq never goes away.
                assert!(
                    seq_after >= seq,
                    "seq went back from {seq:?} to {seq_after:?}"
                );
            }
        }
    }
}
