//! Counters the hub keeps as plain atomics; the server copies them into its metrics recorder
//! periodically, so the fan-out path never pays for a metrics-registry lookup.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::message::MessageKind;

/// The hub's counters since it was built. Each only grows (relaxed atomics, so a reading may
/// lag a moment behind); the server exports differences between readings.
#[derive(Debug, Default)]
pub struct HubStats {
    sent: [AtomicU64; MessageKind::ALL.len()],
    dropped: [AtomicU64; MessageKind::ALL.len()],
    /// Connections woken to send coalesced EVENT_UPDATED (at most one per connection per
    /// update interval).
    pub coalesced_wakes: AtomicU64,
    /// Connections closed 4009 because their must-deliver queue passed its bound.
    pub queue_overflows: AtomicU64,
}

impl HubStats {
    pub(crate) fn add_sent(&self, counts: &[u64; MessageKind::ALL.len()]) {
        for (counter, count) in self.sent.iter().zip(counts) {
            if *count > 0 {
                counter.fetch_add(*count, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn add_dropped(&self, kind: MessageKind) {
        self.dropped[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Messages that left outboxes for the socket, by kind.
    pub fn sent(&self, kind: MessageKind) -> u64 {
        self.sent[kind.index()].load(Ordering::Relaxed)
    }

    /// Intermediate updates replaced in a latest-value slot before they were sent, by kind.
    pub fn dropped(&self, kind: MessageKind) -> u64 {
        self.dropped[kind.index()].load(Ordering::Relaxed)
    }

    /// Reads [`HubStats::coalesced_wakes`](field@HubStats::coalesced_wakes).
    pub fn coalesced_wakes(&self) -> u64 {
        self.coalesced_wakes.load(Ordering::Relaxed)
    }

    /// Reads [`HubStats::queue_overflows`](field@HubStats::queue_overflows).
    pub fn queue_overflows(&self) -> u64 {
        self.queue_overflows.load(Ordering::Relaxed)
    }
}
