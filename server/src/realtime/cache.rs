//! The node's memory of live events and balances: what snapshots are served from, so that a
//! reconnect storm costs no database query. Each event's EVENT_CREATED and EVENT_CLOSED are
//! serialized once; its EVENT_UPDATED once per seq.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use livevote_hub::{EventRoute, EventUpdate, SharedMessage, Snapshot, FLUSH_PHASES};
use livevote_protocol::{
    BalanceUpdated, Channel, Event, EventClosed, EventCreated, EventResult, EventStatus,
    EventUpdated, ServerMessage, Totals,
};
use livevote_storage::EventRecord;
use parking_lot::Mutex;
use uuid::Uuid;

pub(crate) fn route_of(event: &Event) -> EventRoute {
    EventRoute {
        event_id: event.id,
        streamer_id: event.streamer_id,
        game_id: event.game_id,
    }
}

#[derive(Debug)]
struct ClosedState {
    message: SharedMessage,
    closed_at: DateTime<Utc>,
}

#[derive(Debug)]
struct CachedEvent {
    route: EventRoute,
    event: Event,
    created: SharedMessage,
    totals: Totals,
    seq: u64,
    /// EVENT_UPDATED for `seq`, built on first need (a tick or a snapshot) and then shared.
    updated: Mutex<Option<(u64, SharedMessage)>>,
    closed: Option<ClosedState>,
    /// Flush phases whose subscribers have not been offered the newest totals yet (bit `p`
    /// for phase `p`, see [`FLUSH_PHASES`]).
    phases_behind: PhaseSet,
}

impl CachedEvent {
    fn updated_message(&self) -> SharedMessage {
        let mut updated = self.updated.lock();
        if let Some((seq, message)) = updated.as_ref() {
            if *seq == self.seq {
                return message.clone();
            }
        }
        let message = encode_updated(&self.event, &self.totals, self.seq);
        *updated = Some((self.seq, message.clone()));
        message
    }
}

fn encode_updated(event: &Event, totals: &Totals, seq: u64) -> SharedMessage {
    SharedMessage::encode(&ServerMessage::EventUpdated(EventUpdated {
        event_id: event.id,
        totals: totals.clone(),
        closes_at: Some(event.closes_at.clone()),
        seq,
    }))
}

fn encode_closed(event_id: Uuid, result: &EventResult) -> SharedMessage {
    SharedMessage::encode(&ServerMessage::EventClosed(EventClosed {
        event_id,
        result: result.clone(),
    }))
}

/// A set of flush phases, one bit each.
type PhaseSet = u64;
const ALL_PHASES: PhaseSet = PhaseSet::MAX >> (PhaseSet::BITS as usize - FLUSH_PHASES);
const _: () = assert!(FLUSH_PHASES <= PhaseSet::BITS as usize);

/// Open events and events closed within the recent-closed window, indexed by channel.
#[derive(Debug, Default)]
pub(crate) struct EventCache {
    events: HashMap<Uuid, CachedEvent>,
    /// Each channel's events in the order the node learned them.
    by_channel: HashMap<Channel, Vec<Uuid>>,
    /// Events with phases behind (each listed once).
    changed: Vec<Uuid>,
}

/// What applying a change produced for the sockets.
pub(crate) enum Publication {
    Nothing,
    Created(EventRoute, SharedMessage),
    Closed(EventRoute, SharedMessage),
}

impl EventCache {
    pub(crate) fn load(&mut self, record: EventRecord) {
        let route = route_of(&record.event);
        if self.events.contains_key(&route.event_id) {
            return;
        }
        let closed = match (record.status, record.result.as_ref()) {
            (EventStatus::Closed, Some(result)) => Some(ClosedState {
                message: encode_closed(route.event_id, result),
                closed_at: record.closed_at.unwrap_or(record.closes_at),
            }),
            _ => None,
        };
        let totals = match (&closed, record.result) {
            (Some(_), Some(result)) => result.totals,
            _ => record.totals,
        };
        self.insert(route, record.event, totals, record.seq, closed);
    }

    fn insert(
        &mut self,
        route: EventRoute,
        event: Event,
        totals: Totals,
        seq: u64,
        closed: Option<ClosedState>,
    ) -> SharedMessage {
        let created = SharedMessage::encode(&ServerMessage::EventCreated(EventCreated {
            event: event.clone(),
        }));
        for channel in route.channels() {
            self.by_channel
                .entry(channel)
                .or_default()
                .push(route.event_id);
        }
        self.events.insert(
            route.event_id,
            CachedEvent {
                route,
                event,
                created: created.clone(),
                totals,
                seq,
                updated: Mutex::new(None),
                closed,
                phases_behind: 0,
            },
        );
        created
    }

