//! The broker for several nodes, over Redis PUB/SUB: a node applies each change locally, then
//! publishes it for the others; what arrives from the others goes through the same ordered
//! applier. Redis may drop messages (PUB/SUB is at most once, and a cut connection loses what
//! was in flight), so the store stays the truth: a node that notices it may have missed
//! something (a disconnection, a gap in another node's envelope numbers, a probe of its own
//! subscription that never came back) reloads what is live from the store, and does so every
//! few seconds anyway (anti-entropy) so that staleness is bounded even when nothing noticed.
//! `/readyz` says 503 from the moment the node doubts its view until a reload after a proven
//! subscription has finished.
//!
//! Every change goes on one channel, `{prefix}:changes`: each node needs all of them, and one
//! channel keeps one sender's envelopes in publish order, which is what makes a gap in `n`
//! mean loss. Probes go on `{prefix}:node:{id}`, which only that node reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Broker, BrokerError, BrokerMessage, ChangeApplier, Resync};

/// How often a trusted node proves its subscription and reloads from the store.
const ANTI_ENTROPY_INTERVAL: Duration = Duration::from_secs(5);
/// How often a node that doubts its view tries again (and reloads from the store meanwhile).
const DOUBTFUL_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// A probe not back within this long means the subscription is not delivering.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Any one Redis command (connect, publish, ping) gives up after this long.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Messages at most in one envelope.
const ENVELOPE_MESSAGES: usize = 256;

/// What a node publishes: a batch of its changes, numbered. `node` tells a node its own
/// envelopes (dropped, it applied them already); `boot` tells a restarted sender, whose `n`
/// starts again at 1; a jump in `n` from one sender means envelopes were lost.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    node: Uuid,
    boot: i64,
    n: u64,
    msgs: Vec<BrokerMessage>,
}

/// Whether the node can trust its view, and why not (what `/readyz` says).
#[derive(Debug)]
struct Trust {
    trusted: AtomicBool,
    doubt: Mutex<&'static str>,
}

impl Trust {
    fn doubt(&self, reason: &'static str) {
        if self.trusted.swap(false, Ordering::SeqCst) {
            tracing::warn!(
                reason,
                "the node's view may be stale; resyncing from the store"
            );
        }
        metrics::counter!("livevote_broker_doubts_total", "reason" => reason).increment(1);
        *self.doubt.lock() = reason;
    }

    fn restore(&self) {
        if !self.trusted.swap(true, Ordering::SeqCst) {
            tracing::info!("the node's view is resynced; ready");
        }
    }
}

/// One change on its way to Redis; `taken` hears whether Redis took its envelope, for changes
/// that nothing else makes durable (notices).
struct Outgoing {
    message: BrokerMessage,
    taken: Option<oneshot::Sender<Result<(), String>>>,
}

/// The publishing side, held by the node's state.
pub struct RedisBroker {
    local: mpsc::UnboundedSender<BrokerMessage>,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    connection: ConnectionManager,
    trust: Arc<Trust>,
}

/// The receiving side, handed to [`run_applier`].
pub struct RedisInbound {
    local: mpsc::UnboundedReceiver<BrokerMessage>,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
    connection: ConnectionManager,
    node: Uuid,
    changes_channel: String,
    node_channel: String,
    trust: Arc<Trust>,
}

impl RedisBroker {
    /// Connects (RESP3, so that pushes and automatic resubscription work), subscribes, and
    /// starts the publishing task. The node starts out not trusting its view: the applier's
    /// first probe and reload make it ready, so nothing committed between the node's load and
    /// its subscription is missed.
    pub async fn connect(
        url: &str,
        prefix: &str,
    ) -> Result<(RedisBroker, RedisInbound), BrokerError> {
        let configuration = |error: ::redis::RedisError| {
            BrokerError::Configuration(format!("--broker-url: {error}"))
        };
        let mut info = url.into_connection_info().map_err(configuration)?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        info = info.set_redis_settings(settings);
        let client = ::redis::Client::open(info).map_err(configuration)?;
        let (push_sender, pushes) = mpsc::unbounded_channel();
        let manager_config = ConnectionManagerConfig::new()
            .set_push_sender(push_sender)
            .set_automatic_resubscription()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_max_delay(Duration::from_secs(1));
        let unreachable = |error: ::redis::RedisError| BrokerError::Unreachable(error.to_string());
        let mut connection = ConnectionManager::new_with_config(client, manager_config)
            .await
            .map_err(unreachable)?;
        let node = Uuid::new_v4();
        let changes_channel = format!("{prefix}:changes");
        let node_channel = format!("{prefix}:node:{node}");
        connection
            .subscribe(vec![changes_channel.clone(), node_channel.clone()])
            .await
            .map_err(unreachable)?;
        let trust = Arc::new(Trust {
            trusted: AtomicBool::new(false),
            doubt: Mutex::new("starting"),
        });
        let (local, local_receiver) = mpsc::unbounded_channel();
        let (outgoing, outgoing_receiver) = mpsc::unbounded_channel();
        tokio::spawn(run_publisher(
            connection.clone(),
            changes_channel.clone(),
            node,
            outgoing_receiver,
        ));
        tracing::info!(%node, prefix, "connected to the Redis broker");
        Ok((
            RedisBroker {
                local,
                outgoing,
                connection: connection.clone(),
                trust: trust.clone(),
            },
            RedisInbound {
                local: local_receiver,
                pushes,
                connection,
                node,
                changes_channel,
                node_channel,
                trust,
            },
        ))
    }
}

