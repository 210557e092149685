//! How a node catches up with the store when it may have missed changes from other nodes:
//! applying a stored record as the messages it stands for, reloading everything live, and
//! loading an event first heard of through a change to it. Used by the Redis broker's applier
//! through [`ChangeApplier`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use livevote_protocol::EventStatus;
use livevote_storage::{EventRecord, StoreError};

use crate::broker::{BrokerMessage, ChangeApplier, Resync};
use crate::state::AppState;

impl AppState {
    /// The events of one stored record as broker messages, applied so that a node that missed
    /// them ends where the store is: created when this node does not know the event, the newer
    /// totals, and the close. Everything is gated in the cache (a known event is not created
    /// twice, totals only move forward, a close is shown once), so applying a record the node
    /// already holds changes nothing.
    ///
    /// An open record arms its timer whether or not the node knew the event: this is the sweep
    /// that closes what nobody armed (a creator that died between its commit and its
    /// EVENT_CREATED, a node that heard of the event but never armed it). The timers arm a
    /// deadline once, so the every-5-s reload costs no second close of an event already armed,
    /// and an overdue one is closed at once; once closed it is no longer open, and not armed
    /// again.
    fn apply_record(&self, record: EventRecord) {
        let event_id = record.event.id;
        let open = record.status == EventStatus::Open;
        let closes_at = record.closes_at;
        if !self.realtime.knows_event(event_id) {
            self.realtime.apply(&BrokerMessage::EventCreated {
                event: record.event,
            });
        }
        if open {
            self.realtime.apply(&BrokerMessage::TotalsChanged {
                event_id,
                totals: record.totals,
                seq: record.seq,
            });
            // After the cache knows the event, so that a close found done elsewhere (applied
            // by the timer's task, not this applier) lands on a known event.
            self.timers.arm(event_id, closes_at);
        } else if let Some(result) = record.result {
            let closed_at = record.closed_at.unwrap_or(record.closes_at);
            self.realtime.apply(&BrokerMessage::EventClosed {
                event_id,
                result,
                seq: record.seq,
                closed_at_ms: closed_at.timestamp_millis(),
            });
        }
    }

    /// Reloads what is live from the store (the truth) into this node's caches and sockets.
    /// Returns how many events the store holds live.
    async fn reload_from_store(&self, why: Resync) -> Result<usize, StoreError> {
        let live = self.store.live_events(self.closed_since()).await?;
        let count = live.len();
        for record in live {
            self.apply_record(record);
        }
        // Balances too, by a task of their own: a lost BALANCE_UPDATED would otherwise
        // show until the user's next change.
        self.balance_refresh.ask(why);
        Ok(count)
    }

    /// Re-reads cached balances from the store each time a reload asks. Each balance comes
    /// with its ledger version, so the cache keeps it only where it is newer, and the pass
    /// needs no ordering with the applier.
    ///
    /// A routine pass reads the users with a socket on this node, the ones a stale balance
    /// would show to; every sixth (see `balance_refresh.rs`), and every one after a doubt,
    /// reads every cached user. Each node caches every voter whose change reached it, so
    /// reading them all every 5 s cost each node as many probes as the cluster has voters
    /// (30,000 every 5 s with 10,000 voters on three nodes); a user without a socket here
    /// shows a stale balance only once a socket opens, and then at most until the next full
    /// pass. Outside the applier, so that its 5 s reload applies other nodes' changes
    /// meanwhile.
    pub(crate) async fn run_balance_refresh(self) {
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = self.balance_refresh.asked() => {}
            }
            let users = if self.balance_refresh.take_everyone() {
                self.realtime.cached_balance_users()
            } else {
                self.realtime.watched_balance_users()
            };
            match self.store.balances(&users).await {
                Ok(found) => {
                    for found in found {
                        self.realtime.apply(&BrokerMessage::BalanceChanged {
                            user_id: found.user_id,
                            balance: found.balance,
                            version: found.version,
                        });
                    }
                }
                // The next reload (at most 5 s away) asks again.
                Err(error) => {
                    tracing::warn!(%error, "re-reading cached balances from the store failed");
                }
            }
        }
    }

    /// Applies one message; a change to an event this node has not heard of yet (its
    /// EVENT_CREATED is still on its way from another node, or was lost) first loads that event
    /// from the store, so the change is not dropped. Events closed longer ago than snapshots show
    /// them are left alone.
    async fn apply_loading_unknown(&self, message: &BrokerMessage) -> Result<(), StoreError> {
        if let BrokerMessage::EventCreated { event } = message {
            if self.realtime.knows_event(event.id) {
                // Already loaded from the store (a change to it came first) and armed then.
                return Ok(());
            }
        }
        let unknown = match message {
            BrokerMessage::TotalsChanged { event_id, .. }
            | BrokerMessage::EventClosed { event_id, .. } => {
                Some(*event_id).filter(|event_id| !self.realtime.knows_event(*event_id))
            }
            _ => None,
        };
        if let Some(event_id) = unknown {
            if let Some(record) = self.store.get_event(event_id).await? {
                let expired = record
                    .closed_at
                    .is_some_and(|closed_at| closed_at < self.closed_since());
                if !expired {
                    self.apply_record(record);
                }
            }
        }
        self.apply(message);
        Ok(())
    }

    fn closed_since(&self) -> DateTime<Utc> {
        let recent_closed =
            chrono::Duration::from_std(self.config.recent_closed).unwrap_or(chrono::Duration::MAX);
        self.clock.now() - recent_closed
    }
}

#[async_trait]
impl ChangeApplier for AppState {
    async fn apply_change(&self, message: &BrokerMessage) -> Result<(), StoreError> {
        self.apply_loading_unknown(message).await
    }

    async fn resync_from_store(&self, why: Resync) -> Result<usize, StoreError> {
        self.reload_from_store(why).await
    }
}
