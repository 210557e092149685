//! Event close timers: one task holds every open event's `closesAt` in a heap and closes each
//! when it comes due. Closing goes through the store's conditional update, so an event closes
//! exactly once even when several nodes (or a timer and a manual close) race for it; an event
//! that came due while the server was down is due at once and closes at start-up.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clock::Clock;

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

/// What became of one due event's close, as the timer task needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseAttempt {
    /// Closed now, or found closed already (by a manual close or another node): done.
    Settled,
    /// The store could not be reached or failed: try again shortly.
    RetryLater,
}

/// Runs until `shutdown`: sleeps until the earliest deadline, calls `close` for what is due.
///
/// The task knows only the clock, its own queue and the `close` it is given, not the node's
/// whole state: the node wires its `close_event` in (see `lib::start`).
pub async fn run_timers<Close, Closing>(
    clock: Clock,
    timers: EventTimers,
    mut queue: TimerQueue,
    shutdown: CancellationToken,
    close: Close,
) where
    Close: Fn(Uuid) -> Closing + Clone + Send + 'static,
    Closing: Future<Output = CloseAttempt> + Send + 'static,
{
    let mut deadlines: BinaryHeap<Reverse<(DateTime<Utc>, Uuid)>> = BinaryHeap::new();
    loop {
        let next_wake = deadlines
            .peek()
            .map(|Reverse((at, _))| clock.instant_at(*at));
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            armed = queue.receiver.recv() => match armed {
                Some(entry) => deadlines.push(Reverse(entry)),
                None => return,
            },
            () = sleep_until_or_forever(next_wake) => {
                let now = clock.now();
                while let Some(Reverse((at, event_id))) = deadlines.peek().copied() {
                    if at > now {
                        break;
                    }
                    deadlines.pop();
                    let close = close.clone();
                    let timers = timers.clone();
                    tokio::spawn(async move {
                        if close(event_id).await == CloseAttempt::RetryLater {
                            tracing::warn!(%event_id, "closing a due event failed; retrying");
                            tokio::time::sleep(RETRY_AFTER_FAILURE).await;
                            timers.arm(event_id, at);
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
