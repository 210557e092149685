//! The node's memory of live events and balances: what snapshots are served from, so that a
//! reconnect storm costs no database query. Each event's EVENT_CREATED and EVENT_CLOSED are
//! serialized once; its EVENT_UPDATED once per seq.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use livevote_hub::{EventRoute, EventUpdate, SharedMessage, Snapshot};
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
    /// Waiting for the next coalescing tick.
    dirty: bool,
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

/// Open events and events closed within the recent-closed window, indexed by channel.
#[derive(Debug, Default)]
pub(crate) struct EventCache {
    events: HashMap<Uuid, CachedEvent>,
    /// Each channel's events in the order the node learned them.
    by_channel: HashMap<Channel, Vec<Uuid>>,
    dirty: Vec<Uuid>,
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
                dirty: false,
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

    /// New totals: kept if newer than what is known, and marked for the next tick.
    pub(crate) fn totals_changed(&mut self, event_id: Uuid, totals: &Totals, seq: u64) {
        let Some(cached) = self.events.get_mut(&event_id) else {
            return;
        };
        if cached.closed.is_some() || seq <= cached.seq {
            return;
        }
        cached.totals = totals.clone();
        cached.seq = seq;
        if !cached.dirty {
            cached.dirty = true;
            self.dirty.push(event_id);
        }
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

    /// The events that changed since the last tick, each as one EVENT_UPDATED shared by all
    /// its subscribers.
    pub(crate) fn take_dirty(&mut self) -> Vec<EventUpdate> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut updates = Vec::with_capacity(dirty.len());
        for event_id in dirty {
            let Some(cached) = self.events.get_mut(&event_id) else {
                continue;
            };
            cached.dirty = false;
            if cached.closed.is_some() {
                continue;
            }
            updates.push(EventUpdate {
                route: cached.route,
                seq: cached.seq,
                message: cached.updated_message(),
            });
        }
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
}

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

    pub(crate) fn contains(&self, user_id: Uuid) -> bool {
        self.shard(user_id).lock().contains_key(&user_id)
    }

    /// The balance and its version, if known.
    pub(crate) fn get(&self, user_id: Uuid) -> Option<(i64, u64)> {
        self.shard(user_id)
            .lock()
            .get(&user_id)
            .map(|cached| (cached.balance, cached.version))
    }

    /// A change from the ledger; kept only if newer than what is cached. Returns whether it was.
    pub(crate) fn set(&self, user_id: Uuid, balance: i64, version: u64) -> bool {
        let mut shard = self.shard(user_id).lock();
        if shard
            .get(&user_id)
            .is_some_and(|cached| cached.version >= version)
        {
            return false;
        }
        shard.insert(user_id, CachedBalance { balance, version });
        true
    }

    /// A balance read from the store: kept only if nothing arrived meanwhile. Returns the
    /// version when it was inserted.
    pub(crate) fn insert_if_absent(&self, user_id: Uuid, balance: i64) -> Option<u64> {
        let mut shard = self.shard(user_id).lock();
        if shard.contains_key(&user_id) {
            return None;
        }
        shard.insert(
            user_id,
            CachedBalance {
                balance,
                version: UNVERSIONED,
            },
        );
        Some(UNVERSIONED)
    }
}

pub(crate) fn encode_balance(user_id: Uuid, balance: i64) -> SharedMessage {
    SharedMessage::encode(&ServerMessage::BalanceUpdated(BalanceUpdated {
        balance,
        user_id: Some(user_id),
    }))
}
