//! Event close timers: one task holds every open event's `closesAt` in a heap and closes each
//! when it comes due. Closing goes through the store's conditional update, so an event closes
//! exactly once even when several nodes (or a timer and a manual close) race for it; an event
//! that came due while the server was down is due at once and closes at start-up.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::state::AppState;

/// Handle to arm timers; cheap to clone.
#[derive(Debug, Clone)]
pub struct EventTimers {
    sender: mpsc::UnboundedSender<(DateTime<Utc>, Uuid)>,
}

/// The receiving end, consumed by [`run_timers`].
#[derive(Debug)]
pub struct TimerQueue {
    receiver: mpsc::UnboundedReceiver<(DateTime<Utc>, Uuid)>,
}

impl EventTimers {
    pub fn new() -> (Self, TimerQueue) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (EventTimers { sender }, TimerQueue { receiver })
    }

    /// Closes `event_id` at `closes_at` (at once if that has passed).
    pub fn arm(&self, event_id: Uuid, closes_at: DateTime<Utc>) {
        // The receiver lives as long as the server; after shutdown nothing needs closing here.
        let _ = self.sender.send((closes_at, event_id));
    }
}

/// How long to wait before retrying a close that failed on a database error.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(500);

/// Runs until `shutdown`: sleeps until the earliest deadline, closes what is due.
pub async fn run_timers(state: AppState, mut queue: TimerQueue, shutdown: CancellationToken) {
    let mut deadlines: BinaryHeap<Reverse<(DateTime<Utc>, Uuid)>> = BinaryHeap::new();
    loop {
        let next_wake = deadlines
            .peek()
            .map(|Reverse((at, _))| state.clock.instant_at(*at));
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            armed = queue.receiver.recv() => match armed {
                Some(entry) => deadlines.push(Reverse(entry)),
                None => return,
            },
            () = sleep_until_or_forever(next_wake) => {
                let now = state.clock.now();
                while let Some(Reverse((at, event_id))) = deadlines.peek().copied() {
                    if at > now {
                        break;
                    }
                    deadlines.pop();
                    let state = state.clone();
                    tokio::spawn(async move {
                        let outcome = state.close_event(event_id, None).await;
                        if let Err(error @ (crate::error::AppError::Internal(_) | crate::error::AppError::Unavailable(_))) = outcome {
                            tracing::warn!(%event_id, %error, "closing a due event failed; retrying");
                            tokio::time::sleep(RETRY_AFTER_FAILURE).await;
                            state.timers.arm(event_id, at);
                        }
                    });
                }
            }
        }
    }
}

async fn sleep_until_or_forever(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
