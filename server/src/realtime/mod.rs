//! Fan-out: the in-memory event and balance cache that serves snapshots, the shared
//! coalescing ticker, the shared heartbeat, cache pruning and metrics. The `/realtime` socket
//! handler that uses it is [`crate::socket`]; the channel registry and outboxes live in the
//! `livevote-hub` crate. Nothing here knows the node's `AppState`.

mod background;
mod balance_cache;
mod event_cache;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::DateTime;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use livevote_hub::{CloseRequest, Connection, Hub, HubConfig, SharedMessage, SubscribeOutcome};
use livevote_protocol::{
    close_codes, notice_codes, Channel, ChannelKind, ServerMessage, SystemNotice,
};
use livevote_storage::EventRecord;
use parking_lot::RwLock;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broker::{BrokerMessage, NoticeTarget};
use crate::clock::Clock;
use crate::config::Config;
use balance_cache::{encode_balance, BalanceCache};
use event_cache::{EventCache, Publication};

/// How long `close_all_for_restart` waits for sockets to take their last frames.
const RESTART_GRACE: Duration = Duration::from_secs(5);
/// Upper bound of the `retryAfterMs` spread of SERVER_RESTARTING.
const MAX_RETRY_AFTER_MS: u64 = 5_000;

/// The options of [`Config`] the realtime layer uses.
#[derive(Debug, Clone)]
pub(crate) struct RealtimeSettings {
    pub update_interval: Duration,
    pub heartbeat_interval: Duration,
    pub pong_timeout: Duration,
    pub recent_closed: Duration,
    pub max_connections: usize,
    pub command_rate: u32,
}

/// Why an upgrade was refused before it happened (answered 503 with Retry-After).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    MaxConnections,
    ConnectRate,
    Restarting,
}

impl Refusal {
    pub(crate) fn metric_reason(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::ConnectRate => "connect_rate",
            Refusal::Restarting => "restarting",
        }
    }
}

/// A socket's place under `--max-connections`, held for the socket's whole life.
pub(crate) struct SocketPermit {
    realtime: Arc<Realtime>,
}

impl Drop for SocketPermit {
    fn drop(&mut self) {
        self.realtime.open_sockets.fetch_sub(1, Ordering::SeqCst);
        self.realtime.socket_closed.notify_waiters();
    }
}

pub struct Realtime {
    settings: RealtimeSettings,
    clock: Clock,
    hub: Hub,
    events: RwLock<EventCache>,
    balances: BalanceCache,
    connect_limiter: DefaultDirectRateLimiter,
    /// The connect-rate bucket of sockets refused for their token (see [`Realtime::admit_socket`]).
    unauthenticated_connect_limiter: DefaultDirectRateLimiter,
    /// Sockets from admission to the end of their task (refused-with-a-close ones included).
    open_sockets: AtomicUsize,
    socket_closed: Notify,
    restarting: AtomicBool,
}

impl Realtime {
    pub fn new(config: &Config, clock: Clock) -> Arc<Self> {
        let connect_rate =
            std::num::NonZeroU32::new(config.connect_rate).unwrap_or(std::num::NonZeroU32::MIN);
        Arc::new(Realtime {
            settings: RealtimeSettings {
                update_interval: config.update_interval,
                heartbeat_interval: config.heartbeat_interval,
                pong_timeout: config.pong_timeout,
                recent_closed: config.recent_closed,
                max_connections: config.max_connections,
                command_rate: config.command_rate,
            },
            clock,
            hub: Hub::new(HubConfig::default()),
            events: RwLock::new(EventCache::default()),
            balances: BalanceCache::default(),
            unauthenticated_connect_limiter: RateLimiter::direct(
                Quota::per_second(connect_rate).allow_burst(connect_rate),
            ),
            connect_limiter: RateLimiter::direct(
                Quota::per_second(connect_rate).allow_burst(connect_rate),
            ),
            open_sockets: AtomicUsize::new(0),
            socket_closed: Notify::new(),
            restarting: AtomicBool::new(false),
        })
    }

    /// Loads the events a node knows at start-up (open ones and recently closed ones).
    pub fn load(&self, records: Vec<EventRecord>) {
        let mut events = self.events.write();
        for record in records {
            events.load(record);
        }
    }

