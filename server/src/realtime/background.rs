//! The realtime layer's shared timers: one coalescing ticker for every channel, one heartbeat
//! for every socket, and housekeeping (cache pruning, metrics). Work per step is bounded and
//! yields, so the HTTP handlers sharing the worker threads stay responsive under load.

use std::collections::VecDeque;
use std::sync::Arc;

use livevote_hub::{CloseRequest, MessageKind, SharedMessage, WakeList, FLUSH_PHASES};
use livevote_protocol::{close_codes, Ping, ServerMessage};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::Realtime;
use crate::clock::format_timestamp;

/// Outbox visits between two yields to the scheduler.
const VISITS_PER_YIELD: usize = 4_096;

/// Every `update_interval`, turns each changed event into one EVENT_UPDATED and offers it to
/// the latest-value slots of its subscribers; writers are woken after the whole step so that a
/// connection's changed events leave in one frame.
///
/// The interval is cut into [`FLUSH_PHASES`] steps, and each step serves the connections of
/// one phase, so every connection is still offered updates once per interval, but the frames
/// leave in many small bursts instead of one. Waking every watching socket at one instant made
/// the last sockets of the burst wait for all the others: at 19,000 sockets that wait was
/// about a hundred milliseconds on top of the interval.
pub(super) async fn run_coalescer(realtime: Arc<Realtime>, shutdown: CancellationToken) {
    let step = realtime.settings.update_interval / FLUSH_PHASES as u32;
    let mut ticker = tokio::time::interval(step);
    // Delay, never burst: a late step pushes the later ones back, so one connection's
    // updates stay at least an update interval apart.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut phase = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => flush_phase(&realtime, phase).await,
        }
        phase = (phase + 1) % FLUSH_PHASES;
    }
}

async fn flush_phase(realtime: &Realtime, phase: usize) {
    let updates = realtime.events.write().take_changed(phase);
    if updates.is_empty() {
        return;
    }
    let mut wakes = WakeList::new();
    let mut visits_since_yield = 0;
    for update in &updates {
        visits_since_yield += realtime.hub.deliver_event_update(update, phase, &mut wakes);
        if visits_since_yield >= VISITS_PER_YIELD {
            visits_since_yield = 0;
            tokio::task::yield_now().await;
        }
    }
    realtime.hub.record_coalesced_wakes(wakes.len() as u64);
    wakes.wake_all();
}

/// Every heartbeat interval one PING, serialized once, to every socket; a socket that has
/// not answered `{"action":"pong"}` within the pong timeout of a ping is closed 4000.
pub(super) async fn run_heartbeat(realtime: Arc<Realtime>, shutdown: CancellationToken) {
    let interval = realtime.settings.heartbeat_interval;
    let pong_timeout = realtime.settings.pong_timeout;
    let mut next_ping = Instant::now() + interval;
    // (deadline, ping round) of rounds whose answers are still awaited.
    let mut pending_checks: VecDeque<(Instant, u64)> = VecDeque::new();
    loop {
        let wake_at = pending_checks
            .front()
            .map_or(next_ping, |(deadline, _)| (*deadline).min(next_ping));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep_until(wake_at) => {}
        }
        let now = Instant::now();
        while let Some(&(deadline, round)) = pending_checks.front() {
            if deadline > now {
                break;
            }
            pending_checks.pop_front();
            for connection in realtime.hub.missed_ping(round) {
                connection.request_close(CloseRequest {
                    code: close_codes::PONG_TIMEOUT,
                    reason: "no pong in time",
                    deliver_pending: false,
                });
            }
        }
        if now >= next_ping {
            let ping = SharedMessage::encode(&ServerMessage::Ping(Ping {
                ts: format_timestamp(realtime.clock.now()),
            }));
            let (round, connections) = realtime.hub.start_ping_round();
            for chunk in connections.chunks(VISITS_PER_YIELD) {
                for connection in chunk {
                    connection.send(&ping);
                }
                tokio::task::yield_now().await;
            }
            pending_checks.push_back((now + pong_timeout, round));
            next_ping += interval;
            if next_ping <= now {
                next_ping = now + interval;
            }
        }
    }
}

/// Once a second: forgets events closed longer ago than the recent-closed window, and copies
/// the hub's counters into the metrics recorder. Every [`BALANCE_SWEEP_INTERVAL`]: sweeps the
/// balance cache.
pub(super) async fn run_housekeeping(realtime: Arc<Realtime>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut exported = ExportedCounters::default();
    let mut next_balance_sweep = Instant::now() + BALANCE_SWEEP_INTERVAL;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        prune_closed_events(&realtime);
        if Instant::now() >= next_balance_sweep {
            next_balance_sweep = Instant::now() + BALANCE_SWEEP_INTERVAL;
            let cached = realtime.sweep_balances();
            metrics::gauge!("livevote_cached_balances").set(cached as f64);
        }
        exported.export(&realtime);
    }
}

/// How often the balance cache drops users who have had no socket here and no balance change
/// for a while (two sweeps): without it the cache would hold every user the node ever saw.
const BALANCE_SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10 * 60);

fn prune_closed_events(realtime: &Realtime) {
    let recent_closed = chrono::Duration::from_std(realtime.settings.recent_closed)
        .unwrap_or(chrono::Duration::MAX);
    let closed_before = realtime.clock.now() - recent_closed;
    let forgotten = realtime.events.write().prune(closed_before);
    for route in forgotten {
        realtime.hub.forget_event(route);
    }
}

/// What was last added to each recorder counter, so that several servers in one process (the
/// recorder is process-wide) each add only their own increments.
#[derive(Default)]
struct ExportedCounters {
    sent: [u64; MessageKind::ALL.len()],
    dropped: [u64; MessageKind::ALL.len()],
    coalesced_wakes: u64,
    queue_overflows: u64,
}

impl ExportedCounters {
    fn export(&mut self, realtime: &Realtime) {
        let stats = realtime.hub.stats();
        for kind in MessageKind::ALL {
            let sent = stats.sent(kind);
            let sent_delta = sent - self.sent[kind.index()];
            if sent_delta > 0 {
                metrics::counter!("livevote_messages_sent_total", "type" => kind.wire_name())
                    .increment(sent_delta);
                self.sent[kind.index()] = sent;
            }
            let dropped = stats.dropped(kind);
            let dropped_delta = dropped - self.dropped[kind.index()];
            if dropped_delta > 0 {
                metrics::counter!("livevote_messages_dropped_total", "type" => kind.wire_name())
                    .increment(dropped_delta);
                self.dropped[kind.index()] = dropped;
            }
        }
        let coalesced_wakes = stats.coalesced_wakes();
        metrics::counter!("livevote_coalesced_update_wakes_total")
            .increment(coalesced_wakes - self.coalesced_wakes);
        self.coalesced_wakes = coalesced_wakes;
        let overflows = stats.queue_overflows();
        metrics::counter!("livevote_queue_overflows_total")
            .increment(overflows - self.queue_overflows);
        self.queue_overflows = overflows;
        metrics::gauge!("livevote_sockets").set(realtime.connection_count() as f64);
        metrics::gauge!("livevote_subscriptions").set(realtime.hub.subscription_count() as f64);
    }
}
