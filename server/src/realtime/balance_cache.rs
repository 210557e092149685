//! The node's memory of balances: the users it has seen, their balance and the ledger entry
//! behind it, so that a socket's `user:` snapshot and a vote's known-user check cost no query.

use std::collections::HashMap;

use livevote_hub::SharedMessage;
use livevote_protocol::{BalanceUpdated, ServerMessage};
use parking_lot::Mutex;
use uuid::Uuid;

#[derive(Debug, Clone, Copy)]
struct CachedBalance {
    balance: i64,
    version: u64,
    /// Sockets of this user open on this node: their user stays cached, so that reconnecting
    /// them never asks the store.
    open_sockets: u32,
    /// Sweeps since the entry was last used (see [`BalanceCache::sweep`]).
    idle_sweeps: u8,
}

impl CachedBalance {
    fn new(balance: i64, version: u64) -> Self {
        CachedBalance {
            balance,
            version,
            open_sockets: 0,
            idle_sweeps: 0,
        }
    }
}

/// Sweeps an entry without sockets may sit unused before it is dropped.
const IDLE_SWEEPS_BEFORE_DROP: u8 = 2;

const BALANCE_SHARDS: usize = 16;

/// Balances of users this node has seen (a user is known to the ledger once it is here).
/// `version` is the ledger entry behind the balance (see `BrokerMessage::BalanceChanged`); it
/// orders one user's balances here and in the outboxes' latest-value slots.
#[derive(Debug)]
pub(crate) struct BalanceCache {
    shards: Box<[Mutex<HashMap<Uuid, CachedBalance>>]>,
}

