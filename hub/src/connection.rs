//! One connection's outbox: a bounded must-deliver queue, latest-value slots for EVENT_UPDATED
//! (one per event) and BALANCE_UPDATED (one per user), and the per-event phase that makes a
//! connection reached through two channels see each message once, in order.
//!
//! Ordering rule the writer relies on: [`Connection::drain`] takes the queue first and the
//! slots after it. A slot only ever holds an update strictly newer than anything queued for
//! the same event or user (queueing a newer one empties the slot), and EVENT_CLOSED empties
//! the slot, so draining in that order never sends an older total after a newer one and never
//! an EVENT_UPDATED after EVENT_CLOSED.
//!
//! tidy: long file: the queue, the slots and the phases keep one ordering rule together;
//! split across files, the rule above would have no single place to be checked against.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use livevote_protocol::{Channel, ChannelKind};
use parking_lot::Mutex;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::frames::pack_frames;
use crate::message::{MessageKind, SharedMessage};
use crate::HubCore;

/// A connection's number, unique for the life of a hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// Which channels carry an event: its streamer's and, when it has one, its game's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventRoute {
    /// The event's uuid (`Event::id`), which outboxes key their per-event state by.
    pub event_id: Uuid,
    /// The event's `streamerId`: it travels on `streamer:<uuid>`.
    pub streamer_id: Uuid,
    /// The event's `gameId`: when set, it travels on `game:<uuid>` too.
    pub game_id: Option<Uuid>,
}

impl EventRoute {
    /// The channels that carry the event: `streamer:<uuid>` first, then `game:<uuid>` if any.
    pub fn channels(&self) -> impl Iterator<Item = Channel> {
        std::iter::once(Channel::streamer(self.streamer_id)).chain(self.game_id.map(Channel::game))
    }

    /// Whether a connection holding `channels` still receives this event.
    fn reachable_through(&self, channels: &[Channel]) -> bool {
        channels.iter().any(|channel| match channel.kind {
            ChannelKind::Streamer => channel.id == self.streamer_id,
            ChannelKind::Game => Some(channel.id) == self.game_id,
            ChannelKind::User => false,
        })
    }
}

/// Why and how a connection is to be closed; the socket task carries it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseRequest {
    /// WebSocket close code (see `livevote_protocol::close_codes`).
    pub code: u16,
    /// Short human text for the close frame.
    pub reason: &'static str,
    /// Send what is already pending (e.g. a SERVER_RESTARTING notice) before the close frame.
    pub deliver_pending: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseState {
    Open,
    Requested(CloseRequest),
    /// The socket task has taken the request; nothing new is accepted.
    Taken,
}

/// A latest-value slot: the newest version accepted so far and, if not yet sent, its message.
/// An older or equal version is refused, so nothing stale ever follows something newer.
#[derive(Debug, Default)]
struct LatestValue {
    /// Highest version accepted (queued or slotted); `None` before the first one.
    last_version: Option<u64>,
    pending: Option<SharedMessage>,
}

impl LatestValue {
    /// Accepts `version` if it is newer than every earlier one. Returns whether it was, and
    /// whether an unsent older message had to be dropped.
    fn advance(&mut self, version: u64) -> Option<bool> {
        if self.last_version.is_some_and(|last| version <= last) {
            return None;
        }
        self.last_version = Some(version);
        Some(self.pending.take().is_some())
    }
}

/// What the connection knows about one event it has been told about.
#[derive(Debug)]
pub(crate) struct EventPhase {
    pub(crate) route: EventRoute,
    closed: bool,
    /// EVENT_UPDATED, versioned by the event's seq.
    update: LatestValue,
}

impl EventPhase {
    pub(crate) fn new(route: EventRoute) -> Self {
        EventPhase {
            route,
            closed: false,
            update: LatestValue::default(),
        }
    }

