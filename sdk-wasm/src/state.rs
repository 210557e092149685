//! The merged state a page shows: every known event with its totals and result, and the
//! balance. Pure merge rules (no JavaScript, no clock) so that they are tested against the
//! protocol's golden fixtures.
//!
//! Rules, per event: EVENT_CREATED starts it; EVENT_UPDATED applies only when its `seq` is newer
//! than the last one applied and never after EVENT_CLOSED; EVENT_CLOSED is terminal.

use livevote_protocol::{
    Event, EventResult, EventStatus, EventView, ServerMessage, Timestamp, Totals,
};
use uuid::Uuid;

/// Closed events kept once they are done; the oldest go first so a page left open for days does
/// not grow without bound.
pub const MAX_CLOSED_EVENTS: usize = 100;

/// One event as the page should show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventState {
    /// The definition from EVENT_CREATED (title, options, cost...).
    pub event: Event,
    /// The current closing time: EVENT_UPDATED may move it.
    pub closes_at: Timestamp,
    /// Votes per option; every option of the event is present, zero until voted for.
    pub totals: Totals,
    /// `seq` of the last EVENT_UPDATED applied; `None` until one was.
    pub seq: Option<u64>,
    pub closed: bool,
    pub result: Option<EventResult>,
    /// True while the connection that fed this state is gone and a fresh one has not yet
    /// confirmed it.
    pub stale: bool,
}

impl EventState {
    fn new(event: Event) -> Self {
        EventState {
            closes_at: event.closes_at.clone(),
            totals: zero_totals(&event),
            event,
            seq: None,
            closed: false,
            result: None,
            stale: false,
        }
    }

    fn set_totals(&mut self, totals: &Totals) {
        let mut merged = zero_totals(&self.event);
        merged.extend(
            totals
                .iter()
                .map(|(option, votes)| (option.clone(), *votes)),
        );
        self.totals = merged;
    }

    fn close(&mut self, result: EventResult) {
        self.set_totals(&result.totals);
        self.result = Some(result);
        self.closed = true;
        self.stale = false;
    }

    /// The channels that carry this event: its streamer's and, when it has one, its game's.
    pub fn is_carried_by(&self, channel: &str) -> bool {
        let Some((kind, id)) = channel.split_once(':') else {
            return false;
        };
        let Ok(id) = Uuid::try_parse(id) else {
            return false;
        };
        match kind {
            "streamer" => id == self.event.streamer_id,
            "game" => Some(id) == self.event.game_id,
            _ => false,
        }
    }
}

fn zero_totals(event: &Event) -> Totals {
    // Inserted one by one: collecting into a BTreeMap sorts first, which links a sort.
    let mut totals = Totals::new();
    for option in &event.options {
        totals.insert(option.id.clone(), 0);
    }
    totals
}

/// What one message changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Nothing,
    Event(Uuid),
    Balance,
}

/// What replacing the old state by a fresh snapshot did (see [`Store::adopt`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Adoption {
    /// Events whose state differs from before (including every event of the fresh snapshot).
    pub changed: Vec<Uuid>,
    /// Events no longer carried by any channel the client holds.
    pub removed: Vec<Uuid>,
    /// Events that were open, are missing from the fresh snapshot and so closed or vanished
    /// meanwhile: their final state must be fetched with `GET /api/events/{id}`.
    pub to_verify: Vec<Uuid>,
}

/// Events in the order they first arrived, and the balance.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Store {
    events: Vec<EventState>,
    balance: Option<i64>,
}

impl Store {
    pub fn events(&self) -> &[EventState] {
        &self.events
    }

    pub fn get(&self, id: Uuid) -> Option<&EventState> {
        self.events.iter().find(|state| state.event.id == id)
    }

    fn get_mut(&mut self, id: Uuid) -> Option<&mut EventState> {
        self.events.iter_mut().find(|state| state.event.id == id)
    }

    pub fn balance(&self) -> Option<i64> {
        self.balance
    }

    /// Records a balance learned elsewhere (a vote's answer); true when it changed.
    pub fn set_balance(&mut self, balance: i64) -> bool {
        let changed = self.balance != Some(balance);
        self.balance = Some(balance);
        changed
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.balance.is_none()
    }

    /// Merges one server message.
    pub fn apply(&mut self, message: &ServerMessage) -> Change {
        self.merge(message.clone())
    }

