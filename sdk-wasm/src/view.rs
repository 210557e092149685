//! The JavaScript shape of an event's state (`EventState` in the package's TypeScript
//! declarations): the event's definition flattened with its live totals and result.

use std::collections::BTreeMap;

use livevote_protocol::{EventOption, EventResult, Totals};
use serde::Serialize;
use uuid::Uuid;

use crate::state::EventState;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventStateView<'a> {
    id: Uuid,
    streamer_id: Uuid,
    game_id: Option<Uuid>,
    title: &'a str,
    options: &'a [EventOption],
    /// The current closing time (EVENT_UPDATED may have moved it).
    closes_at: &'a str,
    cost_per_vote: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_versions: Option<&'a BTreeMap<String, String>>,
    status: &'static str,
    totals: &'a Totals,
    /// 0 until the first EVENT_UPDATED.
    seq: u64,
    result: Option<&'a EventResult>,
    stale: bool,
}

impl<'a> EventStateView<'a> {
    pub fn new(state: &'a EventState) -> Self {
        let event = &state.event;
        EventStateView {
            id: event.id,
            streamer_id: event.streamer_id,
            game_id: event.game_id,
            title: &event.title,
            options: &event.options,
            closes_at: state.closes_at.as_str(),
            cost_per_vote: event.cost_per_vote,
            prompt_versions: event.prompt_versions.as_ref(),
            status: if state.closed { "closed" } else { "open" },
            totals: &state.totals,
            seq: state.seq.unwrap_or(0),
            result: state.result.as_ref(),
            stale: state.stale,
        }
    }
}