    /// Accepts EVENT_UPDATED `seq` for an event not yet closed if it is newer than every
    /// earlier one; returns whether an unsent older update was dropped.
    pub(crate) fn advance_update(&mut self, seq: u64) -> Option<bool> {
        if self.closed {
            return None;
        }
        self.update.advance(seq)
    }

    /// Marks the event closed; returns whether an unsent update was dropped, or `None` if it
    /// was closed already.
    pub(crate) fn close(&mut self) -> Option<bool> {
        if self.closed {
            return None;
        }
        self.closed = true;
        Some(self.update.pending.take().is_some())
    }
}

/// What the connection knows about one user's balance.
#[derive(Debug)]
struct BalancePhase {
    user_id: Uuid,
    /// BALANCE_UPDATED, versioned by its ledger entry.
    balance: LatestValue,
}

#[derive(Debug)]
pub(crate) struct OutboxState {
    channels: Vec<Channel>,
    queue: VecDeque<SharedMessage>,
    queued_bytes: usize,
    /// Sorted by event id so lookups stay cheap for connections holding many events.
    events: Vec<EventPhase>,
    balances: Vec<BalancePhase>,
    slots_pending: bool,
    close: CloseState,
    /// Set when something became pending since the last drain; at most one wake-up per drain.
    wake_scheduled: bool,
    /// True while a subscription's snapshot is being written: its messages are queued without
    /// counting against the slow-consumer bound, which is about a client that does not keep
    /// up with live traffic, not about how much state a channel has.
    writing_snapshot: bool,
}

/// One connection as the hub sees it: its outbox, its channels and its heartbeat state.
#[derive(Debug)]
pub struct Connection {
    id: ConnectionId,
    core: Arc<HubCore>,
    state: Mutex<OutboxState>,
    wake: Notify,
    /// The ping round in force when the connection registered; rounds up to it never reached it.
    registered_ping_round: u64,
    /// The latest ping round in force when the client last answered `{"action":"pong"}`.
    answered_ping_round: AtomicU64,
}

/// Whether an offer made something pending that the writer has not been woken for yet.
pub(crate) type NeedsWake = bool;

impl Connection {
    pub(crate) fn new(id: ConnectionId, core: Arc<HubCore>, registered_ping_round: u64) -> Self {
        Connection {
            id,
            core,
            state: Mutex::new(OutboxState {
                channels: Vec::new(),
                queue: VecDeque::new(),
                queued_bytes: 0,
                events: Vec::new(),
                balances: Vec::new(),
                slots_pending: false,
                close: CloseState::Open,
                wake_scheduled: false,
                writing_snapshot: false,
            }),
            wake: Notify::new(),
            registered_ping_round,
            answered_ping_round: AtomicU64::new(registered_ping_round),
        }
    }

    /// This connection's number, given by [`Hub::connect`](crate::Hub::connect).
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// The phase of the update interval in which this connection is offered coalesced updates
    /// (see [`crate::FLUSH_PHASES`]). Connection numbers are consecutive, so the phases fill
    /// evenly.
    pub fn flush_phase(&self) -> usize {
        (self.id.0 % crate::FLUSH_PHASES as u64) as usize
    }

