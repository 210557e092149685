//! Reads server messages and HTTP answers, already parsed by the engine's `JSON.parse`, into
//! the protocol crate's types.
//!
//! Written by hand over `JsValue` rather than through serde (serde-wasm-bindgen or a serde
//! `Deserializer`): serde's generated visitors and their error messages (which print numbers,
//! linking float formatting) tripled the size of the wasm. The rules are the contract's:
//! required fields must be present with the right JSON type, unknown fields are ignored, and a
//! message that does not fit is dropped whole.

use std::collections::BTreeMap;

use js_sys::{Array, Object};
use livevote_protocol::{
    BalanceUpdated, ChannelList, Event, EventClosed, EventCreated, EventOption, EventResult,
    EventStatus, EventUpdated, EventView, Ping, ServerMessage, SystemNotice, Timestamp, Totals,
    VoteResponse,
};
use uuid::Uuid;
use wasm_bindgen::{JsCast, JsValue};

use crate::js::{self, as_array, get};

/// Integers a JavaScript number holds exactly.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

fn text(value: &JsValue, key: &str) -> Option<String> {
    get(value, key).as_string()
}

fn integer(value: &JsValue) -> Option<i64> {
    let number = value.as_f64()?;
    (number.fract() == 0.0 && number.abs() <= MAX_SAFE_INTEGER).then_some(number as i64)
}

fn count(value: &JsValue, key: &str) -> Option<u64> {
    integer(&get(value, key)).and_then(|number| u64::try_from(number).ok())
}

fn uuid(value: &JsValue, key: &str) -> Option<Uuid> {
    Uuid::try_parse(&text(value, key)?).ok()
}

/// A field that may be absent or null; `Some(None)` then, `None` when present but wrong.
fn optional<T>(
    value: &JsValue,
    key: &str,
    read: impl Fn(&JsValue, &str) -> Option<T>,
) -> Option<Option<T>> {
    let field = get(value, key);
    if field.is_null() || field.is_undefined() {
        Some(None)
    } else {
        read(value, key).map(Some)
    }
}

fn object_entries(value: &JsValue) -> Option<Array> {
    if !value.is_object() || Array::is_array(value) {
        return None;
    }
    Some(Object::entries(value.unchecked_ref::<Object>()))
}

fn totals(value: &JsValue) -> Option<Totals> {
    let mut totals = BTreeMap::new();
    for entry in object_entries(value)?.iter() {
        let entry: Array = entry.unchecked_into();
        let votes = integer(&entry.get(1)).and_then(|number| u64::try_from(number).ok())?;
        totals.insert(entry.get(0).as_string()?, votes);
    }
    Some(totals)
}

fn strings(value: &JsValue) -> Option<Vec<String>> {
    // js::strings skips what is not a string: all of them were when none was skipped.
    let length = as_array(value)?.length() as usize;
    let strings = js::strings(value);
    (strings.len() == length).then_some(strings)
}

/// The event object of EVENT_CREATED and of `GET /api/events/{id}`.
pub fn event(value: &JsValue) -> Option<Event> {
    let options = as_array(&get(value, "options"))?
        .iter()
        .map(|option| {
            Some(EventOption {
                id: text(&option, "id")?,
                label: text(&option, "label")?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let prompt_versions = match object_entries(&get(value, "promptVersions")) {
        None => None,
        Some(entries) => {
            // Inserted one by one: collecting into a BTreeMap sorts first, which links a sort.
            let mut versions = BTreeMap::new();
            for entry in entries.iter() {
                let entry: Array = entry.unchecked_into();
                versions.insert(entry.get(0).as_string()?, entry.get(1).as_string()?);
            }
            Some(versions)
        }
    };
    Some(Event {
        id: uuid(value, "id")?,
        streamer_id: uuid(value, "streamerId")?,
        game_id: optional(value, "gameId", uuid)?,
        title: text(value, "title")?,
        options,
        closes_at: Timestamp(text(value, "closesAt")?),
        cost_per_vote: count(value, "costPerVote")?,
        prompt_versions,
    })
}

fn result(value: &JsValue) -> Option<EventResult> {
    Some(EventResult {
        option_id: text(value, "optionId")?,
        totals: totals(&get(value, "totals"))?,
    })
}

/// One server message (`{"type", "payload"}`); `None` for a type this client does not know (an
/// additive extension of the contract) or a payload that does not fit.
pub fn message(item: &JsValue) -> Option<ServerMessage> {
    let payload = &get(item, "payload");
    Some(match text(item, "type")?.as_str() {
        "EVENT_CREATED" => ServerMessage::EventCreated(EventCreated {
            event: event(&get(payload, "event"))?,
        }),
        "EVENT_UPDATED" => ServerMessage::EventUpdated(EventUpdated {
            event_id: uuid(payload, "eventId")?,
            totals: totals(&get(payload, "totals"))?,
            closes_at: optional(payload, "closesAt", text)?.map(Timestamp),
            // The seed's own example has no seq; the contract's server always sends one.
            seq: optional(payload, "seq", count)?.unwrap_or(0),
        }),
        "EVENT_CLOSED" => ServerMessage::EventClosed(EventClosed {
            event_id: uuid(payload, "eventId")?,
            result: result(&get(payload, "result"))?,
        }),
        "BALANCE_UPDATED" => ServerMessage::BalanceUpdated(BalanceUpdated {
            balance: integer(&get(payload, "balance"))?,
            user_id: optional(payload, "userId", uuid)?,
        }),
        "SYSTEM_NOTICE" => ServerMessage::SystemNotice(SystemNotice {
            code: text(payload, "code")?,
            message: optional(payload, "message", text)?.unwrap_or_default(),
            channel: optional(payload, "channel", text)?,
            retry_after_ms: optional(payload, "retryAfterMs", count)?,
        }),
        "PING" => ServerMessage::Ping(Ping {
            ts: Timestamp(text(payload, "ts")?),
        }),
        "SUBSCRIBED" => ServerMessage::Subscribed(ChannelList {
            channels: strings(&get(payload, "channels"))?,
        }),
        "UNSUBSCRIBED" => ServerMessage::Unsubscribed(ChannelList {
            channels: strings(&get(payload, "channels"))?,
        }),
        _ => return None,
    })
}

/// `GET /api/events/{id}`'s answer.
pub fn event_view(value: &JsValue) -> Option<EventView> {
    let status = match text(value, "status")?.as_str() {
        "open" => EventStatus::Open,
        "closed" => EventStatus::Closed,
        _ => return None,
    };
    let result_value = get(value, "result");
    let result = if result_value.is_null() || result_value.is_undefined() {
        None
    } else {
        Some(result(&result_value)?)
    };
    Some(EventView {
        event: event(&get(value, "event"))?,
        status,
        totals: totals(&get(value, "totals"))?,
        result,
    })
}

/// `POST /api/events/{id}/votes`'s answer.
pub fn vote_response(value: &JsValue) -> Option<VoteResponse> {
    Some(VoteResponse {
        balance: integer(&get(value, "balance"))?,
        totals: totals(&get(value, "totals"))?,
    })
}
