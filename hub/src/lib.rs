//! livevote's in-memory fan-out, independent of any web framework: the channel registry, one
//! outbox per connection (a bounded must-deliver queue plus latest-value slots), snapshot
//! registration that loses nothing published concurrently, and frame packing.
//!
//! Locking, in the only order ever taken: a channel's subscriber lock, then a connection's
//! outbox lock. Shard maps are only held for lookups (or, when a channel empties, while the
//! channel's lock is held: the shard lock is then innermost and nobody waits on a channel lock
//! while holding a shard lock). Callers must not hold their own locks that publishers take
//! around [`Hub::subscribe`]'s snapshot closure, except for reading.

#![warn(missing_docs)]

mod connection;
mod frames;
mod message;
mod snapshot;
mod stats;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use livevote_protocol::Channel;
use parking_lot::Mutex;
use tokio::sync::Notify;
use uuid::Uuid;

pub use connection::{CloseRequest, Connection, ConnectionId, EventRoute};
use connection::{NeedsWake, OutboxState};
pub use frames::pack_frames;
pub use message::{MessageKind, SharedMessage};
pub use snapshot::Snapshot;
pub use stats::HubStats;

/// How many phases an update interval is cut into for coalesced EVENT_UPDATED. Each
/// connection belongs to one phase ([`Connection::flush_phase`]) and is offered coalesced
/// updates only when its phase comes round, once per interval. Spreading the connections over
/// the interval turns one burst of frames to every watching socket into many small ones, so
/// the sockets written last in a burst are not held up by all the others: on a busy node that
/// burst, not the interval, made the slow end of the latency (bench/ANALYSIS.md, W2).
pub const FLUSH_PHASES: usize = 25;
// A subscriber's phase is kept in a byte.
const _: () = assert!(FLUSH_PHASES >= 1 && FLUSH_PHASES <= u8::MAX as usize + 1);

/// Bounds of the hub; the defaults are the contract's.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Must-deliver bytes a connection may have pending before it is closed 4009.
    pub max_pending_bytes: usize,
    /// Largest batched frame; one bigger message still goes out alone.
    pub max_frame_bytes: usize,
    /// Channels one connection may hold.
    pub max_channels_per_connection: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_pending_bytes: 1024 * 1024,
            max_frame_bytes: 64 * 1024,
            max_channels_per_connection: livevote_protocol::MAX_CHANNELS_PER_SOCKET,
        }
    }
}

/// What every connection shares with the hub.
#[derive(Debug)]
pub(crate) struct HubCore {
    config: HubConfig,
    stats: HubStats,
    /// Incremented by each heartbeat round; see [`Hub::start_ping_round`].
    ping_round: AtomicU64,
}

/// The result of [`Hub::subscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeOutcome {
    /// Joined: the snapshot is in the outbox and everything published from now on follows it.
    Subscribed,
    /// Already held: nothing was sent again.
    AlreadySubscribed,
    /// The connection holds the maximum number of channels.
    LimitReached,
    /// The connection is closing.
    Closed,
}

/// A subscriber and its flush phase, kept side by side so a phase's flush can skip the other
/// phases' connections without touching them.
#[derive(Debug)]
struct Subscriber {
    flush_phase: u8,
    connection: Arc<Connection>,
}

#[derive(Debug, Default)]
struct Subscribers {
    list: Vec<Subscriber>,
    positions: HashMap<ConnectionId, usize>,
    /// Set when the channel emptied and left its shard map; a subscriber that still holds it
    /// looks the channel up again.
    retired: bool,
}

impl Subscribers {
    fn insert(&mut self, connection: Arc<Connection>) {
        self.positions.insert(connection.id(), self.list.len());
        self.list.push(Subscriber {
            flush_phase: connection.flush_phase() as u8,
            connection,
        });
    }

    fn remove(&mut self, id: ConnectionId) -> bool {
        let Some(position) = self.positions.remove(&id) else {
            return false;
        };
        self.list.swap_remove(position);
        if let Some(moved) = self.list.get(position) {
            self.positions.insert(moved.connection.id(), position);
        }
        true
    }
}

#[derive(Debug, Default)]
struct ChannelEntry {
    subscribers: Mutex<Subscribers>,
}

/// Connections whose writers must be woken once the current batch of deliveries is done;
/// waking after the batch lets one frame carry everything a connection got in it.
#[derive(Debug, Default)]
pub struct WakeList {
    connections: Vec<Arc<Connection>>,
}

impl WakeList {
    /// An empty list; fill it through [`Hub::deliver_event_update`], then call
    /// [`WakeList::wake_all`].
    pub fn new() -> Self {
        WakeList::default()
    }

    fn push(&mut self, connection: &Arc<Connection>, needs_wake: NeedsWake) {
        if needs_wake {
            self.connections.push(connection.clone());
        }
    }