    pub(crate) fn created(&mut self, event: &Event) -> Publication {
        if self.events.contains_key(&event.id) {
            return Publication::Nothing;
        }
        let route = route_of(event);
        let totals = event
            .options
            .iter()
            .map(|option| (option.id.clone(), 0))
            .collect();
        let created = self.insert(route, event.clone(), totals, 0, None);
        Publication::Created(route, created)
    }

    /// New totals: kept if newer than what is known, and owed to every flush phase.
    pub(crate) fn totals_changed(&mut self, event_id: Uuid, totals: &Totals, seq: u64) {
        let Some(cached) = self.events.get_mut(&event_id) else {
            return;
        };
        if cached.closed.is_some() || seq <= cached.seq {
            return;
        }
        cached.totals.clone_from(totals);
        cached.seq = seq;
        if cached.phases_behind == 0 {
            self.changed.push(event_id);
        }
        cached.phases_behind = ALL_PHASES;
    }

    pub(crate) fn closed(
        &mut self,
        event_id: Uuid,
        result: &EventResult,
        seq: u64,
        closed_at: DateTime<Utc>,
    ) -> Publication {
        let Some(cached) = self.events.get_mut(&event_id) else {
            return Publication::Nothing;
        };
        if cached.closed.is_some() {
            return Publication::Nothing;
        }
        let message = encode_closed(event_id, result);
        cached.totals = result.totals.clone();
        cached.seq = cached.seq.max(seq);
        cached.closed = Some(ClosedState {
            message: message.clone(),
            closed_at,
        });
        Publication::Closed(cached.route, message)
    }

    /// What the subscribers in flush phase `phase` are owed: every event whose totals changed
    /// since that phase's last flush, each as one EVENT_UPDATED shared by all of them.
    pub(crate) fn take_changed(&mut self, phase: usize) -> Vec<EventUpdate> {
        let bit: PhaseSet = 1 << (phase % FLUSH_PHASES);
        let mut updates = Vec::new();
        let events = &mut self.events;
        self.changed.retain(|event_id| {
            let Some(cached) = events.get_mut(event_id) else {
                return false;
            };
            if cached.closed.is_some() {
                cached.phases_behind = 0;
                return false;
            }
            if cached.phases_behind & bit != 0 {
                cached.phases_behind &= !bit;
                updates.push(EventUpdate {
                    route: cached.route,
                    seq: cached.seq,
                    message: cached.updated_message(),
                });
            }
            cached.phases_behind != 0
        });
        updates
    }

    /// Writes a channel's snapshot: open events (CREATED then UPDATED), then events closed at
    /// or after `closed_since` (CREATED then CLOSED), each in the order the node learned them.
    pub(crate) fn fill_snapshot(
        &self,
        channel: &Channel,
        closed_since: DateTime<Utc>,
        snapshot: &mut Snapshot<'_>,
    ) {
        let Some(event_ids) = self.by_channel.get(channel) else {
            return;
        };
        let events = || event_ids.iter().filter_map(|id| self.events.get(id));
        for cached in events().filter(|cached| cached.closed.is_none()) {
            snapshot.event_created(cached.route, &cached.created);
            snapshot.event_updated(cached.route.event_id, cached.seq, &cached.updated_message());
        }
        for cached in events() {
            if let Some(closed) = &cached.closed {
                if closed.closed_at >= closed_since {
                    snapshot.event_created(cached.route, &cached.created);
                    snapshot.event_closed(cached.route.event_id, &closed.message);
                }
            }
        }
    }

    /// Removes events closed before `closed_before`; returns their routes so outboxes can
    /// forget them too.
    pub(crate) fn prune(&mut self, closed_before: DateTime<Utc>) -> Vec<EventRoute> {
        let expired: Vec<EventRoute> = self
            .events
            .values()
            .filter(|cached| {
                cached
                    .closed
                    .as_ref()
                    .is_some_and(|closed| closed.closed_at < closed_before)
            })
            .map(|cached| cached.route)
            .collect();
        for route in &expired {
            self.events.remove(&route.event_id);
            for channel in route.channels() {
                if let Some(ids) = self.by_channel.get_mut(&channel) {
                    ids.retain(|id| *id != route.event_id);
                    if ids.is_empty() {
                        self.by_channel.remove(&channel);
                    }
                }
            }
        }
        expired
    }

    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }
}