    /// Completes when something was added to the outbox (or a close was requested) since the
    /// last wake-up. A wake-up that happened before this is called is not lost.
    pub fn notified(&self) -> Notified<'_> {
        self.wake.notified()
    }

    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, OutboxState> {
        self.state.lock()
    }

    /// Queues a must-deliver message for this connection alone (command replies, notices).
    pub fn send(&self, message: &SharedMessage) {
        let needs_wake = self.state.lock().push_queue(&self.core, message);
        if needs_wake {
            self.wake();
        }
    }

    /// Asks the socket task to close. A later request does not replace an earlier one.
    /// Without `deliver_pending`, everything pending is dropped at once.
    pub fn request_close(&self, request: CloseRequest) {
        let changed = self.state.lock().set_close(request);
        if changed {
            self.wake();
        }
    }

    /// Queues `message` (even past the size bound) and then asks for the close: used for the
    /// restart notice, which must precede the close frame.
    pub fn send_then_close(&self, message: &SharedMessage, request: CloseRequest) {
        let changed = {
            let mut state = self.state.lock();
            if state.close != CloseState::Open {
                false
            } else {
                state.queued_bytes += message.len();
                state.queue.push_back(message.clone());
                state.set_close(request)
            }
        };
        if changed {
            self.wake();
        }
    }

    /// The pending close request, handed out once.
    pub fn take_close_request(&self) -> Option<CloseRequest> {
        let mut state = self.state.lock();
        match state.close {
            CloseState::Requested(request) => {
                state.close = CloseState::Taken;
                Some(request)
            }
            CloseState::Open | CloseState::Taken => None,
        }
    }

    /// Moves everything pending into `frames` (queue first, then the latest-value slots), as
    /// few frames as the size cap allows. Returns how many messages left the outbox.
    pub fn drain(&self, frames: &mut Vec<Bytes>) -> usize {
        let messages = {
            let mut state = self.state.lock();
            state.wake_scheduled = false;
            state.queued_bytes = 0;
            // Taking the queue also frees its buffer, so an idle connection holds none.
            let mut messages = Vec::from(std::mem::take(&mut state.queue));
            if state.slots_pending {
                state.slots_pending = false;
                for event in &mut state.events {
                    messages.extend(event.update.pending.take());
                }
                for balance in &mut state.balances {
                    messages.extend(balance.balance.pending.take());
                }
            }
            messages
        };
        if messages.is_empty() {
            return 0;
        }
        let mut sent_by_kind = [0u64; MessageKind::ALL.len()];
        for message in &messages {
            sent_by_kind[message.kind().index()] += 1;
        }
        self.core.stats.add_sent(&sent_by_kind);
        pack_frames(&messages, self.core.config.max_frame_bytes, frames);
        messages.len()
    }

    /// Records the client's `{"action":"pong"}`.
    pub fn record_pong(&self) {
        let round = self.core.ping_round.load(Ordering::SeqCst);
        self.answered_ping_round.store(round, Ordering::SeqCst);
    }

    /// True when ping `round` reached this connection and no pong came after it.
    pub(crate) fn missed_ping(&self, round: u64) -> bool {
        self.registered_ping_round < round
            && self.answered_ping_round.load(Ordering::SeqCst) < round
    }

    /// The channels this connection holds, in the order it subscribed.
    pub fn channels(&self) -> Vec<Channel> {
        self.state.lock().channels.clone()
    }

    /// How many channels this connection holds (at most the hub's
    /// `max_channels_per_connection`).
    pub fn channel_count(&self) -> usize {
        self.state.lock().channels.len()
    }

    /// Whether this connection holds `channel` now.
    pub fn is_subscribed(&self, channel: &Channel) -> bool {
        self.state.lock().channels.contains(channel)
    }

    /// Bytes waiting in the must-deliver queue (tests and diagnostics).
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().queued_bytes
    }
}

impl OutboxState {
    pub(crate) fn is_open(&self) -> bool {
        self.close == CloseState::Open
    }

    pub(crate) fn channels(&self) -> &[Channel] {
        &self.channels
    }

    pub(crate) fn add_channel(&mut self, channel: Channel) {
        self.channels.push(channel);
    }

    /// Removes `channel` and forgets what only it carried, so that subscribing again sends a
    /// full snapshot. Returns false if the connection did not hold it.
    pub(crate) fn remove_channel(&mut self, channel: &Channel) -> bool {
        let Some(position) = self.channels.iter().position(|held| held == channel) else {
            return false;
        };
        self.channels.remove(position);
        match channel.kind {
            ChannelKind::Streamer | ChannelKind::Game => {
                let channels = &self.channels;
                self.events
                    .retain(|event| event.route.reachable_through(channels));
            }
            ChannelKind::User => self
                .balances
                .retain(|balance| balance.user_id != channel.id),
        }
        true
    }