#[async_trait]
impl Broker for RedisBroker {
    /// Applies locally first (through the applier, in order), then queues for the other
    /// nodes. A committed change Redis does not take is not the caller's failure: the other
    /// nodes see the gap in this node's envelope numbers, or their next reload, and heal.
    ///
    /// A notice is different: the store does not hold it, so no reload could bring it to the
    /// other nodes. It is published first and shown here only once Redis has taken it; if
    /// Redis does not, the caller is told (503) and nobody sees it, rather than this node's
    /// sockets alone.
    async fn publish(&self, message: BrokerMessage) -> Result<(), BrokerError> {
        if matches!(message, BrokerMessage::Notice { .. }) {
            let (taken, answer) = oneshot::channel();
            self.outgoing
                .send(Outgoing {
                    message: message.clone(),
                    taken: Some(taken),
                })
                .map_err(|_| BrokerError::Unreachable("the node's publisher has stopped".into()))?;
            match tokio::time::timeout(COMMAND_TIMEOUT * 2, answer).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => return Err(BrokerError::Unreachable(error)),
                Ok(Err(_)) | Err(_) => {
                    return Err(BrokerError::Unreachable(
                        "Redis did not take the notice in time".into(),
                    ))
                }
            }
            return self
                .local
                .send(message)
                .map_err(|_| BrokerError::Unreachable("the node's applier has stopped".into()));
        }
        self.local
            .send(message.clone())
            .map_err(|_| BrokerError::Unreachable("the node's applier has stopped".into()))?;
        // The publisher ends only with the process's runtime; nothing to heal then.
        let _ = self.outgoing.send(Outgoing {
            message,
            taken: None,
        });
        Ok(())
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        if !self.trust.trusted.load(Ordering::SeqCst) {
            return Err(BrokerError::Resyncing(self.trust.doubt.lock().to_string()));
        }
        let mut connection = self.connection.clone();
        let ping = ::redis::cmd("PING");
        let answered =
            tokio::time::timeout(COMMAND_TIMEOUT, ping.query_async::<String>(&mut connection));
        match answered.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(BrokerError::Unreachable(error.to_string())),
            Err(_) => Err(BrokerError::Unreachable("Redis did not answer PING".into())),
        }
    }
}

/// Drains the queue of this node's changes into numbered envelopes, one PUBLISH each.
async fn run_publisher(
    mut connection: ConnectionManager,
    channel: String,
    node: Uuid,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
) {
    let boot = chrono::Utc::now().timestamp_millis();
    let mut n = 0;
    let mut batch = Vec::with_capacity(ENVELOPE_MESSAGES);
    while outgoing.recv_many(&mut batch, ENVELOPE_MESSAGES).await > 0 {
        // Numbered even if the publish fails: the hole is how the other nodes notice.
        n += 1;
        let mut waiting = Vec::new();
        let msgs = batch
            .drain(..)
            .map(|outgoing| {
                waiting.extend(outgoing.taken);
                outgoing.message
            })
            .collect();
        let envelope = Envelope {
            node,
            boot,
            n,
            msgs,
        };
        let payload = match serde_json::to_string(&envelope) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(%error, "a broker envelope could not be encoded");
                continue;
            }
        };
        let mut publish = ::redis::cmd("PUBLISH");
        publish.arg(&channel).arg(payload);
        let published =
            tokio::time::timeout(COMMAND_TIMEOUT, publish.query_async::<i64>(&mut connection));
        let failure = match published.await {
            Ok(Ok(_)) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some("timed out".to_owned()),
        };
        if let Some(error) = &failure {
            metrics::counter!("livevote_publish_failures_total").increment(1);
            tracing::warn!(%error, n, "an envelope did not reach Redis; other nodes will resync");
        }
        for taken in waiting {
            // The caller may have given up waiting; then nobody needs the answer.
            let _ = taken.send(failure.clone().map_or(Ok(()), Err));
        }
    }
}

