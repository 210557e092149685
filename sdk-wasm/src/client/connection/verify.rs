//! Events missing from a fresh snapshot: open before a reconnect, absent after it, so they
//! closed or vanished meanwhile; their final state is fetched with `GET /api/events/{id}`.

use uuid::Uuid;
use wasm_bindgen::JsValue;

use super::Connection;
use crate::client::host::now;
use crate::decode;
use crate::policy;
use crate::state::Change;

/// Tries to learn an event's final state over HTTP before waiting for the next reconnect.
const MAX_VERIFY_ATTEMPTS: u32 = 5;

/// An event whose final state is to be fetched over HTTP.
pub(super) struct Unverified {
    pub(super) id: Uuid,
    pub(super) attempts: u32,
    pub(super) next_at: f64,
    pub(super) in_flight: bool,
}

impl Connection {
    /// Fetches the final state of events that were open before a reconnect and are missing
    /// from the fresh snapshot. Driven by the tick, so it stops with the connection.
    pub(super) fn verify_missing_events(&mut self) {
        let at = now();
        for entry in &mut self.unverified {
            if entry.in_flight || entry.next_at > at {
                continue;
            }
            entry.in_flight = true;
            entry.attempts += 1;
            self.host.fetch_event(
                entry
                    .id
                    .hyphenated()
                    .encode_lower(&mut Uuid::encode_buffer()),
                self.token.as_deref(),
            );
        }
    }

    /// `GET /api/events/{id}` answered `status` (0: no answer) with `body`.
    pub(super) fn on_verified(&mut self, id: Uuid, status: u16, body: JsValue) {
        let Some(position) = self.unverified.iter().position(|entry| entry.id == id) else {
            return;
        };
        let view = if (200..300).contains(&status) {
            decode::event_view(&body)
        } else {
            None
        };
        let Some(entry) = self.unverified.get_mut(position) else {
            return;
        };
        entry.in_flight = false;
        if let Some(view) = view {
            self.unverified.remove(position);
            if let Change::Event(id) = self.store.merge_view(view) {
                self.outbox.event(id);
            }
        } else if status == 404 {
            self.unverified.remove(position);
            if self.store.remove(id) {
                self.outbox.removed.push(id);
            }
        } else if entry.attempts >= MAX_VERIFY_ATTEMPTS {
            // Give up until the next reconnect lists it again; the state stays marked stale.
            self.unverified.remove(position);
        } else {
            entry.next_at = now() + policy::backoff_ms(entry.attempts, 1.0);
            if status == 401 {
                self.request_token();
            }
        }
    }
}