    pub(crate) fn take_channels(&mut self) -> Vec<Channel> {
        std::mem::take(&mut self.channels)
    }

    /// Marks the outbox closed for good and frees what it holds.
    pub(crate) fn shut(&mut self) {
        self.close = CloseState::Taken;
        self.queue = VecDeque::new();
        self.queued_bytes = 0;
        self.events = Vec::new();
        self.balances = Vec::new();
        self.slots_pending = false;
    }

    fn schedule_wake(&mut self) -> NeedsWake {
        !std::mem::replace(&mut self.wake_scheduled, true)
    }

    fn set_close(&mut self, request: CloseRequest) -> bool {
        if self.close != CloseState::Open {
            return false;
        }
        self.close = CloseState::Requested(request);
        if !request.deliver_pending {
            self.queue = VecDeque::new();
            self.queued_bytes = 0;
            for event in &mut self.events {
                event.update.pending = None;
            }
            for balance in &mut self.balances {
                balance.balance.pending = None;
            }
            self.slots_pending = false;
        }
        true
    }

    /// Starts or ends writing a snapshot (see `writing_snapshot`).
    pub(crate) fn set_writing_snapshot(&mut self, writing: bool) {
        self.writing_snapshot = writing;
    }

    /// Appends a must-deliver message; past the byte bound the connection is closed 4009.
    /// A snapshot's messages do not count against the bound.
    pub(crate) fn push_queue(&mut self, core: &HubCore, message: &SharedMessage) -> NeedsWake {
        if !self.is_open() {
            return false;
        }
        if self.writing_snapshot {
            self.queue.push_back(message.clone());
            return self.schedule_wake();
        }
        self.queued_bytes += message.len();
        if self.queued_bytes > core.config.max_pending_bytes {
            core.stats.queue_overflows.fetch_add(1, Ordering::Relaxed);
            self.set_close(CloseRequest {
                code: livevote_protocol::close_codes::TOO_SLOW,
                reason: "outbound queue over its limit",
                deliver_pending: false,
            });
            // Wake the writer even if a wake-up is already scheduled: it must see the close.
            self.wake_scheduled = true;
            return true;
        }
        self.queue.push_back(message.clone());
        self.schedule_wake()
    }

    fn event_position(&self, event_id: Uuid) -> Result<usize, usize> {
        self.events
            .binary_search_by_key(&event_id, |event| event.route.event_id)
    }

    /// The phase of an event this connection was told about.
    pub(crate) fn event_phase_mut(&mut self, event_id: Uuid) -> Option<&mut EventPhase> {
        let position = self.event_position(event_id).ok()?;
        Some(&mut self.events[position])
    }

    /// Adds phases that are not held yet, in one sort: what a snapshot staged.
    pub(crate) fn merge_event_phases(&mut self, phases: Vec<EventPhase>) {
        if phases.is_empty() {
            return;
        }
        self.events.extend(phases);
        self.events
            .sort_unstable_by_key(|event| event.route.event_id);
    }

    /// EVENT_CREATED, once per event whichever channel brings it.
    pub(crate) fn offer_event_created(
        &mut self,
        core: &HubCore,
        route: EventRoute,
        message: &SharedMessage,
    ) -> NeedsWake {
        if !self.is_open() {
            return false;
        }
        match self.event_position(route.event_id) {
            Ok(_) => false,
            Err(position) => {
                self.events.insert(
                    position,
                    EventPhase {
                        route,
                        closed: false,
                        update: LatestValue::default(),
                    },
                );
                self.push_queue(core, message)
            }
        }
    }

    /// EVENT_UPDATED into the event's latest-value slot (live updates).
    pub(crate) fn offer_event_update(
        &mut self,
        core: &HubCore,
        event_id: Uuid,
        seq: u64,
        message: &SharedMessage,
    ) -> NeedsWake {
        let Some((position, dropped_older)) = self.advance_event(event_id, seq) else {
            return false;
        };
        self.events[position].update.pending = Some(message.clone());
        self.slot_filled(core, MessageKind::EventUpdated, dropped_older)
    }