#[derive(Debug, Clone, Copy)]
struct CachedBalance {
    balance: i64,
    version: u64,
    /// Sockets of this user open on this node: their user stays cached, so that reconnecting
    /// them never asks the store.
    open_sockets: u32,
    /// Sweeps since the entry was last used (see [`BalanceCache::sweep`]).
    idle_sweeps: u8,
}

impl CachedBalance {
    fn new(balance: i64, version: u64) -> Self {
        CachedBalance {
            balance,
            version,
            open_sockets: 0,
            idle_sweeps: 0,
        }
    }
}

/// Sweeps an entry without sockets may sit unused before it is dropped.
const IDLE_SWEEPS_BEFORE_DROP: u8 = 2;

const BALANCE_SHARDS: usize = 16;

/// Balances of users this node has seen (a user is known to the ledger once it is here).
/// `version` is the ledger entry behind the balance (see `BrokerMessage::BalanceChanged`); it
/// orders one user's balances here and in the outboxes' latest-value slots.
#[derive(Debug)]
pub(crate) struct BalanceCache {
    shards: Box<[Mutex<HashMap<Uuid, CachedBalance>>]>,
}

impl Default for BalanceCache {
    fn default() -> Self {
        BalanceCache {
            shards: (0..BALANCE_SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

/// The version of a balance read from the store without naming its entry: older than any change.
const UNVERSIONED: u64 = 0;

impl BalanceCache {
    fn shard(&self, user_id: Uuid) -> &Mutex<HashMap<Uuid, CachedBalance>> {
        &self.shards[user_id.as_u64_pair().1 as usize % BALANCE_SHARDS]
    }

    /// Whether the user is cached; using an entry keeps it from the next sweeps.
    pub(crate) fn contains(&self, user_id: Uuid) -> bool {
        self.shard(user_id)
            .lock()
            .get_mut(&user_id)
            .map(|cached| cached.idle_sweeps = 0)
            .is_some()
    }

    /// The balance and its version, if known.
    pub(crate) fn get(&self, user_id: Uuid) -> Option<(i64, u64)> {
        self.shard(user_id).lock().get_mut(&user_id).map(|cached| {
            cached.idle_sweeps = 0;
            (cached.balance, cached.version)
        })
    }

    /// A change from the ledger; kept only if newer than what is cached. Returns whether it was.
    pub(crate) fn set(&self, user_id: Uuid, balance: i64, version: u64) -> bool {
        let mut shard = self.shard(user_id).lock();
        match shard.get_mut(&user_id) {
            Some(cached) if cached.version >= version => false,
            Some(cached) => {
                cached.balance = balance;
                cached.version = version;
                cached.idle_sweeps = 0;
                true
            }
            None => {
                shard.insert(user_id, CachedBalance::new(balance, version));
                true
            }
        }
    }

    /// A socket of `user_id` opened on this node (after the user was made known).
    pub(crate) fn socket_opened(&self, user_id: Uuid) {
        self.change_open_sockets(user_id, |count| count.saturating_add(1));
    }

    /// A socket of `user_id` closed on this node.
    pub(crate) fn socket_closed(&self, user_id: Uuid) {
        self.change_open_sockets(user_id, |count| count.saturating_sub(1));
    }

    fn change_open_sockets(&self, user_id: Uuid, change: impl FnOnce(u32) -> u32) {
        if let Some(cached) = self.shard(user_id).lock().get_mut(&user_id) {
            cached.open_sockets = change(cached.open_sockets);
            cached.idle_sweeps = 0;
        }
    }

    /// Drops users with no socket on this node that nothing has used for
    /// [`IDLE_SWEEPS_BEFORE_DROP`] sweeps, so that the cache holds the users who are around
    /// rather than every user the node ever saw. A dropped user costs one store query when it
    /// comes back. Returns how many entries are left.
    pub(crate) fn sweep(&self) -> usize {
        let mut left = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            shard.retain(|_, cached| {
                if cached.open_sockets > 0 {
                    return true;
                }
                cached.idle_sweeps = cached.idle_sweeps.saturating_add(1);
                cached.idle_sweeps <= IDLE_SWEEPS_BEFORE_DROP
            });
            left += shard.len();
        }
        left
    }

    /// A balance read from the store: kept only if nothing arrived meanwhile. Returns the
    /// version when it was inserted.
    pub(crate) fn insert_if_absent(&self, user_id: Uuid, balance: i64) -> Option<u64> {
        let mut shard = self.shard(user_id).lock();
        if shard.contains_key(&user_id) {
            return None;
        }
        shard.insert(user_id, CachedBalance::new(balance, UNVERSIONED));
        Some(UNVERSIONED)
    }
}

pub(crate) fn encode_balance(user_id: Uuid, balance: i64) -> SharedMessage {
    SharedMessage::encode(&ServerMessage::BalanceUpdated(BalanceUpdated {
        balance,
        user_id: Some(user_id),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use livevote_protocol::{EventOption, Timestamp};

    fn event() -> Event {
        Event {
            id: Uuid::new_v4(),
            streamer_id: Uuid::new_v4(),
            game_id: None,
            title: "Who wins?".into(),
            options: ["a", "b"]
                .map(|id| EventOption {
                    id: id.into(),
                    label: id.to_uppercase(),
                })
                .into(),
            closes_at: Timestamp("2026-11-26T12:00:00.000Z".into()),
            cost_per_vote: 1,
            prompt_versions: None,
        }
    }

    fn totals(a: u64) -> Totals {
        Totals::from([("a".to_owned(), a), ("b".to_owned(), 0)])
    }

    fn seqs(updates: &[EventUpdate]) -> Vec<u64> {
        updates.iter().map(|update| update.seq).collect()
    }

    /// A cache that knows one open event.
    fn cache_with(event: &Event) -> EventCache {
        let mut cache = EventCache::default();
        cache.created(event);
        cache
    }

    #[test]
    fn each_phase_is_offered_the_newest_totals_once() {
        let event = event();
        let mut cache = cache_with(&event);
        cache.totals_changed(event.id, &totals(1), 1);
        cache.totals_changed(event.id, &totals(2), 2);
        for phase in 0..4 {
            assert_eq!(seqs(&cache.take_changed(phase)), [2]);
            assert!(cache.take_changed(phase).is_empty(), "once per phase");
        }
        // A change part-way through the interval is owed to every phase again.
        cache.totals_changed(event.id, &totals(3), 3);
        for phase in 0..FLUSH_PHASES {
            assert_eq!(seqs(&cache.take_changed(phase)), [3], "phase {phase}");
        }
        assert!((0..FLUSH_PHASES).all(|phase| cache.take_changed(phase).is_empty()));
        assert!(cache.changed.is_empty(), "nothing is left listed");
        // Older totals arriving late change nothing.
        cache.totals_changed(event.id, &totals(2), 2);
        assert!(cache.take_changed(0).is_empty());
    }

    #[test]
    fn a_closed_event_is_never_offered_again() {
        let event = event();
        let mut cache = cache_with(&event);
        cache.totals_changed(event.id, &totals(1), 1);
        assert_eq!(seqs(&cache.take_changed(0)), [1]);
        let result = EventResult {
            option_id: "a".into(),
            totals: totals(1),
        };
        cache.closed(event.id, &result, 2, Utc::now());
        for phase in 0..FLUSH_PHASES {
            assert!(cache.take_changed(phase).is_empty());
        }
        assert!(cache.changed.is_empty());
    }
}

#[cfg(test)]
mod balance_tests {
    use super::*;

    #[test]
    fn a_sweep_keeps_users_with_sockets_and_drops_users_idle_for_long() {
        let cache = BalanceCache::default();
        let (watching, idle, busy) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        for user in [watching, idle, busy] {
            cache.insert_if_absent(user, 100);
        }
        cache.socket_opened(watching);
        for sweep in 1..=IDLE_SWEEPS_BEFORE_DROP {
            cache.sweep();
            assert!(cache.get(busy).is_some(), "in use before sweep {sweep}");
        }
        // `idle` sat through every sweep unused; `busy` was read before each one.
        assert_eq!(cache.sweep(), 2);
        assert!(!cache.contains(idle), "dropped after it went unused");
        assert!(cache.contains(watching) && cache.contains(busy));
        // Sockets keep their user however long nothing else touches it.
        for _ in 0..10 {
            cache.sweep();
        }
        assert_eq!(cache.get(watching), Some((100, UNVERSIONED)));
        assert!(!cache.contains(busy));
        // Once its socket is gone, the user goes the way of the others.
        cache.socket_closed(watching);
        for _ in 0..=IDLE_SWEEPS_BEFORE_DROP {
            cache.sweep();
        }
        assert_eq!(cache.sweep(), 0);
    }

    #[test]
    fn balance_changes_keep_their_order_across_a_sweep() {
        let cache = BalanceCache::default();
        let user = Uuid::new_v4();
        assert!(cache.set(user, 90, 5));
        assert!(!cache.set(user, 95, 4), "an older change is refused");
        cache.sweep();
        assert!(cache.set(user, 80, 6));
        assert_eq!(cache.get(user), Some((80, 6)));
    }
}