/// Where one sender's envelopes are.
#[derive(Debug, Clone, Copy)]
struct Origin {
    boot: i64,
    n: u64,
}

/// The node's one ordered applier: its own changes and the other nodes', probes, and the
/// reloads from the store, all in one task so that nothing is applied out of order and a
/// reload needs no lock (what arrives meanwhile waits in the channels and is applied after,
/// where the cache's seq and version gates keep anything older from winning).
pub async fn run_applier(
    node: Arc<dyn ChangeApplier>,
    mut inbound: RedisInbound,
    shutdown: CancellationToken,
) {
    let mut origins: HashMap<Uuid, Origin> = HashMap::new();
    let mut probe: Option<(u64, Instant)> = None;
    let mut next_probe = Instant::now();
    let mut probe_counter: u64 = rand::random();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            Some(message) = inbound.local.recv() => {
                apply_or_doubt(node.as_ref(), &inbound.trust, &message, &mut next_probe).await;
            }
            Some(push) = inbound.pushes.recv() => match push.kind {
                PushKind::Disconnection => {
                    inbound.trust.doubt("disconnected from Redis");
                    // Whatever gap follows the reconnect is covered by the reload after it.
                    origins.clear();
                    probe = None;
                    next_probe = Instant::now();
                }
                PushKind::Message => {
                    let Some((channel, payload)) = channel_and_payload(push.data) else {
                        continue;
                    };
                    if channel == inbound.node_channel {
                        let token = String::from_utf8_lossy(&payload).parse::<u64>().ok();
                        if probe.is_some_and(|(expected, _)| Some(expected) == token) {
                            probe = None;
                            // The subscription delivers: what is committed from now on
                            // arrives, and the reload covers what was committed before.
                            let why = if inbound.trust.trusted.load(Ordering::SeqCst) {
                                Resync::Routine
                            } else {
                                Resync::AfterDoubt
                            };
                            if reload(node.as_ref(), why).await {
                                inbound.trust.restore();
                                next_probe = Instant::now() + ANTI_ENTROPY_INTERVAL;
                            } else {
                                inbound.trust.doubt("the store could not be read");
                                next_probe = Instant::now() + DOUBTFUL_RETRY_INTERVAL;
                            }
                        }
                    } else if channel == inbound.changes_channel {
                        let envelope = match serde_json::from_slice::<Envelope>(&payload) {
                            Ok(envelope) => envelope,
                            Err(error) => {
                                tracing::warn!(%error, "an unreadable broker envelope was dropped");
                                continue;
                            }
                        };
                        if envelope.node == inbound.node {
                            continue;
                        }
                        if lost_envelopes(&mut origins, &envelope) {
                            metrics::counter!("livevote_broker_gaps_total").increment(1);
                            inbound.trust.doubt("envelopes from another node were lost");
                            if probe.is_none() {
                                next_probe = Instant::now();
                            }
                        }
                        for message in &envelope.msgs {
                            apply_or_doubt(node.as_ref(), &inbound.trust, message, &mut next_probe).await;
                        }
                    }
                }
                _ => {}
            },
            _ = tick.tick() => {
                let now = Instant::now();
                if let Some((_, sent)) = probe {
                    if now.duration_since(sent) >= PROBE_TIMEOUT {
                        probe = None;
                        inbound.trust.doubt("the subscription did not deliver a probe");
                        // The connection manager resubscribes after a reconnect but ignores a
                        // failure to; subscribing again is harmless if the subscription stands.
                        resubscribe(
                            inbound.connection.clone(),
                            [inbound.changes_channel.clone(), inbound.node_channel.clone()],
                        );
                        // Redis cannot be trusted: the store stands in until it can.
                        reload(node.as_ref(), Resync::AfterDoubt).await;
                        next_probe = Instant::now() + DOUBTFUL_RETRY_INTERVAL;
                    }
                }
                if probe.is_none() && now >= next_probe {
                    probe_counter = probe_counter.wrapping_add(1);
                    probe = Some((probe_counter, now));
                    send_probe(inbound.connection.clone(), inbound.node_channel.clone(), probe_counter);
                }
            }
        }
    }
}