    /// [`Store::apply`] for a message the caller no longer needs: nothing is cloned. The client
    /// uses this one, so that no clone of an event or its totals is linked into the wasm.
    pub fn merge(&mut self, message: ServerMessage) -> Change {
        match message {
            ServerMessage::EventCreated(created) => {
                let event = created.event;
                let id = event.id;
                match self.get_mut(id) {
                    None => {
                        self.events.push(EventState::new(event));
                        Change::Event(id)
                    }
                    // A second EVENT_CREATED (a snapshot after a live message, or the same event
                    // through two channels) may only refresh the definition; totals and seq stay.
                    Some(state) if !state.closed && state.event != event => {
                        state.event = event;
                        // An option the refreshed definition adds starts at zero, like every
                        // option of a new event: a page must find a total for each one.
                        let totals = std::mem::take(&mut state.totals);
                        state.set_totals(&totals);
                        Change::Event(id)
                    }
                    Some(_) => Change::Nothing,
                }
            }
            ServerMessage::EventUpdated(update) => {
                let Some(state) = self.get_mut(update.event_id) else {
                    // An update for an event never announced cannot be shown (no title, no
                    // options); the contract sends EVENT_CREATED first, so this is a stray.
                    return Change::Nothing;
                };
                if state.closed || state.seq.is_some_and(|seq| update.seq <= seq) {
                    return Change::Nothing;
                }
                state.seq = Some(update.seq);
                state.set_totals(&update.totals);
                if let Some(closes_at) = update.closes_at {
                    state.closes_at = closes_at;
                }
                Change::Event(update.event_id)
            }
            ServerMessage::EventClosed(closed) => match self.get_mut(closed.event_id) {
                Some(state) if !state.closed => {
                    state.close(closed.result);
                    Change::Event(closed.event_id)
                }
                _ => Change::Nothing,
            },
            ServerMessage::BalanceUpdated(update) => {
                if self.set_balance(update.balance) {
                    Change::Balance
                } else {
                    Change::Nothing
                }
            }
            _ => Change::Nothing,
        }
    }

    /// Marks every open event stale (the connection that fed them is gone); returns those changed.
    pub fn mark_stale(&mut self) -> Vec<Uuid> {
        self.events
            .iter_mut()
            .filter(|state| !state.closed && !state.stale)
            .map(|state| {
                state.stale = true;
                state.event.id
            })
            .collect()
    }

    /// Replaces this (stale) state by `fresh`, the snapshot a new connection built aside.
    /// `carried(state)` tells whether a channel the client still holds carries an event.
    ///
    /// Fresh states win, except that an event closed here stays closed (closing is terminal).
    /// An event missing from the fresh snapshot is dropped when nothing carries it any more,
    /// kept when it was closed, and kept stale and listed in `to_verify` when it was open: it
    /// closed while the client was away and left the server's recent-closed window, or vanished.
    pub fn adopt(&mut self, fresh: Store, carried: impl Fn(&EventState) -> bool) -> Adoption {
        let mut adoption = Adoption::default();
        let mut fresh_events = fresh.events;
        let mut merged = Vec::with_capacity(self.events.len().max(fresh_events.len()));
        for old in self.events.drain(..) {
            let id = old.event.id;
            if let Some(position) = fresh_events.iter().position(|state| state.event.id == id) {
                let new = fresh_events.remove(position);
                if old.closed {
                    merged.push(old);
                } else {
                    if new != old {
                        adoption.changed.push(id);
                    }
                    merged.push(new);
                }
            } else if !carried(&old) {
                adoption.removed.push(id);
            } else if old.closed {
                merged.push(old);
            } else {
                adoption.to_verify.push(id);
                merged.push(old);
            }
        }
        for new in fresh_events {
            adoption.changed.push(new.event.id);
            merged.push(new);
        }
        self.events = merged;
        if fresh.balance.is_some() {
            self.balance = fresh.balance;
        }
        adoption
    }

    /// Applies `GET /api/events/{id}`'s answer to an event whose fresh state was missing.
    /// A closed answer always applies (terminal); an open one only refreshes a still-stale state.
    pub fn apply_view(&mut self, view: &EventView) -> Change {
        self.merge_view(view.clone())
    }

    /// [`Store::apply_view`] for an answer the caller no longer needs: nothing is cloned.
    pub fn merge_view(&mut self, view: EventView) -> Change {
        let id = view.event.id;
        let Some(state) = self.get_mut(id) else {
            return Change::Nothing;
        };
        if state.closed {
            return Change::Nothing;
        }
        match (view.status, view.result) {
            (EventStatus::Closed, Some(result)) => state.close(result),
            (EventStatus::Closed, None) => {
                // A closed event without a result should not exist; its totals are still final.
                state.set_totals(&view.totals);
                state.closed = true;
                state.stale = false;
            }
            (EventStatus::Open, _) if state.stale => {
                state.closes_at = view.event.closes_at.clone();
                state.event = view.event;
                state.set_totals(&view.totals);
                state.stale = false;
            }
            _ => return Change::Nothing,
        }
        Change::Event(id)
    }

    /// Forgets one event (it no longer exists on the server); true when it was known.
    pub fn remove(&mut self, id: Uuid) -> bool {
        let before = self.events.len();
        self.events.retain(|state| state.event.id != id);
        self.events.len() != before
    }

    /// Forgets every event no channel carries any more; returns their ids.
    pub fn retain_carried(&mut self, carried: impl Fn(&EventState) -> bool) -> Vec<Uuid> {
        let mut removed = Vec::new();
        self.events.retain(|state| {
            let keep = carried(state);
            if !keep {
                removed.push(state.event.id);
            }
            keep
        });
        removed
    }

    /// Drops the oldest closed events past [`MAX_CLOSED_EVENTS`]; returns their ids.
    pub fn prune_closed(&mut self) -> Vec<Uuid> {
        let closed = self.events.iter().filter(|state| state.closed).count();
        let mut excess = closed.saturating_sub(MAX_CLOSED_EVENTS);
        let mut removed = Vec::new();
        self.events.retain(|state| {
            if excess > 0 && state.closed {
                excess -= 1;
                removed.push(state.event.id);
                false
            } else {
                true
            }
        });
        removed
    }
}
