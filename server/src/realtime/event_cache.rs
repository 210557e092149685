//! The node's memory of live events: what snapshots are served from, so that a reconnect
//! storm costs no database query. Each event's EVENT_CREATED and EVENT_CLOSED are
//! serialized once; its EVENT_UPDATED once per seq.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use livevote_hub::{EventRoute, EventUpdate, SharedMessage, Snapshot, FLUSH_PHASES};
use livevote_protocol::{
    Channel, Event, EventClosed, EventCreated, EventResult, EventStatus, EventUpdated,
    ServerMessage, Totals,
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
    /// Closed events by the time they closed, so pruning visits only what expired.
    closed_order: BTreeSet<(DateTime<Utc>, Uuid)>,
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
            (EventStatus::Closed, Some(result)) => {
                let closed_at = record.closed_at.unwrap_or(record.closes_at);
                self.closed_order.insert((closed_at, route.event_id));
                Some(ClosedState {
                    message: encode_closed(route.event_id, result),
                    closed_at,
                })
            }
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
        self.closed_order.insert((closed_at, event_id));
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
    /// forget them too. Costs what expired plus the lists of the channels it was in, never a
    /// walk over every cached event (this runs every second under the cache's write lock).
    pub(crate) fn prune(&mut self, closed_before: DateTime<Utc>) -> Vec<EventRoute> {
        let mut expired = Vec::new();
        while let Some(&(closed_at, event_id)) = self.closed_order.first() {
            if closed_at >= closed_before {
                break;
            }
            self.closed_order.pop_first();
            if let Some(cached) = self.events.remove(&event_id) {
                expired.push(cached.route);
            }
        }
        if expired.is_empty() {
            return expired;
        }
        let expired_ids: HashSet<Uuid> = expired.iter().map(|route| route.event_id).collect();
        let channels: HashSet<Channel> = expired.iter().flat_map(EventRoute::channels).collect();
        for channel in channels {
            if let Some(ids) = self.by_channel.get_mut(&channel) {
                ids.retain(|id| !expired_ids.contains(id));
                if ids.is_empty() {
                    self.by_channel.remove(&channel);
                }
            }
        }
        expired
    }

    /// Open events of one streamer this node holds (the per-streamer cap).
    pub(crate) fn open_events_of(&self, streamer_id: Uuid) -> usize {
        self.by_channel
            .get(&Channel::streamer(streamer_id))
            .map_or(0, |ids| {
                ids.iter()
                    .filter_map(|id| self.events.get(id))
                    .filter(|cached| cached.closed.is_none())
                    .count()
            })
    }

    pub(crate) fn contains(&self, event_id: Uuid) -> bool {
        self.events.contains_key(&event_id)
    }

    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }
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
    fn pruning_removes_exactly_what_closed_before_the_cutoff_whatever_the_close_order() {
        let mut cache = EventCache::default();
        let streamer = Uuid::new_v4();
        let start = Utc::now();
        let mut events = Vec::new();
        for _ in 0..6 {
            let mut event = event();
            event.streamer_id = streamer;
            cache.created(&event);
            events.push(event);
        }
        let result = EventResult {
            option_id: "a".into(),
            totals: totals(0),
        };
        // Closed out of order: 3 s, 1 s, 5 s, 2 s after start; two stay open.
        for (index, seconds) in [(0, 3), (1, 1), (2, 5), (3, 2)] {
            let closed_at = start + chrono::Duration::seconds(seconds);
            cache.closed(events[index].id, &result, 1, closed_at);
        }
        assert_eq!(cache.open_events_of(streamer), 2);
        let pruned = cache.prune(start + chrono::Duration::milliseconds(2500));
        let mut pruned_ids: Vec<Uuid> = pruned.iter().map(|route| route.event_id).collect();
        pruned_ids.sort();
        let mut expected = vec![events[1].id, events[3].id];
        expected.sort();
        assert_eq!(pruned_ids, expected);
        assert_eq!(cache.len(), 4);
        assert!(
            cache.prune(start).is_empty(),
            "nothing closed before the start"
        );
        assert_eq!(cache.prune(start + chrono::Duration::seconds(10)).len(), 2);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.open_events_of(streamer), 2);
        let listed = &cache.by_channel[&Channel::streamer(streamer)];
        assert_eq!(listed, &vec![events[4].id, events[5].id]);
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
