//! Builds the JavaScript values the client hands out: an event's state (`EventState` in the
//! package's TypeScript declarations). Built by hand rather than through serde so that the wasm
//! links no serializer and no number formatting: JavaScript numbers are set as numbers.

use js_sys::{Array, Object};
use livevote_protocol::{EventResult, Totals};
use uuid::Uuid;
use wasm_bindgen::JsValue;

use crate::js::set;
use crate::state::EventState;

pub fn uuid_text(id: &Uuid) -> JsValue {
    JsValue::from_str(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()))
}

fn totals_object(totals: &Totals) -> JsValue {
    let object = Object::new();
    for (option, votes) in totals {
        set(&object, option, &JsValue::from_f64(*votes as f64));
    }
    object.into()
}

fn result_object(result: &EventResult) -> JsValue {
    let object = Object::new();
    set(&object, "optionId", &result.option_id.as_str().into());
    set(&object, "totals", &totals_object(&result.totals));
    object.into()
}

/// The flattened state of one event: its definition, then its live totals and outcome.
pub fn event_state(state: &EventState) -> JsValue {
    let event = &state.event;
    let object = Object::new();
    set(&object, "id", &uuid_text(&event.id));
    set(&object, "streamerId", &uuid_text(&event.streamer_id));
    set(
        &object,
        "gameId",
        &event.game_id.as_ref().map_or(JsValue::NULL, uuid_text),
    );
    set(&object, "title", &event.title.as_str().into());
    let options = Array::new();
    for option in &event.options {
        let item = Object::new();
        set(&item, "id", &option.id.as_str().into());
        set(&item, "label", &option.label.as_str().into());
        options.push(&item);
    }
    set(&object, "options", &options);
    // The current closing time: EVENT_UPDATED may have moved it.
    set(&object, "closesAt", &state.closes_at.as_str().into());
    set(
        &object,
        "costPerVote",
        &JsValue::from_f64(event.cost_per_vote as f64),
    );
    if let Some(versions) = &event.prompt_versions {
        let object_versions = Object::new();
        for (key, value) in versions {
            set(&object_versions, key, &value.as_str().into());
        }
        set(&object, "promptVersions", &object_versions);
    }
    set(
        &object,
        "status",
        &(if state.closed { "closed" } else { "open" }).into(),
    );
    set(&object, "totals", &totals_object(&state.totals));
    // 0 until the first EVENT_UPDATED was applied.
    set(
        &object,
        "seq",
        &JsValue::from_f64(state.seq.unwrap_or(0) as f64),
    );
    set(
        &object,
        "result",
        &state.result.as_ref().map_or(JsValue::NULL, result_object),
    );
    set(&object, "stale", &state.stale.into());
    object.into()
}
