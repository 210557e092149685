//! Event close timers: one task holds every open event's `closesAt` in a heap and closes each
//! when it comes due. Closing goes through the store's conditional update, so an event closes
//! exactly once even when several nodes (or a timer and a manual close) race for it; an event
//! that came due while the server was down is due at once and closes at start-up.
//!
//! A deadline is armed once: arming an event again for the same `closesAt` while it waits or
//! is being closed does nothing. That lets the node re-arm every open event it reloads from the
//! store (the sweep that closes what nobody armed) without ever closing one event twice over.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clock::Clock;

/// One event's deadline.
type Deadline = (DateTime<Utc>, Uuid);

/// Handle to arm timers; cheap to clone.
#[derive(Debug, Clone)]
pub struct EventTimers {
    sender: mpsc::UnboundedSender<Deadline>,
    /// Deadlines waiting in the heap or being closed (retries included); an entry leaves once
    /// its close settled.
    armed: Arc<Mutex<HashSet<Deadline>>>,
}

/// The receiving end, consumed by [`run_timers`].
#[derive(Debug)]
pub struct TimerQueue {
    receiver: mpsc::UnboundedReceiver<Deadline>,
}

impl EventTimers {
    pub fn new() -> (Self, TimerQueue) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let timers = EventTimers {
            sender,
            armed: Arc::default(),
        };
        (timers, TimerQueue { receiver })
    }

    /// Closes `event_id` at `closes_at` (at once if that has passed), unless that deadline is
    /// armed already.
    pub fn arm(&self, event_id: Uuid, closes_at: DateTime<Utc>) {
        if self.armed.lock().insert((closes_at, event_id)) {
            self.queue((closes_at, event_id));
        }
    }

    fn queue(&self, deadline: Deadline) {
        // The receiver lives as long as the server; after shutdown nothing needs closing here.
        let _ = self.sender.send(deadline);
    }
}

/// A due deadline being closed: it stays armed while it is retried, and is forgotten once it
/// settled (also if the close panicked), so that a later arm of the same event is heard again.
struct DueClose {
    timers: EventTimers,
    deadline: Deadline,
    retrying: bool,
}

impl DueClose {
    fn retry(mut self) {
        self.retrying = true;
        self.timers.queue(self.deadline);
    }
}

impl Drop for DueClose {
    fn drop(&mut self) {
        if !self.retrying {
            self.timers.armed.lock().remove(&self.deadline);
        }
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
    let mut deadlines: BinaryHeap<Reverse<Deadline>> = BinaryHeap::new();
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
                    let closing = DueClose {
                        timers: timers.clone(),
                        deadline: (at, event_id),
                        retrying: false,
                    };
                    tokio::spawn(async move {
                        if close(event_id).await == CloseAttempt::RetryLater {
                            tracing::warn!(%event_id, "closing a due event failed; retrying");
                            tokio::time::sleep(RETRY_AFTER_FAILURE).await;
                            closing.retry();
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Starts the timer task with a close that counts its calls and answers `RetryLater` for
    /// the first `failures` of them.
    fn start(failures: usize) -> (EventTimers, Arc<AtomicUsize>, Clock, CancellationToken) {
        let clock = Clock::new();
        let (timers, queue) = EventTimers::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let counted = calls.clone();
        tokio::spawn(run_timers(
            clock.clone(),
            timers.clone(),
            queue,
            shutdown.clone(),
            move |_| {
                let calls = counted.clone();
                async move {
                    if calls.fetch_add(1, Ordering::SeqCst) < failures {
                        CloseAttempt::RetryLater
                    } else {
                        CloseAttempt::Settled
                    }
                }
            },
        ));
        (timers, calls, clock, shutdown)
    }

    async fn pass(duration: Duration) {
        // Several steps, so that the spawned closes run between them.
        for _ in 0..10 {
            tokio::time::sleep(duration / 10).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_armed_again_while_it_waits_closes_once_and_once_more_after_it_settled() {
        let (timers, calls, clock, shutdown) = start(0);
        let event = Uuid::new_v4();
        let due = clock.now() + chrono::Duration::seconds(1);
        for _ in 0..3 {
            timers.arm(event, due);
        }
        pass(Duration::from_secs(2)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Settled, so forgotten: a sweep that finds the event still open arms it anew.
        timers.arm(event, due);
        pass(Duration::from_millis(100)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_being_retried_is_not_armed_a_second_time() {
        let (timers, calls, clock, shutdown) = start(2);
        let event = Uuid::new_v4();
        let due = clock.now();
        timers.arm(event, due);
        pass(Duration::from_millis(200)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the first attempt failed");
        // What every reload does while the store refuses the close: no second retry loop.
        for _ in 0..5 {
            timers.arm(event, due);
        }
        pass(Duration::from_secs(3)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "two failures, then one settled close"
        );
        shutdown.cancel();
    }
}
