//! A subscription's snapshot: the channel's current state written into one connection's
//! outbox under the channel's lock, so that nothing published meanwhile is lost or overtaken.
//!
//! Two things make a snapshot of a busy channel safe. Its messages do not count against the
//! slow-consumer bound (a channel with much state must not close every subscriber 4009), and
//! the events it tells about are staged and merged into the connection's sorted event list in
//! one sort when it ends, so a snapshot of n events costs O(n log n) rather than n insertions
//! into a sorted vector.

use std::collections::HashMap;

use uuid::Uuid;

use crate::connection::{EventPhase, EventRoute, NeedsWake, OutboxState};
use crate::message::{MessageKind, SharedMessage};
use crate::HubCore;

/// What a subscription's snapshot is written into; see the module documentation.
#[derive(Debug)]
pub struct Snapshot<'a> {
    state: &'a mut OutboxState,
    core: &'a HubCore,
    needs_wake: NeedsWake,
    /// Events this snapshot told about that the connection did not hold before, in the order
    /// they came, and where each one is in that list.
    staged: Vec<EventPhase>,
    staged_positions: HashMap<Uuid, usize>,
}

impl<'a> Snapshot<'a> {
    pub(crate) fn new(state: &'a mut OutboxState, core: &'a HubCore) -> Self {
        state.set_writing_snapshot(true);
        Snapshot {
            state,
            core,
            needs_wake: false,
            staged: Vec::new(),
            staged_positions: HashMap::new(),
        }
    }

    /// Ends the snapshot; returns whether the connection's writer must be woken.
    pub(crate) fn finish(self) -> NeedsWake {
        // Drop does the merge, so a snapshot that unwinds leaves the outbox consistent too.
        self.needs_wake
    }

    fn phase(&mut self, event_id: Uuid) -> Option<&mut EventPhase> {
        match self.staged_positions.get(&event_id) {
            Some(&position) => Some(&mut self.staged[position]),
            None => self.state.event_phase_mut(event_id),
        }
    }

    /// EVENT_CREATED, once per event whichever channel brings it.
    pub fn event_created(&mut self, route: EventRoute, message: &SharedMessage) {
        if !self.state.is_open() || self.phase(route.event_id).is_some() {
            return;
        }
        self.staged_positions
            .insert(route.event_id, self.staged.len());
        self.staged.push(EventPhase::new(route));
        self.needs_wake |= self.state.push_queue(self.core, message);
    }

    /// The event's current totals; skipped if the connection already has these or newer.
    pub fn event_updated(&mut self, event_id: Uuid, seq: u64, message: &SharedMessage) {
        if !self.state.is_open() {
            return;
        }
        let Some(dropped_older) = self
            .phase(event_id)
            .and_then(|phase| phase.advance_update(seq))
        else {
            return;
        };
        self.needs_wake |= self.state.queue_superseding(
            self.core,
            MessageKind::EventUpdated,
            dropped_older,
            message,
        );
    }

    /// EVENT_CLOSED for an event this snapshot (or an earlier one) told about.
    pub fn event_closed(&mut self, event_id: Uuid, message: &SharedMessage) {
        if !self.state.is_open() {
            return;
        }
        let Some(dropped_update) = self.phase(event_id).and_then(EventPhase::close) else {
            return;
        };
        self.needs_wake |= self.state.queue_superseding(
            self.core,
            MessageKind::EventUpdated,
            dropped_update,
            message,
        );
    }

    /// A user's balance; skipped if the connection already has this version or a newer one.
    pub fn balance(&mut self, user_id: Uuid, version: u64, message: &SharedMessage) {
        self.needs_wake |= self
            .state
            .queue_balance(self.core, user_id, version, message);
    }

    /// Any other must-deliver message, in order.
    pub fn message(&mut self, message: &SharedMessage) {
        self.needs_wake |= self.state.push_queue(self.core, message);
    }
}

impl Drop for Snapshot<'_> {
    fn drop(&mut self) {
        self.state
            .merge_event_phases(std::mem::take(&mut self.staged));
        self.state.set_writing_snapshot(false);
    }
}