impl Default for BalanceCache {
    fn default() -> Self {
        BalanceCache {
            shards: (0..BALANCE_SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

/// The version of a balance read from the store without naming its entry: older than any change.
const UNVERSIONED: u64 = 0;

impl BalanceCache {
    fn shard(&self, user_id: Uuid) -> &Mutex<HashMap<Uuid, CachedBalance>> {
        &self.shards[user_id.as_u64_pair().1 as usize % BALANCE_SHARDS]
    }

    /// Whether the user is cached; using an entry keeps it from the next sweeps.
    pub(crate) fn contains(&self, user_id: Uuid) -> bool {
        self.shard(user_id)
            .lock()
            .get_mut(&user_id)
            .map(|cached| cached.idle_sweeps = 0)
            .is_some()
    }

    /// Every cached user, for a resync from the store; reading the list keeps no one.
    pub(crate) fn users(&self) -> Vec<Uuid> {
        self.users_where(|_| true)
    }

    /// Cached users with a socket open on this node; reading the list keeps no one.
    pub(crate) fn users_with_sockets(&self) -> Vec<Uuid> {
        self.users_where(|cached| cached.open_sockets > 0)
    }

    fn users_where(&self, wanted: impl Fn(&CachedBalance) -> bool) -> Vec<Uuid> {
        self.shards
            .iter()
            .flat_map(|shard| {
                shard
                    .lock()
                    .iter()
                    .filter(|(_, cached)| wanted(cached))
                    .map(|(user_id, _)| *user_id)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The balance and its version, if known.
    pub(crate) fn get(&self, user_id: Uuid) -> Option<(i64, u64)> {
        self.shard(user_id).lock().get_mut(&user_id).map(|cached| {
            cached.idle_sweeps = 0;
            (cached.balance, cached.version)
        })
    }

    /// A change from the ledger; kept only if newer than what is cached. Returns whether it was.
    pub(crate) fn set(&self, user_id: Uuid, balance: i64, version: u64) -> bool {
        let mut shard = self.shard(user_id).lock();
        match shard.get_mut(&user_id) {
            Some(cached) if cached.version >= version => false,
            Some(cached) => {
                cached.balance = balance;
                cached.version = version;
                cached.idle_sweeps = 0;
                true
            }
            None => {
                shard.insert(user_id, CachedBalance::new(balance, version));
                true
            }
        }
    }

    /// A socket of `user_id` opened on this node (after the user was made known).
    pub(crate) fn socket_opened(&self, user_id: Uuid) {
        self.change_open_sockets(user_id, |count| count.saturating_add(1));
    }

    /// A socket of `user_id` closed on this node.
    pub(crate) fn socket_closed(&self, user_id: Uuid) {
        self.change_open_sockets(user_id, |count| count.saturating_sub(1));
    }

    fn change_open_sockets(&self, user_id: Uuid, change: impl FnOnce(u32) -> u32) {
        if let Some(cached) = self.shard(user_id).lock().get_mut(&user_id) {
            cached.open_sockets = change(cached.open_sockets);
            cached.idle_sweeps = 0;
        }
    }

    /// Drops users with no socket on this node that nothing has used for
    /// [`IDLE_SWEEPS_BEFORE_DROP`] sweeps, so that the cache holds the users who are around
    /// rather than every user the node ever saw. A dropped user costs one store query when it
    /// comes back. Returns how many entries are left.
    pub(crate) fn sweep(&self) -> usize {
        let mut left = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            shard.retain(|_, cached| {
                if cached.open_sockets > 0 {
                    return true;
                }
                cached.idle_sweeps = cached.idle_sweeps.saturating_add(1);
                cached.idle_sweeps <= IDLE_SWEEPS_BEFORE_DROP
            });
            left += shard.len();
        }
        left
    }

    /// A balance read from the store: kept only if nothing arrived meanwhile. Returns the
    /// version when it was inserted.
    pub(crate) fn insert_if_absent(&self, user_id: Uuid, balance: i64) -> Option<u64> {
        let mut shard = self.shard(user_id).lock();
        if shard.contains_key(&user_id) {
            return None;
        }
        shard.insert(user_id, CachedBalance::new(balance, UNVERSIONED));
        Some(UNVERSIONED)
    }
}

pub(crate) fn encode_balance(user_id: Uuid, balance: i64) -> SharedMessage {
    SharedMessage::encode(&ServerMessage::BalanceUpdated(BalanceUpdated {
        balance,
        user_id: Some(user_id),
    }))
}

#[cfg(test)]
mod balance_tests {
    use super::*;

    #[test]
    fn a_sweep_keeps_users_with_sockets_and_drops_users_idle_for_long() {
        let cache = BalanceCache::default();
        let (watching, idle, busy) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        for user in [watching, idle, busy] {
            cache.insert_if_absent(user, 100);
        }
        cache.socket_opened(watching);
        assert_eq!(cache.users_with_sockets(), vec![watching]);
        assert_eq!(cache.users().len(), 3);
        for sweep in 1..=IDLE_SWEEPS_BEFORE_DROP {
            cache.sweep();
            assert!(cache.get(busy).is_some(), "in use before sweep {sweep}");
        }
        // `idle` sat through every sweep unused; `busy` was read before each one.
        assert_eq!(cache.sweep(), 2);
        assert!(!cache.contains(idle), "dropped after it went unused");
        assert!(cache.contains(watching) && cache.contains(busy));
        // Sockets keep their user however long nothing else touches it.
        for _ in 0..10 {
            cache.sweep();
        }
        assert_eq!(cache.get(watching), Some((100, UNVERSIONED)));
        assert!(!cache.contains(busy));
        // Once its socket is gone, the user goes the way of the others.
        cache.socket_closed(watching);
        for _ in 0..=IDLE_SWEEPS_BEFORE_DROP {
            cache.sweep();
        }
        assert_eq!(cache.sweep(), 0);
    }

    #[test]
    fn balance_changes_keep_their_order_across_a_sweep() {
        let cache = BalanceCache::default();
        let user = Uuid::new_v4();
        assert!(cache.set(user, 90, 5));
        assert!(!cache.set(user, 95, 4), "an older change is refused");
        cache.sweep();
        assert!(cache.set(user, 80, 6));
        assert_eq!(cache.get(user), Some((80, 6)));
    }
}
