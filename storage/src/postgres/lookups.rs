//! One query for the single-user balance reads that arrive together: the first request of every
//! user a node has not seen asks for that user's balance, and when an event opens on a busy
//! stream thousands of viewers do so in the same second.
//!
//! Read one by one over the reader pool, those lookups queued behind each other: measured with
//! 10,000 voters new to two of three nodes, the first second of 5,000 votes/s had answers of
//! 145 ms against 25–49 ms once every voter was known. Here one task takes whatever lookups
//! are waiting (up to [`BALANCES_PER_QUERY`]) and answers them all from one probe of
//! `ledger_by_user` per user; a lookup that finds none waiting goes out at once, so a quiet
//! node pays nothing for it.

use std::collections::HashMap;

use sqlx::postgres::PgPool;
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::{QueryCounter, StoreError, Unavailable, VersionedBalance, BALANCES_PER_QUERY};

/// Lookups that may wait for the task before callers wait to hand theirs over.
const WAITING_LOOKUPS: usize = 8_192;

/// The balance of one user, `None` when the ledger does not know the user.
type Answer = Result<Option<i64>, StoreError>;

struct Lookup {
    user_id: Uuid,
    reply: oneshot::Sender<Answer>,
}

/// The handle of the task that answers coalesced balance lookups; it stops with the last handle.
pub(crate) struct BalanceLookups {
    lookups: mpsc::Sender<Lookup>,
    task: JoinHandle<()>,
}

impl BalanceLookups {
    pub(crate) fn new(readers: PgPool, queries: QueryCounter) -> Self {
        let (lookups, receiver) = mpsc::channel(WAITING_LOOKUPS);
        let task = tokio::spawn(answer_lookups(receiver, readers, queries));
        BalanceLookups { lookups, task }
    }

    /// The user's latest balance as committed, read together with whatever other lookups are
    /// waiting.
    pub(crate) async fn balance(&self, user_id: Uuid) -> Answer {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Unavailable(Unavailable::WriterStopped);
        self.lookups
            .send(Lookup { user_id, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

impl Drop for BalanceLookups {
    fn drop(&mut self) {
        // Lookups still waiting are answered "stopped" by their dropped reply channels.
        self.task.abort();
    }
}

async fn answer_lookups(
    mut receiver: mpsc::Receiver<Lookup>,
    readers: PgPool,
    queries: QueryCounter,
) {
    let mut waiting = Vec::with_capacity(BALANCES_PER_QUERY);
    while receiver.recv_many(&mut waiting, BALANCES_PER_QUERY).await > 0 {
        // Repeats are fine: the probe reads each distinct user once.
        let user_ids: Vec<Uuid> = waiting.iter().map(|lookup| lookup.user_id).collect();
        queries.add(1);
        match read_balances(&readers, &user_ids).await {
            Ok(balances) => {
                let balances: HashMap<Uuid, i64> = balances
                    .into_iter()
                    .map(|found| (found.user_id, found.balance))
                    .collect();
                for lookup in waiting.drain(..) {
                    // A caller that stopped waiting has nobody to tell.
                    let _ = lookup
                        .reply
                        .send(Ok(balances.get(&lookup.user_id).copied()));
                }
            }
            Err(error) => {
                for lookup in waiting.drain(..) {
                    let _ = lookup.reply.send(Err(crate::batch::same_failure(&error)));
                }
            }
        }
    }
}

/// Each user's latest entry (balance and version), one backward probe of `ledger_by_user` per
/// user whatever the statistics say: a join the planner may turn into a scan of the whole
/// (ever-growing) ledger once the users asked about hold a good share of its rows, as the
/// periodic resync's chunks of every cached user do.
pub(crate) async fn read_balances(
    readers: &PgPool,
    user_ids: &[Uuid],
) -> Result<Vec<VersionedBalance>, StoreError> {
    let rows = sqlx::query(
        "SELECT wanted.user_id, latest.balance, latest.id \
         FROM (SELECT DISTINCT user_id FROM UNNEST($1::uuid[]) AS given (user_id)) \
         AS wanted CROSS JOIN LATERAL (SELECT balance, id FROM ledger \
         WHERE ledger.user_id = wanted.user_id ORDER BY id DESC LIMIT 1) AS latest",
    )
    .bind(user_ids)
    .fetch_all(readers)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(VersionedBalance {
                user_id: row.try_get("user_id")?,
                balance: row.try_get("balance")?,
                version: u64::try_from(row.try_get::<i64, _>("id")?).unwrap_or(0),
            })
        })
        .collect()
}