/// Applies one message; a store failure while loading an unknown event leaves the node in
/// doubt, and the next reload brings the event in.
async fn apply_or_doubt(
    node: &dyn ChangeApplier,
    trust: &Trust,
    message: &BrokerMessage,
    next_probe: &mut Instant,
) {
    if let Err(error) = node.apply_change(message).await {
        tracing::warn!(%error, "an unknown event could not be loaded from the store");
        trust.doubt("the store could not be read");
        *next_probe = Instant::now();
    }
}

/// Records the envelope's number; whether some before it from the same sender never came.
fn lost_envelopes(origins: &mut HashMap<Uuid, Origin>, envelope: &Envelope) -> bool {
    let seen = Origin {
        boot: envelope.boot,
        n: envelope.n,
    };
    match origins.insert(envelope.node, seen) {
        Some(last) if last.boot == envelope.boot => {
            if envelope.n <= last.n {
                // Older than what was seen (a repeat): harmless, but keep the newest mark.
                origins.insert(envelope.node, last);
                false
            } else {
                envelope.n > last.n + 1
            }
        }
        // A sender not seen before, or restarted: its numbering starts here.
        _ => false,
    }
}

async fn reload(node: &dyn ChangeApplier, why: Resync) -> bool {
    match node.resync_from_store(why).await {
        Ok(count) => {
            metrics::counter!("livevote_broker_resyncs_total").increment(1);
            tracing::debug!(events = count, "reloaded live events from the store");
            true
        }
        Err(error) => {
            tracing::warn!(%error, "reloading live events from the store failed");
            false
        }
    }
}

/// Publishes a probe on the node's own channel, in a task of its own so that a Redis that
/// does not answer never holds up the applier; a probe that never arrives is the signal.
fn send_probe(mut connection: ConnectionManager, channel: String, token: u64) {
    tokio::spawn(async move {
        let mut publish = ::redis::cmd("PUBLISH");
        publish.arg(channel).arg(token.to_string());
        let published =
            tokio::time::timeout(COMMAND_TIMEOUT, publish.query_async::<i64>(&mut connection));
        if let Ok(Err(error)) = published.await {
            tracing::debug!(%error, "a subscription probe could not be published");
        }
    });
}

fn resubscribe(mut connection: ConnectionManager, channels: [String; 2]) {
    tokio::spawn(async move {
        let subscribed =
            tokio::time::timeout(COMMAND_TIMEOUT, connection.subscribe(channels.to_vec())).await;
        if let Ok(Err(error)) = subscribed {
            tracing::debug!(%error, "resubscribing failed; the next probe tries again");
        }
    });
}

/// A pushed `message`'s channel and payload (`[channel, payload]`).
fn channel_and_payload(data: Vec<Value>) -> Option<(String, Vec<u8>)> {
    let mut data = data.into_iter();
    let channel = ::redis::from_redis_value::<String>(data.next()?).ok()?;
    let payload = ::redis::from_redis_value::<Vec<u8>>(data.next()?).ok()?;
    Some((channel, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(node: Uuid, boot: i64, n: u64) -> Envelope {
        Envelope {
            node,
            boot,
            n,
            msgs: Vec::new(),
        }
    }

    #[test]
    fn a_jump_in_one_senders_numbers_is_loss_and_a_repeat_or_a_restart_is_not() {
        let mut origins = HashMap::new();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(
            !lost_envelopes(&mut origins, &envelope(a, 1, 7)),
            "first seen"
        );
        assert!(!lost_envelopes(&mut origins, &envelope(a, 1, 8)));
        assert!(
            !lost_envelopes(&mut origins, &envelope(b, 1, 1)),
            "another sender"
        );
        assert!(
            !lost_envelopes(&mut origins, &envelope(a, 1, 8)),
            "a repeat"
        );
        assert!(
            !lost_envelopes(&mut origins, &envelope(a, 1, 5)),
            "an old one"
        );
        assert!(
            lost_envelopes(&mut origins, &envelope(a, 1, 10)),
            "9 is missing"
        );
        assert!(
            !lost_envelopes(&mut origins, &envelope(a, 2, 1)),
            "a restart"
        );
        assert!(
            lost_envelopes(&mut origins, &envelope(b, 1, 3)),
            "2 is missing"
        );
    }
}
