//! When the node re-reads cached balances from the store: each reload asks for a pass, and
//! says whether that pass must cover every cached user or only the users with a socket here.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tokio::sync::Notify;

use crate::broker::Resync;

/// Routine reloads between two that re-read every cached user rather than only the users with
/// a socket here: at 5 s a reload, a cached user without a socket is healed within 30 s.
const ROUTINE_RELOADS_PER_FULL_PASS: u32 = 6;

/// What a reload asks of the balance refresh task (see `node/resync.rs::run_balance_refresh`):
/// a pass, and whether it covers every cached user.
#[derive(Debug, Default)]
pub(crate) struct BalanceRefresh {
    wake: Notify,
    /// Set by a reload that wants every cached user re-read; taken by the next pass.
    everyone: AtomicBool,
    routine_reloads: AtomicU32,
}

impl BalanceRefresh {
    /// Asks for a pass. One asked for while a pass runs is remembered and runs right after it.
    pub(crate) fn ask(&self, why: Resync) {
        let full_pass_due = match why {
            Resync::AfterDoubt => true,
            Resync::Routine => self
                .routine_reloads
                .fetch_add(1, Ordering::SeqCst)
                .is_multiple_of(ROUTINE_RELOADS_PER_FULL_PASS),
        };
        if full_pass_due {
            self.everyone.store(true, Ordering::SeqCst);
        }
        self.wake.notify_one();
    }

    /// Waits for the next ask (or returns at once for one made since the last pass).
    pub(crate) async fn asked(&self) {
        self.wake.notified().await;
    }

    /// Whether the pass about to run covers every cached user; a later ask sets it again.
    pub(crate) fn take_everyone(&self) -> bool {
        self.everyone.swap(false, Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routine_reloads_read_every_cached_user_now_and_then_and_a_doubt_always() {
        let refresh = BalanceRefresh::default();
        refresh.ask(Resync::Routine);
        assert!(
            refresh.take_everyone(),
            "a node's first reload reads everyone"
        );
        for reload in 1..ROUTINE_RELOADS_PER_FULL_PASS {
            refresh.ask(Resync::Routine);
            assert!(
                !refresh.take_everyone(),
                "routine reload {reload} reads sockets only"
            );
        }
        refresh.ask(Resync::Routine);
        assert!(refresh.take_everyone(), "the full pass comes round again");
        refresh.ask(Resync::Routine);
        refresh.ask(Resync::AfterDoubt);
        refresh.ask(Resync::Routine);
        assert!(
            refresh.take_everyone(),
            "a doubt asked for during a pass is not lost"
        );
        assert!(!refresh.take_everyone(), "taken once");
    }
}
