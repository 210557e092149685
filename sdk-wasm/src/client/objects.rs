//! The JavaScript objects the page receives: the frozen snapshot, the status, each event's
//! state, and the listener calls built from what changed. Kept between changes so that an
//! unchanged part keeps its identity (`useSyncExternalStore` and `===` checks rely on it).

use js_sys::{Array, Object};
use uuid::Uuid;
use wasm_bindgen::JsValue;

use super::channels::Channels;
use super::host::Host;
use crate::js::set;
use crate::state::Store;
use crate::view;

/// What the page can listen to, numbered as `TOPICS` in npm/src/core.js.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Event = 0,
    Remove = 1,
    Balance = 2,
    Notice = 3,
    Status = 4,
    /// The store: called with the new snapshot whenever it changed.
    Store = 5,
}

/// Changes recorded while the state is borrowed, delivered to listeners after it is released.
#[derive(Default)]
pub struct Outbox {
    pub events: Vec<Uuid>,
    pub removed: Vec<Uuid>,
    pub balance: bool,
    pub notices: Vec<JsValue>,
    pub status: bool,
    /// Something in the snapshot changed (channels, staleness...) besides the above.
    pub snapshot: bool,
}

impl Outbox {
    pub fn event(&mut self, id: Uuid) {
        if !self.events.contains(&id) {
            self.events.push(id);
        }
    }

    fn touches_snapshot(&self) -> bool {
        !self.events.is_empty()
            || !self.removed.is_empty()
            || self.balance
            || self.status
            || self.snapshot
    }
}

/// The connection's status as `ConnectionStatus` shows it.
pub struct Status<'a> {
    pub state: &'static str,
    pub attempt: u32,
    /// While a reconnect timer runs: when it fires.
    pub retry_at: Option<f64>,
    pub close_code: Option<u16>,
    pub error: &'a JsValue,
}

/// Everything a snapshot is built from, borrowed from the connection.
pub struct Shown<'a> {
    pub host: &'a Host,
    pub store: &'a Store,
    pub status: Status<'a>,
    pub stale: bool,
    pub channels: &'a Channels,
}

/// The objects handed out, until what they show changes.
#[derive(Default)]
pub struct Objects {
    events: Vec<(Uuid, JsValue)>,
    snapshot: Option<JsValue>,
    status: Option<JsValue>,
}

impl Objects {
    /// One event's frozen state; `None` for an unknown id.
    pub fn event(&mut self, host: &Host, store: &Store, id: Uuid) -> Option<JsValue> {
        if let Some((_, object)) = self.events.iter().find(|(known, _)| *known == id) {
            return Some(object.clone());
        }
        let object = view::event_state(store.get(id)?);
        host.freeze(&object);
        self.events.push((id, object.clone()));
        Some(object)
    }

    fn status(&mut self, status: &Status) -> JsValue {
        if let Some(object) = &self.status {
            return object.clone();
        }
        let object = Object::new();
        set(&object, "state", &status.state.into());
        set(&object, "attempt", &status.attempt.into());
        set(
            &object,
            "retryAt",
            &status.retry_at.map_or(JsValue::NULL, JsValue::from_f64),
        );
        set(
            &object,
            "closeCode",
            &status.close_code.map_or(JsValue::NULL, JsValue::from),
        );
        set(&object, "error", status.error);
        // Shallow: the error stays the page's to use.
        Object::freeze(&object);
        let object: JsValue = object.into();
        self.status = Some(object.clone());
        object
    }

    /// The immutable snapshot: the same object until something changes.
    pub fn snapshot(&mut self, shown: &Shown) -> JsValue {
        if let Some(snapshot) = &self.snapshot {
            return snapshot.clone();
        }
        let object = Object::new();
        set(&object, "status", &self.status(&shown.status));
        set(&object, "stale", &shown.stale.into());
        let events = Array::new();
        for state in shown.store.events() {
            if let Some(event) = self.event(shown.host, shown.store, state.event.id) {
                events.push(&event);
            }
        }
        Object::freeze(&events);
        set(&object, "events", &events);
        set(&object, "balance", &balance_value(shown.store));
        let channels = Object::new();
        for (name, state) in shown.channels.iter() {
            set(&channels, name, &state.name().into());
        }
        Object::freeze(&channels);
        set(&object, "channels", &channels);
        Object::freeze(&object);
        let object: JsValue = object.into();
        self.snapshot = Some(object.clone());
        object
    }

    /// Turns the outbox into listener calls (`[topic, argument, ...]`), refreshing the objects
    /// they receive; `None` when nothing changed.
    pub fn calls(&mut self, outbox: Outbox, shown: &Shown) -> Option<Array> {
        let touched = outbox.touches_snapshot();
        if !touched && outbox.notices.is_empty() {
            return None;
        }
        if touched {
            self.snapshot = None;
        }
        if outbox.status {
            self.status = None;
        }
        self.events
            .retain(|(id, _)| !outbox.events.contains(id) && !outbox.removed.contains(id));
        let calls = Array::new();
        let push = |topic: Topic, argument: &JsValue| {
            calls.push(&JsValue::from(topic as u32));
            calls.push(argument);
        };
        for id in &outbox.events {
            if let Some(object) = self.event(shown.host, shown.store, *id) {
                push(Topic::Event, &object);
            }
        }
        for id in &outbox.removed {
            push(Topic::Remove, &view::uuid_text(id));
        }
        if outbox.balance {
            push(Topic::Balance, &balance_value(shown.store));
        }
        for notice in &outbox.notices {
            push(Topic::Notice, notice);
        }
        if outbox.status {
            push(Topic::Status, &self.status(&shown.status));
        }
        if touched {
            push(Topic::Store, &self.snapshot(shown));
        }
        Some(calls)
    }
}

fn balance_value(store: &Store) -> JsValue {
    store
        .balance()
        .map_or(JsValue::NULL, |balance| JsValue::from_f64(balance as f64))
}

#[cfg(test)]
mod tests {
    use super::Topic;

    #[test]
    fn topics_are_numbered_as_core_js_lists_them() {
        let core_js = include_str!("../../../npm/src/core.js");
        let list = core_js
            .lines()
            .find_map(|line| line.strip_prefix("const TOPICS = ["))
            .expect("npm/src/core.js lists TOPICS");
        let names: Vec<&str> = list
            .trim_end_matches("];")
            .split(", ")
            .map(|name| name.trim_matches('"'))
            .collect();
        let topics = [
            ("event", Topic::Event),
            ("remove", Topic::Remove),
            ("balance", Topic::Balance),
            ("notice", Topic::Notice),
            ("status", Topic::Status),
            ("store", Topic::Store),
        ];
        assert_eq!(names.len(), topics.len());
        for (name, topic) in topics {
            assert_eq!(names[topic as usize], name);
        }
        // core.js's NOTICE and STATUS pick those topics out of a batch for debug logging.
        assert!(core_js.contains(&format!("const NOTICE = {};", Topic::Notice as u32)));
        assert!(core_js.contains(&format!("const STATUS = {};", Topic::Status as u32)));
    }
}
