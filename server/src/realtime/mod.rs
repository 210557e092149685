//! Sockets and fan-out (being built): the in-memory event cache that serves snapshots, the
//! coalescer, heartbeats, and the `/realtime` socket handler.

pub mod socket;

use std::sync::Arc;

use livevote_storage::EventRecord;
use tokio_util::sync::CancellationToken;

use crate::broker::BrokerMessage;
use crate::clock::Clock;
use crate::config::Config;

pub struct Realtime {
    _clock: Clock,
}

impl Realtime {
    pub fn new(_config: &Config, clock: Clock) -> Arc<Self> {
        Arc::new(Realtime { _clock: clock })
    }

    /// Loads the events a node knows at start-up (open ones and recently closed ones).
    pub fn load(&self, _records: Vec<EventRecord>) {}

    /// Applies one change published through the broker: cache, then sockets.
    pub fn apply(&self, _message: &BrokerMessage) {}

    /// Starts the shared timers (coalescing flush, heartbeats, cache pruning).
    pub fn spawn_background(self: &Arc<Self>, _shutdown: CancellationToken) {}

    /// Sends every socket SERVER_RESTARTING with a spread retryAfterMs and closes it with 1012.
    pub async fn close_all_for_restart(&self) {}

    /// Whether the ledger already knows this user (so a request need not ask the store).
    pub fn is_user_known(&self, _user_id: uuid::Uuid) -> bool {
        false
    }

    /// Records a user's balance as the store reported it (known users, `user:` snapshots).
    pub fn remember_balance(&self, _user_id: uuid::Uuid, _balance: i64) {}

    pub fn connection_count(&self) -> usize {
        0
    }
}
