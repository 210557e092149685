//! The state every handler, socket and background task shares, built once at start-up.

use std::ops::Deref;
use std::sync::Arc;

use livevote_storage::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::broker::Broker;
use crate::clock::Clock;
use crate::config::Config;
use crate::limits::{AuthFailureLimiter, UserRateLimiter, VoteRateLimiter};
use crate::realtime::Realtime;
use crate::timers::EventTimers;

/// Cheap to clone: one `Arc` around [`Shared`].
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub config: Config,
    pub clock: Clock,
    pub auth: Authenticator,
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
    pub realtime: Arc<Realtime>,
    pub timers: EventTimers,
    /// What asks the task that re-reads cached balances from the store (see `node::resync`).
    pub(crate) balance_refresh: crate::balance_refresh::BalanceRefresh,
    /// Votes per user (`--vote-rate`): per node, and across the cluster with Redis.
    pub vote_limiter: VoteRateLimiter,
    /// `GET /api/events` per user (`--list-rate`).
    pub list_limiter: UserRateLimiter,
    /// Wrong API keys per client address at `/api/auth` (`--auth-failure-limit`).
    pub auth_failures: AuthFailureLimiter,
    pub metrics: PrometheusHandle,
    /// Cancelled when the server begins shutting down.
    pub shutdown: CancellationToken,
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}
