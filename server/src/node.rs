//! What a node does with a change: commit it, publish it to every node, and apply what the
//! broker delivers (timers, then the realtime cache and sockets).
//!
//! A committed change must be published whatever happens to the request that caused it: hyper
//! drops a handler's future when its client hangs up, so a handler that published after its
//! store call returned lost the publication whenever the client left mid-commit (an event
//! saved with no timer armed, a close stored but never announced, totals that never moved).
//! [`AppState::commit`] runs the store call and its publication in a task of its own that the
//! request only awaits.

use std::future::Future;

use livevote_storage::EventRecord;
use uuid::Uuid;

use crate::auth::Claims;
use crate::broker::BrokerMessage;
use crate::error::AppError;
use crate::state::AppState;
use crate::timers::CloseAttempt;

mod resync;

impl AppState {
    /// Applies a change received from the broker to this node: timers and sockets.
    pub(crate) fn apply(&self, message: &BrokerMessage) {
        if let BrokerMessage::EventCreated { event } = message {
            match chrono::DateTime::parse_from_rfc3339(event.closes_at.as_str()) {
                Ok(closes_at) => self
                    .timers
                    .arm(event.id, closes_at.with_timezone(&chrono::Utc)),
                Err(error) => {
                    tracing::error!(event_id = %event.id, %error, "event with an unreadable closesAt")
                }
            }
        }
        self.realtime.apply(message);
    }

    /// Publishes a change that nothing has committed yet (an admin notice): a broker failure
    /// is the caller's answer, 503.
    pub async fn publish(&self, message: BrokerMessage) -> Result<(), AppError> {
        self.broker
            .publish(message)
            .await
            .map_err(|error| AppError::Unavailable(error.to_string()))
    }

    /// Publishes what the store has already committed. A broker failure is logged and
    /// counted, never answered: the change is durable, so the answer must be the committed
    /// result — a client told 503 would retry, and without an Idempotency-Key vote twice.
    pub async fn publish_committed(&self, messages: impl IntoIterator<Item = BrokerMessage>) {
        for message in messages {
            if let Err(error) = self.broker.publish(message).await {
                metrics::counter!("livevote_publish_failures_total").increment(1);
                tracing::error!(%error, "a committed change could not be published");
            }
        }
    }

    /// Runs `work` (a store call and the publication of what it committed) to the end in a
    /// task of its own; the request only awaits it, so a client that hangs up cannot cut the
    /// publication off.
    pub async fn commit<T, Work>(&self, work: Work) -> Result<T, AppError>
    where
        T: Send + 'static,
        Work: Future<Output = Result<T, AppError>> + Send + 'static,
    {
        tokio::spawn(work).await.map_err(|join_error| {
            AppError::Internal(format!("a commit task ended abnormally: {join_error}"))
        })?
    }

    /// Makes a user known to the ledger once; later calls are answered from memory.
    pub async fn ensure_user_known(&self, claims: &Claims) -> Result<(), AppError> {
        let user_id = claims.sub;
        if self.realtime.is_user_known(user_id) {
            return Ok(());
        }
        let balance = self
            .store
            .ensure_user(user_id, claims.initial_balance(self.config.initial_balance))
            .await?;
        self.realtime.remember_balance(user_id, balance);
        Ok(())
    }

    /// Closes an event (timer or request) and publishes EVENT_CLOSED if this call closed it.
    /// An event the store already holds closed is applied here too, from the stored result:
    /// the caller that closed it may have died between its commit and its publish, and this
    /// node's cache and sockets would otherwise show it open for good. Applying a close twice
    /// changes nothing (the cache publishes a close once).
    pub async fn close_event(
        &self,
        event_id: Uuid,
        chosen_option: Option<String>,
    ) -> Result<EventRecord, AppError> {
        let outcome = self
            .store
            .close_event(event_id, chosen_option, self.clock.now())
            .await?;
        let record = &outcome.record;
        let result = record
            .result
            .clone()
            .ok_or_else(|| AppError::Internal("closed without a result".into()))?;
        let closed_at = record.closed_at.unwrap_or_else(|| self.clock.now());
        let closed = BrokerMessage::EventClosed {
            event_id,
            result,
            seq: record.seq,
            closed_at_ms: closed_at.timestamp_millis(),
        };
        if outcome.newly_closed {
            let late = (closed_at - record.closes_at).num_milliseconds();
            metrics::counter!("livevote_events_closed_total").increment(1);
            metrics::histogram!("livevote_close_delay_ms").record(late.max(0) as f64);
            self.publish_committed([closed]).await;
        } else {
            self.apply(&closed);
        }
        Ok(outcome.record)
    }

    /// The timer task's close of a due event: database failures are retried by the timer,
    /// anything else (the event is gone, or closed already) settles it.
    pub async fn close_due_event(&self, event_id: Uuid) -> CloseAttempt {
        match self.close_event(event_id, None).await {
            Err(error @ (AppError::Internal(_) | AppError::Unavailable(_))) => {
                tracing::warn!(%event_id, %error, "closing a due event failed");
                CloseAttempt::RetryLater
            }
            Ok(_) | Err(_) => CloseAttempt::Settled,
        }
    }
}