    /// Applies one change published through the broker: cache, then sockets. The cache is
    /// updated before the publish so that a concurrent subscription's snapshot either already
    /// has the change or receives the publish (the outboxes drop what arrives twice).
    pub fn apply(&self, message: &BrokerMessage) {
        match message {
            BrokerMessage::EventCreated { event } => {
                let publication = self.events.write().created(event);
                if let Publication::Created(route, created) = publication {
                    self.hub.publish_event_created(route, &created);
                }
            }
            BrokerMessage::TotalsChanged {
                event_id,
                totals,
                seq,
            } => {
                // Delivered by the next coalescing tick, at most one per channel per interval.
                self.events.write().totals_changed(*event_id, totals, *seq);
            }
            BrokerMessage::EventClosed {
                event_id,
                result,
                seq,
                closed_at_ms,
            } => {
                let closed_at = DateTime::from_timestamp_millis(*closed_at_ms)
                    .unwrap_or_else(|| self.clock.now());
                let publication = self
                    .events
                    .write()
                    .closed(*event_id, result, *seq, closed_at);
                if let Publication::Closed(route, closed) = publication {
                    self.hub.publish_event_closed(route, &closed);
                }
            }
            BrokerMessage::BalanceChanged {
                user_id,
                balance,
                version,
            } => {
                if self.balances.set(*user_id, *balance, *version) {
                    self.hub.publish_balance(
                        *user_id,
                        *version,
                        &encode_balance(*user_id, *balance),
                    );
                }
            }
            BrokerMessage::Notice {
                target,
                code,
                message,
            } => {
                let channel_name = match target {
                    NoticeTarget::Everyone => "*".to_owned(),
                    NoticeTarget::Channel(channel) => channel.to_string(),
                };
                let notice = notice_message(code, message, Some(channel_name));
                match target {
                    NoticeTarget::Everyone => self.hub.broadcast(&notice),
                    NoticeTarget::Channel(channel) => self.hub.publish_to_channel(channel, &notice),
                }
            }
        }
    }

    /// Starts the shared timers (coalescing flush, heartbeats, cache pruning and metrics).
    pub fn spawn_background(self: &Arc<Self>, shutdown: CancellationToken) {
        tokio::spawn(background::run_coalescer(self.clone(), shutdown.clone()));
        tokio::spawn(background::run_heartbeat(self.clone(), shutdown.clone()));
        tokio::spawn(background::run_housekeeping(self.clone(), shutdown));
    }

    /// Sends every socket SERVER_RESTARTING with a `retryAfterMs` drawn uniformly from
    /// 0–5,000 ms, closes it with 1012, and waits (bounded) for the frames to leave.
    pub async fn close_all_for_restart(&self) {
        self.restarting.store(true, Ordering::SeqCst);
        for connection in self.hub.connections() {
            close_for_restart(&connection);
        }
        self.wait_for_sockets_closed(tokio::time::Instant::now() + RESTART_GRACE)
            .await;
    }

    /// Sockets open on this node (including ones being refused with a close code).
    pub fn connection_count(&self) -> usize {
        self.open_sockets.load(Ordering::SeqCst)
    }

    /// Whether the ledger already knows this user (so a request need not ask the store).
    pub fn is_user_known(&self, user_id: Uuid) -> bool {
        self.balances.contains(user_id)
    }

    /// Records a user's balance as the store reported it (known users, `user:` snapshots).
    /// A balance the broker already delivered is newer and is kept.
    pub fn remember_balance(&self, user_id: Uuid, balance: i64) {
        if let Some(version) = self.balances.insert_if_absent(user_id, balance) {
            self.hub
                .publish_balance(user_id, version, &encode_balance(user_id, balance));
        }
    }

    /// A socket of `user_id` is being served: its user stays cached until the socket ends.
    pub(crate) fn user_socket_opened(&self, user_id: Uuid) {
        self.balances.socket_opened(user_id);
    }

    /// The socket of `user_id` that [`Realtime::user_socket_opened`] counted has ended.
    pub(crate) fn user_socket_closed(&self, user_id: Uuid) {
        self.balances.socket_closed(user_id);
    }

    /// Users whose balance this node caches (and so shows on sockets).
    pub fn cached_balance_users(&self) -> Vec<Uuid> {
        self.balances.users()
    }

    /// Cached users with a socket open on this node.
    pub fn watched_balance_users(&self) -> Vec<Uuid> {
        self.balances.users_with_sockets()
    }