    /// Connections listed to be woken (what the server hands to
    /// [`Hub::record_coalesced_wakes`] after a flush phase).
    pub fn len(&self) -> usize {
        self.connections.len()
    }

    /// True when no delivery of the batch left anything new for a connection's writer.
    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }

    /// Wakes every listed connection's writer and empties the list for the next batch.
    pub fn wake_all(&mut self) {
        for connection in self.connections.drain(..) {
            connection.wake();
        }
    }
}

/// One coalesced EVENT_UPDATED for a tick.
#[derive(Debug, Clone)]
pub struct EventUpdate {
    /// The event and the channels that carry it.
    pub route: EventRoute,
    /// The event's `seq` in `message`; an outbox takes the update only if it is newer than
    /// every update of the event it has accepted, so totals never go backwards.
    pub seq: u64,
    /// The EVENT_UPDATED itself, encoded once for every subscriber.
    pub message: SharedMessage,
}

/// One shard of the channel registry.
type ChannelShard = Mutex<HashMap<Channel, Arc<ChannelEntry>>>;
/// One shard of the node's connections.
type ConnectionShard = Mutex<HashMap<ConnectionId, Arc<Connection>>>;

const CHANNEL_SHARDS: usize = 64;
const CONNECTION_SHARDS: usize = 32;

/// The channel registry and every connection of one node.
#[derive(Debug)]
pub struct Hub {
    core: Arc<HubCore>,
    channel_shards: Box<[ChannelShard]>,
    connection_shards: Box<[ConnectionShard]>,
    next_connection_id: AtomicU64,
    connection_count: AtomicUsize,
    subscription_count: AtomicUsize,
    disconnected: Notify,
}

impl Hub {
    /// An empty hub: no channel, no connection, and the first heartbeat round not started.
    pub fn new(config: HubConfig) -> Self {
        Hub {
            core: Arc::new(HubCore {
                config,
                stats: HubStats::default(),
                ping_round: AtomicU64::new(0),
            }),
            channel_shards: (0..CHANNEL_SHARDS).map(|_| Mutex::default()).collect(),
            connection_shards: (0..CONNECTION_SHARDS).map(|_| Mutex::default()).collect(),
            next_connection_id: AtomicU64::new(1),
            connection_count: AtomicUsize::new(0),
            subscription_count: AtomicUsize::new(0),
            disconnected: Notify::new(),
        }
    }

    /// The bounds this hub was built with.
    pub fn config(&self) -> &HubConfig {
        &self.core.config
    }

    /// The hub's counters, growing for the life of the hub; the server exports them as
    /// metrics.
    pub fn stats(&self) -> &HubStats {
        &self.core.stats
    }

    /// Connections registered by [`Hub::connect`] and not yet removed by
    /// [`Hub::disconnect`].
    pub fn connection_count(&self) -> usize {
        self.connection_count.load(Ordering::Relaxed)
    }

    /// Channel subscriptions held by all connections together.
    pub fn subscription_count(&self) -> usize {
        self.subscription_count.load(Ordering::Relaxed)
    }

    fn channel_shard(&self, channel: &Channel) -> &ChannelShard {
        let (_, low) = channel.id.as_u64_pair();
        &self.channel_shards[(low as usize ^ channel.kind as usize) % CHANNEL_SHARDS]
    }

    fn connection_shard(&self, id: ConnectionId) -> &ConnectionShard {
        &self.connection_shards[id.0 as usize % CONNECTION_SHARDS]
    }

    fn channel_entry(&self, channel: &Channel) -> Option<Arc<ChannelEntry>> {
        self.channel_shard(channel).lock().get(channel).cloned()
    }

    /// Registers a new connection (it holds no channel yet).
    pub fn connect(&self) -> Arc<Connection> {
        let id = ConnectionId(self.next_connection_id.fetch_add(1, Ordering::Relaxed));
        let mut shard = self.connection_shard(id).lock();
        // Read under the shard lock: a ping round that started before this moment visits this
        // shard after it, so the connection gets that round's ping (see start_ping_round).
        let round = self.core.ping_round.load(Ordering::SeqCst);
        let connection = Arc::new(Connection::new(id, self.core.clone(), round));
        shard.insert(id, connection.clone());
        drop(shard);
        self.connection_count.fetch_add(1, Ordering::Relaxed);
        connection
    }

    /// Removes a connection from every channel and from the node; its outbox is emptied and
    /// accepts nothing more.
    pub fn disconnect(&self, connection: &Arc<Connection>) {
        let channels = {
            let mut state = connection.lock();
            state.shut();
            state.take_channels()
        };
        for channel in &channels {
            self.remove_subscriber(channel, connection.id());
        }
        let removed = self
            .connection_shard(connection.id())
            .lock()
            .remove(&connection.id())
            .is_some();
        if removed {
            self.connection_count.fetch_sub(1, Ordering::Relaxed);
        }
        self.disconnected.notify_waiters();
    }

