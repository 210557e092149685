//! Background WAL checkpoints on a connection of their own.
//!
//! Copying WAL frames back into the database file is a large share of a busy writer's work.
//! SQLite would do it inside the commit that crosses `wal_autocheckpoint`, on the writer's
//! thread, stalling every vote of the batch behind it; here a separate connection does it on
//! another thread while the writer carries on (a PASSIVE checkpoint never blocks writers).

use std::time::Duration;

use sqlx::{Connection, SqliteConnection};
use tokio::sync::oneshot;

const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Checkpoints every [`CHECKPOINT_EVERY`] until `stop` resolves (its sender is dropped).
pub(crate) async fn run(mut connection: SqliteConnection, mut stop: oneshot::Receiver<()>) {
    let mut ticks = tokio::time::interval(CHECKPOINT_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticks.tick() => {}
        }
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut connection)
            .await
        {
            tracing::warn!(%error, "a WAL checkpoint failed; the next one will retry");
        }
    }
    if let Err(error) = connection.close().await {
        tracing::warn!(%error, "closing the checkpoint connection failed");
    }
}