    /// One sweep of the balance cache (see `BalanceCache::sweep`); returns the users left.
    pub fn sweep_balances(&self) -> usize {
        self.balances.sweep()
    }

    /// The fan-out hub (diagnostics and tests).
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Events held in memory for snapshots (diagnostics and tests).
    /// Open events of one streamer this node holds (see `--max-open-events`).
    pub fn open_events_of(&self, streamer_id: Uuid) -> usize {
        self.events.read().open_events_of(streamer_id)
    }

    /// Whether this node holds the event (a change to one it does not hold is loaded first,
    /// see `broker::apply_loading_unknown`).
    pub(crate) fn knows_event(&self, event_id: Uuid) -> bool {
        self.events.read().contains(event_id)
    }

    pub fn cached_event_count(&self) -> usize {
        self.events.read().len()
    }

    pub(crate) fn settings(&self) -> &RealtimeSettings {
        &self.settings
    }

    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    pub(crate) fn is_restarting(&self) -> bool {
        self.restarting.load(Ordering::SeqCst)
    }

    /// Admits one more socket, or says why not. Sockets whose token checked out and sockets
    /// that will only be told why they are refused draw on separate connect-rate buckets, so
    /// that a flood of bad tokens cannot keep real clients out.
    pub(crate) fn admit_socket(
        self: &Arc<Self>,
        authenticated: bool,
    ) -> Result<SocketPermit, Refusal> {
        if self.is_restarting() {
            return Err(Refusal::Restarting);
        }
        let reserved = self
            .open_sockets
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |open| {
                (open < self.settings.max_connections).then_some(open + 1)
            });
        if reserved.is_err() {
            return Err(Refusal::MaxConnections);
        }
        let permit = SocketPermit {
            realtime: self.clone(),
        };
        let limiter = if authenticated {
            &self.connect_limiter
        } else {
            &self.unauthenticated_connect_limiter
        };
        if limiter.check().is_err() {
            return Err(Refusal::ConnectRate);
        }
        Ok(permit)
    }

    async fn wait_for_sockets_closed(&self, deadline: tokio::time::Instant) {
        loop {
            let closed = self.socket_closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.connection_count() == 0 {
                return;
            }
            tokio::select! {
                () = closed => {}
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// Subscribes a connection to a channel with its snapshot, served from memory.
    pub(crate) fn subscribe(
        &self,
        connection: &Arc<Connection>,
        channel: Channel,
    ) -> SubscribeOutcome {
        let recent_closed = chrono::Duration::from_std(self.settings.recent_closed)
            .unwrap_or(chrono::Duration::MAX);
        let closed_since = self.clock.now() - recent_closed;
        self.hub
            .subscribe(connection, channel, |snapshot| match channel.kind {
                ChannelKind::Streamer | ChannelKind::Game => {
                    self.events
                        .read()
                        .fill_snapshot(&channel, closed_since, snapshot);
                }
                ChannelKind::User => {
                    // Version 0: a never-seen user's zero is older than any real balance.
                    let (balance, version) = self.balances.get(channel.id).unwrap_or((0, 0));
                    snapshot.balance(channel.id, version, &encode_balance(channel.id, balance));
                }
            })
    }

    pub(crate) fn knows_balance(&self, user_id: Uuid) -> bool {
        self.balances.contains(user_id)
    }
}

/// Queues SERVER_RESTARTING with this socket's own `retryAfterMs`, then the 1012 close.
pub(crate) fn close_for_restart(connection: &Connection) {
    use rand::Rng;
    let retry_after_ms = rand::thread_rng().gen_range(0..=MAX_RETRY_AFTER_MS);
    let notice = SharedMessage::encode(&ServerMessage::SystemNotice(SystemNotice {
        code: notice_codes::SERVER_RESTARTING.into(),
        message: "the server is restarting; reconnect after retryAfterMs".into(),
        channel: None,
        retry_after_ms: Some(retry_after_ms),
    }));
    connection.send_then_close(
        &notice,
        CloseRequest {
            code: close_codes::SERVER_RESTARTING,
            reason: "server restarting",
            deliver_pending: true,
        },
    );
}

pub(crate) fn notice_message(code: &str, message: &str, channel: Option<String>) -> SharedMessage {
    SharedMessage::encode(&ServerMessage::SystemNotice(SystemNotice {
        code: code.to_owned(),
        message: message.to_owned(),
        channel,
        retry_after_ms: None,
    }))
}
