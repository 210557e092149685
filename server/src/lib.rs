//! livevote-server as a library: [`start`] builds the shared state and its background tasks,
//! [`app`] the router, [`bind`] a listener and [`run`] serves it until a shutdown signal.
//! `main.rs` is a thin wrapper, and tests bind port 0.

// The public surface is what `main`, the tests, the fuzz targets and the demo need: the
// configuration, tokens, the broker's messages, the error body, the HTTP inputs and the state.
// How a node applies a change, its caches, sockets and timers stay inside.
pub mod auth;
mod balance_refresh;
pub mod broker;
mod clock;
pub mod config;
pub mod demo;
pub mod error;
pub mod http;
mod limits;
mod node;
mod realtime;
pub mod serve;
mod socket;
pub mod state;
mod timers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::Router;
use livevote_storage::postgres::PostgresStore;
use livevote_storage::sqlite::SqliteStore;
use livevote_storage::{Store, StoreError};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::broker::{Broker, BrokerError, MemoryBroker, RedisBroker};
use crate::clock::Clock;
use crate::config::Config;
use crate::limits::{AuthFailureLimiter, ClusterRateLimiter, UserRateLimiter, VoteRateLimiter};
use crate::realtime::Realtime;
use crate::state::{AppState, Shared};
use crate::timers::EventTimers;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    // `main` prints the chain of causes (`{:#}`), so each level names only itself.
    #[error("storage")]
    Storage(#[from] StoreError),
    #[error("broker")]
    Broker(#[from] BrokerError),
    #[error("listen")]
    Io(#[from] std::io::Error),
}

/// Connects storage, loads what is live into memory, arms timers and starts the background
/// tasks (broker applier, timers, realtime tickers). Everything stops when `state.shutdown`
/// is cancelled.
pub async fn start(config: Config) -> Result<AppState, StartError> {
    let clock = Clock::new();
    // `Config::finish` accepted only these two kinds of URL.
    let store: Arc<dyn Store> = if config.database_url.starts_with("sqlite:") {
        Arc::new(SqliteStore::connect(&config.database_url).await?)
    } else {
        Arc::new(PostgresStore::connect(&config.database_url).await?)
    };
    // With Redis the node subscribes before it loads what is live, and its applier reloads
    // once the subscription is proven: nothing committed in between is missed.
    let (broker, inbound): (Arc<dyn Broker>, Inbound) = if config.broker_url == "memory" {
        let (broker, receiver) = MemoryBroker::new();
        (Arc::new(broker), Inbound::Memory(receiver))
    } else {
        let (broker, inbound) =
            RedisBroker::connect(&config.broker_url, &config.broker_prefix).await?;
        (Arc::new(broker), Inbound::Redis(inbound))
    };
    // The vote rate counts across the cluster in the broker's Redis, on a connection of its
    // own so that a vote never queues behind the broker's publications.
    let cluster_vote_rate = if config.broker_url == "memory" {
        None
    } else {
        let limiter =
            ClusterRateLimiter::new(&config.broker_url, &config.broker_prefix, config.vote_rate)
                .map_err(|error| BrokerError::Configuration(format!("--broker-url: {error}")))?;
        Some(limiter)
    };
    let realtime = Realtime::new(&config, clock.clone());
    let recent_closed =
        chrono::Duration::from_std(config.recent_closed).unwrap_or(chrono::Duration::MAX);
    let live = store.live_events(clock.now() - recent_closed).await?;
    let (timers, timer_queue) = EventTimers::new();
    for record in &live {
        if record.status == livevote_protocol::EventStatus::Open {
            timers.arm(record.event.id, record.closes_at);
        }
    }
    realtime.load(live);
    let shutdown = CancellationToken::new();
    let secret = config.jwt_secret.clone().unwrap_or_default();
    let state = AppState::new(Shared {
        auth: Authenticator::new(&secret),
        vote_limiter: VoteRateLimiter::new(
            UserRateLimiter::new(config.vote_rate, "votes"),
            cluster_vote_rate,
        ),
        list_limiter: UserRateLimiter::new(config.list_rate, "event listings"),
        auth_failures: AuthFailureLimiter::new(config.auth_failure_limit),
        config,
        clock,
        store,
        broker,
        realtime: realtime.clone(),
        timers,
        balance_refresh: balance_refresh::BalanceRefresh::default(),
        metrics: metrics_handle(),
        shutdown: shutdown.clone(),
    });

    let applier_state = state.clone();
    match inbound {
        Inbound::Memory(mut receiver) => {
            tokio::spawn(async move {
                while let Some(message) = receiver.recv().await {
                    applier_state.apply(&message);
                }
            });
        }
        Inbound::Redis(inbound) => {
            tokio::spawn(state.clone().run_balance_refresh());
            tokio::spawn(broker::redis::run_applier(
                Arc::new(applier_state),
                inbound,
                shutdown.clone(),
            ));
        }
    }
    let closing_state = state.clone();
    tokio::spawn(timers::run_timers(
        state.clock.clone(),
        state.timers.clone(),
        timer_queue,
        shutdown.clone(),
        move |event_id| {
            let state = closing_state.clone();
            async move { state.close_due_event(event_id).await }
        },
    ));
    realtime.spawn_background(shutdown.clone());
    let housekeeping_state = state.clone();
    tokio::spawn(async move {
        let mut every_minute = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tokio::select! {
                () = housekeeping_state.shutdown.cancelled() => return,
                _ = every_minute.tick() => {
                    housekeeping_state.vote_limiter.forget_idle_users();
                    housekeeping_state.list_limiter.forget_idle_users();
                    housekeeping_state.auth_failures.forget_expired(std::time::Instant::now());
                }
            }
        }
    });
    Ok(state)
}

/// What the node's one applier reads from.
enum Inbound {
    Memory(tokio::sync::mpsc::UnboundedReceiver<broker::BrokerMessage>),
    Redis(broker::redis::RedisInbound),
}

/// The Prometheus recorder is process-wide; every server in this process shares it.
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding program); then ours stays
            // local and /metrics shows only what is recorded through it.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// The whole application: API, socket endpoint, and (with --demo) the demo's pages.
pub fn app(state: AppState) -> Router {
    let demo = state.config.demo;
    let router = http::routes(&state).with_state(state.clone());
    if demo {
        router.merge(demo::routes(&state.config))
    } else {
        router
    }
}

/// Binds with a deep accept backlog: tokio's default of 128 makes a burst of connects wait out
/// a one-second SYN retransmit.
pub fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(address)?;
    socket.listen(8192)
}

/// Serves plain http/ws until `shutdown` resolves, then: stops accepting, tells every socket
/// SERVER_RESTARTING and closes it with 1012, finishes in-flight requests and returns.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve(listener, state, None, shutdown).await
}

/// [`run`], over TLS when `tls` is given (see [`serve::load_tls`]); the same bounds and the
/// same shutdown sequence either way.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    tls: Option<serve::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = app(state.clone());
    serve::serve_connections(listener, state, router, tls, shutdown).await
}