    /// For an event this open connection was told about and has not seen closed: accepts `seq`
    /// if it is newer. Returns the event's position and whether an older update was dropped.
    fn advance_event(&mut self, event_id: Uuid, seq: u64) -> Option<(usize, bool)> {
        if !self.is_open() {
            return None;
        }
        let position = self.event_position(event_id).ok()?;
        let event = &mut self.events[position];
        if event.closed {
            return None;
        }
        let dropped_older = event.update.advance(seq)?;
        Some((position, dropped_older))
    }

    /// EVENT_CLOSED: queued, ends the event for this connection and drops its pending update.
    pub(crate) fn offer_event_closed(
        &mut self,
        core: &HubCore,
        event_id: Uuid,
        message: &SharedMessage,
    ) -> NeedsWake {
        if !self.is_open() {
            return false;
        }
        let Ok(position) = self.event_position(event_id) else {
            // Never told about its creation: telling about its end would break the order.
            return false;
        };
        let event = &mut self.events[position];
        if event.closed {
            return false;
        }
        event.closed = true;
        let dropped_update = event.update.pending.take().is_some();
        self.queue_superseding(core, MessageKind::EventUpdated, dropped_update, message)
    }

    /// A latest-value slot now holds a message: count the one it replaced, wake the writer.
    fn slot_filled(&mut self, core: &HubCore, kind: MessageKind, replaced: bool) -> NeedsWake {
        if replaced {
            core.stats.add_dropped(kind);
        }
        self.slots_pending = true;
        self.schedule_wake()
    }

    /// Queues a message that makes an unsent slot message of `kind` obsolete (counted dropped).
    pub(crate) fn queue_superseding(
        &mut self,
        core: &HubCore,
        kind: MessageKind,
        dropped: bool,
        message: &SharedMessage,
    ) -> NeedsWake {
        if dropped {
            core.stats.add_dropped(kind);
        }
        self.push_queue(core, message)
    }

    pub(crate) fn forget_event(&mut self, event_id: Uuid) {
        if let Ok(position) = self.event_position(event_id) {
            self.events.remove(position);
        }
        if self.events.is_empty() {
            self.events = Vec::new();
        }
    }

    fn balance_phase(&mut self, user_id: Uuid) -> &mut BalancePhase {
        let position = match self
            .balances
            .iter()
            .position(|balance| balance.user_id == user_id)
        {
            Some(position) => position,
            None => {
                self.balances.push(BalancePhase {
                    user_id,
                    balance: LatestValue::default(),
                });
                self.balances.len() - 1
            }
        };
        &mut self.balances[position]
    }

    /// BALANCE_UPDATED into the user's latest-value slot; `version` orders a user's balances.
    pub(crate) fn offer_balance(
        &mut self,
        core: &HubCore,
        user_id: Uuid,
        version: u64,
        message: &SharedMessage,
    ) -> NeedsWake {
        if !self.is_open() {
            return false;
        }
        let slot = &mut self.balance_phase(user_id).balance;
        let Some(dropped_older) = slot.advance(version) else {
            return false;
        };
        slot.pending = Some(message.clone());
        self.slot_filled(core, MessageKind::BalanceUpdated, dropped_older)
    }

    /// BALANCE_UPDATED in order in the queue (snapshots).
    pub(crate) fn queue_balance(
        &mut self,
        core: &HubCore,
        user_id: Uuid,
        version: u64,
        message: &SharedMessage,
    ) -> NeedsWake {
        if !self.is_open() {
            return false;
        }
        let Some(dropped_older) = self.balance_phase(user_id).balance.advance(version) else {
            return false;
        };
        self.queue_superseding(core, MessageKind::BalanceUpdated, dropped_older, message)
    }
}
