//! The callers' side of the writer's queue: each write the stores offer becomes one command
//! with a deadline, refused at once when the queue is full or the writer has stopped, and
//! answered only after its batch commits (or the deadline passes).

use std::time::Instant;

use chrono::{DateTime, Utc};
use livevote_protocol::Event;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{Command, Queued, Reply, WriterOptions};
use crate::ledger::{check_credit_call, check_vote_call};
use crate::{
    CloseOutcome, CreateOutcome, CreditCommand, CreditReceipt, StoreError, Unavailable,
    VoteCommand, VoteReceipt,
};

/// The callers' side of the writer's queue.
pub(crate) struct Queue {
    commands: mpsc::Sender<Queued>,
    options: WriterOptions,
    /// The readiness probe. Held while a probe is in flight, so that concurrent `ready` calls
    /// share one probe instead of each adding one to the queue (the endpoint is public: a
    /// flood of probes must not crowd out votes).
    last_ready: tokio::sync::Mutex<Probe>,
}

/// The readiness probe's state, behind `Queue::last_ready`.
#[derive(Debug, Default)]
struct Probe {
    /// When a probe last committed.
    committed: Option<Instant>,
    /// The answer of a probe whose caller gave up while it was still queued: the next caller
    /// waits for that one instead of queueing another, so probes never take a second place
    /// in the queue, however long the writer is blocked.
    queued: Option<oneshot::Receiver<Result<(), StoreError>>>,
}

impl Queue {
    /// A queue and the receiver the writer task serves.
    pub(crate) fn new(options: WriterOptions) -> (Queue, mpsc::Receiver<Queued>) {
        let (commands, receiver) = mpsc::channel(options.queue_capacity.max(1));
        let queue = Queue {
            commands,
            options,
            last_ready: tokio::sync::Mutex::new(Probe::default()),
        };
        (queue, receiver)
    }

    /// Sends a write and waits for its answer, at most the call deadline.
    pub(crate) async fn ask<T>(
        &self,
        command: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, StoreError> {
        self.ask_until(Instant::now() + self.options.call_deadline, command)
            .await
    }

    /// The writes every store offers, each one command for the writer: the stores differ only
    /// in their reads and their `Backend`, so these are written once, here.
    pub(crate) async fn ensure_user(
        &self,
        user_id: Uuid,
        initial_balance: i64,
    ) -> Result<i64, StoreError> {
        self.ask(|reply| Command::EnsureUser {
            user_id,
            initial_balance,
            reply,
        })
        .await
    }

    pub(crate) async fn create_event(
        &self,
        event: &Event,
        closes_at: DateTime<Utc>,
    ) -> Result<CreateOutcome, StoreError> {
        let event = Box::new(event.clone());
        self.ask(|reply| Command::CreateEvent {
            event,
            closes_at,
            reply,
        })
        .await
    }

    pub(crate) async fn cast_vote(&self, command: VoteCommand) -> Result<VoteReceipt, StoreError> {
        check_vote_call(&command)?;
        self.ask(|reply| Command::CastVote { command, reply }).await
    }

    pub(crate) async fn close_event(
        &self,
        event_id: Uuid,
        chosen_option: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<CloseOutcome, StoreError> {
        self.ask(|reply| Command::CloseEvent {
            event_id,
            chosen_option,
            now,
            reply,
        })
        .await
    }

    pub(crate) async fn credit(&self, command: CreditCommand) -> Result<CreditReceipt, StoreError> {
        check_credit_call(&command)?;
        self.ask(|reply| Command::Credit { command, reply }).await
    }

    /// Waits until a batch holding the write lock has committed, at most the ready deadline.
    /// A probe that committed while this call waited for another's counts for it too.
    pub(crate) async fn ready(&self) -> Result<(), StoreError> {
        let asked_at = Instant::now();
        let deadline = asked_at + self.options.ready_deadline;
        let Some(mut probe) = until(deadline, self.last_ready.lock()).await else {
            return Err(StoreError::Unavailable(Unavailable::DeadlineExceeded));
        };
        if probe
            .committed
            .is_some_and(|committed| committed >= asked_at)
        {
            return Ok(());
        }
        let mut answer = match probe.queued.take() {
            Some(answer) => answer,
            None => self.send_probe(deadline)?,
        };
        loop {
            match until(deadline, &mut answer).await {
                None => {
                    probe.queued = Some(answer);
                    return Err(StoreError::Unavailable(Unavailable::DeadlineExceeded));
                }
                Some(Err(_)) => return Err(StoreError::Unavailable(Unavailable::WriterStopped)),
                Some(Ok(Ok(()))) => {
                    probe.committed = Some(Instant::now());
                    return Ok(());
                }
                // An earlier caller's probe, refused because its deadline had passed by the
                // time the writer got the lock: the writer may be fine now, so ask afresh.
                Some(Ok(Err(StoreError::Unavailable(Unavailable::DeadlineExceeded))))
                    if Instant::now() < deadline =>
                {
                    answer = self.send_probe(deadline)?;
                }
                Some(Ok(Err(error))) => return Err(error),
            }
        }
    }

    fn send_probe(
        &self,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<Result<(), StoreError>>, StoreError> {
        if Instant::now() >= deadline {
            return Err(StoreError::Unavailable(Unavailable::DeadlineExceeded));
        }
        let (reply, answer) = oneshot::channel();
        self.enqueue(Queued {
            command: Command::Ready { reply },
            deadline,
        })?;
        Ok(answer)
    }

    async fn ask_until<T>(
        &self,
        deadline: Instant,
        command: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, StoreError> {
        if Instant::now() >= deadline {
            // Sent now, it would only wait in the queue to be refused.
            return Err(StoreError::Unavailable(Unavailable::DeadlineExceeded));
        }
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            command: command(reply),
            deadline,
        };
        self.enqueue(queued)?;
        match until(deadline, answer).await {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(StoreError::Unavailable(Unavailable::WriterStopped)),
            None => Err(StoreError::Unavailable(Unavailable::DeadlineExceeded)),
        }
    }

    /// Refuses at once when the queue is full or the writer has stopped, never waits.
    fn enqueue(&self, queued: Queued) -> Result<(), StoreError> {
        self.commands.try_send(queued).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => StoreError::Unavailable(Unavailable::QueueFull),
            mpsc::error::TrySendError::Closed(_) => {
                StoreError::Unavailable(Unavailable::WriterStopped)
            }
        })
    }

    /// Stops taking commands; the writer finishes what is queued, then ends.
    pub(crate) fn close(self) {
        drop(self.commands);
    }
}

/// `future`'s output if it comes before `deadline` by the wall clock. Not by tokio's timer
/// alone: under a paused test clock its time jumps ahead whenever the runtime idles, as it does
/// while the database's thread works, and the deadline would pass at once.
pub(crate) async fn until<F: std::future::Future>(
    deadline: Instant,
    future: F,
) -> Option<F::Output> {
    tokio::pin!(future);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        if let Ok(output) = tokio::time::timeout(left, &mut future).await {
            return Some(output);
        }
    }
}