    /// Waits until no connection is left or `deadline` passes; true if none is left.
    pub async fn wait_until_empty(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let notified = self.disconnected.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.connection_count() == 0 {
                return true;
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => return self.connection_count() == 0,
            }
        }
    }

    /// Every connection of the node at this moment.
    pub fn connections(&self) -> Vec<Arc<Connection>> {
        let mut all = Vec::with_capacity(self.connection_count());
        for shard in self.connection_shards.iter() {
            all.extend(shard.lock().values().cloned());
        }
        all
    }

    /// Subscribes `connection` to `channel`. `fill_snapshot` runs under the channel's lock and
    /// writes the channel's current state into the connection's outbox; whatever the channel
    /// publishes after it is delivered too, and the per-event phase drops what the snapshot
    /// already covered.
    pub fn subscribe(
        &self,
        connection: &Arc<Connection>,
        channel: Channel,
        fill_snapshot: impl FnOnce(&mut Snapshot<'_>),
    ) -> SubscribeOutcome {
        // Refuse early, before a channel entry exists for a channel that will not be joined.
        if let Some(refusal) = self.subscribe_refusal(&connection.lock(), &channel) {
            return refusal;
        }
        let mut fill_snapshot = Some(fill_snapshot);
        loop {
            let entry = self
                .channel_shard(&channel)
                .lock()
                .entry(channel)
                .or_default()
                .clone();
            let mut subscribers = entry.subscribers.lock();
            if subscribers.retired {
                continue;
            }
            let needs_wake = {
                let mut state = connection.lock();
                // Checked again: the connection may have been closed meanwhile.
                if let Some(refusal) = self.subscribe_refusal(&state, &channel) {
                    drop(state);
                    self.retire_if_empty(&channel, &entry, &mut subscribers);
                    return refusal;
                }
                state.add_channel(channel);
                let mut snapshot = Snapshot::new(&mut state, &self.core);
                if let Some(fill) = fill_snapshot.take() {
                    fill(&mut snapshot);
                }
                snapshot.finish()
            };
            subscribers.insert(connection.clone());
            drop(subscribers);
            self.subscription_count.fetch_add(1, Ordering::Relaxed);
            if needs_wake {
                connection.wake();
            }
            return SubscribeOutcome::Subscribed;
        }
    }

    fn subscribe_refusal(
        &self,
        state: &OutboxState,
        channel: &Channel,
    ) -> Option<SubscribeOutcome> {
        if !state.is_open() {
            Some(SubscribeOutcome::Closed)
        } else if state.channels().contains(channel) {
            Some(SubscribeOutcome::AlreadySubscribed)
        } else if state.channels().len() >= self.core.config.max_channels_per_connection {
            Some(SubscribeOutcome::LimitReached)
        } else {
            None
        }
    }

    /// Unsubscribes; returns false if the connection did not hold the channel.
    pub fn unsubscribe(&self, connection: &Arc<Connection>, channel: Channel) -> bool {
        let held = connection.lock().channels().contains(&channel);
        if !held {
            return false;
        }
        // Leave the channel first so nothing more arrives from it, then forget what only it
        // carried.
        self.remove_subscriber(&channel, connection.id());
        connection.lock().remove_channel(&channel)
    }

    fn remove_subscriber(&self, channel: &Channel, id: ConnectionId) {
        let Some(entry) = self.channel_entry(channel) else {
            return;
        };
        let mut subscribers = entry.subscribers.lock();
        if subscribers.remove(id) {
            self.subscription_count.fetch_sub(1, Ordering::Relaxed);
        }
        self.retire_if_empty(channel, &entry, &mut subscribers);
    }

    /// Takes an emptied channel out of its shard map (called with the channel's lock held).
    fn retire_if_empty(
        &self,
        channel: &Channel,
        entry: &Arc<ChannelEntry>,
        subscribers: &mut Subscribers,
    ) {
        if !subscribers.list.is_empty() || subscribers.retired {
            return;
        }
        subscribers.retired = true;
        subscribers.list = Vec::new();
        subscribers.positions = HashMap::new();
        let mut shard = self.channel_shard(channel).lock();
        if shard
            .get(channel)
            .is_some_and(|current| Arc::ptr_eq(current, entry))
        {
            shard.remove(channel);
        }
    }

    /// Offers something to every subscriber of `channel`, under its lock. Returns how many
    /// connections were visited.
    fn deliver(
        &self,
        channel: &Channel,
        wakes: &mut WakeList,
        mut offer: impl FnMut(&mut OutboxState, &HubCore) -> NeedsWake,
    ) -> usize {
        let Some(entry) = self.channel_entry(channel) else {
            return 0;
        };
        let subscribers = entry.subscribers.lock();
        for Subscriber { connection, .. } in &subscribers.list {
            let needs_wake = offer(&mut connection.lock(), &self.core);
            wakes.push(connection, needs_wake);
        }
        subscribers.list.len()
    }

    /// EVENT_CREATED to the event's channels; a connection holding both gets it once.
    pub fn publish_event_created(&self, route: EventRoute, message: &SharedMessage) {
        let mut wakes = WakeList::new();
        for channel in route.channels() {
            self.deliver(&channel, &mut wakes, |state, core| {
                state.offer_event_created(core, route, message)
            });
        }
        wakes.wake_all();
    }

    /// EVENT_CLOSED to the event's channels; drops pending updates of the event.
    pub fn publish_event_closed(&self, route: EventRoute, message: &SharedMessage) {
        let mut wakes = WakeList::new();
        for channel in route.channels() {
            self.deliver(&channel, &mut wakes, |state, core| {
                state.offer_event_closed(core, route.event_id, message)
            });
        }
        wakes.wake_all();
    }

    /// One coalesced EVENT_UPDATED into the latest-value slots of the event's subscribers in
    /// flush phase `flush_phase` (see [`FLUSH_PHASES`]). Wakes are collected in `wakes` so the
    /// caller can wake once per phase, when every changed event is in the slots, and each
    /// connection's updates leave in one frame. Returns how many connections were visited
    /// (for bounding work per step).
    pub fn deliver_event_update(
        &self,
        update: &EventUpdate,
        flush_phase: usize,
        wakes: &mut WakeList,
    ) -> usize {
        let mut visited = 0;
        for channel in update.route.channels() {
            let Some(entry) = self.channel_entry(&channel) else {
                continue;
            };
            let subscribers = entry.subscribers.lock();
            for subscriber in &subscribers.list {
                if usize::from(subscriber.flush_phase) != flush_phase {
                    continue;
                }
                let connection = &subscriber.connection;
                let needs_wake = connection.lock().offer_event_update(
                    &self.core,
                    update.route.event_id,
                    update.seq,
                    &update.message,
                );
                wakes.push(connection, needs_wake);
                visited += 1;
            }
        }
        visited
    }

    /// Counts connections woken by coalesced updates (for metrics: each connection is woken at
    /// most once per update interval this way).
    pub fn record_coalesced_wakes(&self, wakes: u64) {
        self.core
            .stats
            .coalesced_wakes
            .fetch_add(wakes, Ordering::Relaxed);
    }

    /// BALANCE_UPDATED into the latest-value slot of `user:{user_id}` subscribers.
    /// `version` must grow with each change of that user's balance.
    pub fn publish_balance(&self, user_id: Uuid, version: u64, message: &SharedMessage) {
        let mut wakes = WakeList::new();
        self.deliver(&Channel::user(user_id), &mut wakes, |state, core| {
            state.offer_balance(core, user_id, version, message)
        });
        wakes.wake_all();
    }

    /// A must-deliver message to every subscriber of one channel (notices).
    pub fn publish_to_channel(&self, channel: &Channel, message: &SharedMessage) {
        let mut wakes = WakeList::new();
        self.deliver(channel, &mut wakes, |state, core| {
            state.push_queue(core, message)
        });
        wakes.wake_all();
    }

    /// A must-deliver message to every connection of the node, subscribed or not.
    pub fn broadcast(&self, message: &SharedMessage) {
        for connection in self.connections() {
            connection.send(message);
        }
    }

    /// Starts a heartbeat round: returns its number and the connections it must ping. A
    /// connection registered later is not held to this round.
    pub fn start_ping_round(&self) -> (u64, Vec<Arc<Connection>>) {
        let round = self.core.ping_round.fetch_add(1, Ordering::SeqCst) + 1;
        (round, self.connections())
    }

    /// Connections that were pinged in `round` and have not answered since.
    pub fn missed_ping(&self, round: u64) -> Vec<Arc<Connection>> {
        let mut missed = Vec::new();
        for shard in self.connection_shards.iter() {
            missed.extend(
                shard
                    .lock()
                    .values()
                    .filter(|connection| connection.missed_ping(round))
                    .cloned(),
            );
        }
        missed
    }

    /// Forgets an event in every outbox that knows it (the event left the node's memory).
    pub fn forget_event(&self, route: EventRoute) {
        let mut wakes = WakeList::new();
        for channel in route.channels() {
            self.deliver(&channel, &mut wakes, |state, _| {
                state.forget_event(route.event_id);
                false
            });
        }
    }

    /// Subscribers of one channel right now (tests and diagnostics).
    pub fn subscriber_count(&self, channel: &Channel) -> usize {
        self.channel_entry(channel)
            .map_or(0, |entry| entry.subscribers.lock().list.len())
    }
}

#[cfg(test)]
mod tests;
