//! One benchmark WebSocket client: opened from a chosen loopback source address with small
//! buffers, it parses only the fields the workloads need (no allocation for the common
//! messages), answers PINGs with `{"action":"pong"}` and accepts single and array frames.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::http::connect_tcp;

/// The only command a benchmark socket sends: the application-level heartbeat answer.
const PONG: Utf8Bytes = Utf8Bytes::from_static(r#"{"action":"pong"}"#);

/// Why a socket could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The server answered the upgrade with an HTTP status (503 when over its connect rate or cap).
    Refused {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// TCP or the handshake failed, or took too long.
    Failed(String),
}

impl fmt::Display for OpenError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Refused { status, .. } => {
                write!(formatter, "upgrade refused with HTTP {status}")
            }
            OpenError::Failed(reason) => formatter.write_str(reason),
        }
    }
}

/// The sum of an event's totals, read straight from the JSON object without building a map.
#[derive(Debug, Clone, Copy, Default)]
pub struct TotalsSum(pub u64);

impl<'de> Deserialize<'de> for TotalsSum {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SumVisitor;
        impl<'de> Visitor<'de> for SumVisitor {
            type Value = TotalsSum;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("an object of vote counts")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TotalsSum, A::Error> {
                let mut sum = 0u64;
                while let Some((_, count)) = map.next_entry::<serde::de::IgnoredAny, u64>()? {
                    sum += count;
                }
                Ok(TotalsSum(sum))
            }
        }
        deserializer.deserialize_map(SumVisitor)
    }
}

/// The fields any workload reads from a server message; everything else is skipped unparsed.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WirePayload<'a> {
    #[serde(borrow, default)]
    pub event_id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub totals: Option<TotalsSum>,
    #[serde(borrow, default)]
    pub code: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub message: Option<Cow<'a, str>>,
    #[serde(default)]
    pub event: Option<WireEvent<'a>>,
    /// BALANCE_UPDATED's balance and whose it is.
    #[serde(default)]
    pub balance: Option<i64>,
    #[serde(borrow, default)]
    pub user_id: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct WireEvent<'a> {
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
pub struct WireMessage<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub payload: WirePayload<'a>,
}

impl WireMessage<'_> {
    /// The event a message is about, whichever field carries it.
    pub fn event_id(&self) -> Option<&str> {
        self.payload.event_id.as_deref().or_else(|| {
            self.payload
                .event
                .as_ref()
                .and_then(|event| event.id.as_deref())
        })
    }
}

/// Calls `each` for every message of a text frame (one object or an array of them). Returns
/// false when the frame is not valid JSON of that shape.
pub fn for_each_message(text: &str, mut each: impl FnMut(&WireMessage<'_>)) -> bool {
    if text.trim_start().starts_with('[') {
        match serde_json::from_str::<Vec<WireMessage<'_>>>(text) {
            Ok(messages) => {
                messages.iter().for_each(&mut each);
                true
            }
            Err(_) => false,
        }
    } else {
        match serde_json::from_str::<WireMessage<'_>>(text) {
            Ok(message) => {
                each(&message);
                true
            }
            Err(_) => false,
        }
    }
}

/// What ended a [`LiveSocket::receive`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A text frame was handled.
    Frame,
    /// The deadline passed or the stop token fired.
    Stopped,
    /// The server closed the socket (its close code, if any) or the connection broke.
    Closed(Option<u16>),
}

/// Where and how sockets connect.
#[derive(Debug, Clone)]
pub struct SocketTarget {
    pub address: SocketAddr,
    /// Loopback source addresses to spread sockets over (empty: let the kernel choose).
    pub sources: Vec<IpAddr>,
    pub read_buffer_size: usize,
    pub open_timeout: Duration,
}

impl SocketTarget {
    pub fn source_for(&self, index: usize) -> Option<IpAddr> {
        if self.sources.is_empty() {
            None
        } else {
            Some(self.sources[index % self.sources.len()])
        }
    }
}

pub struct LiveSocket {
    stream: WebSocketStream<TcpStream>,
    /// Text frames received, PINGs included.
    pub frames: u64,
    pub pings_answered: u64,
    pub malformed_frames: u64,
}

impl LiveSocket {
    /// Connects and upgrades `path_and_query` (e.g. `/realtime?streamerId=…&token=…`).
    pub async fn open(
        target: &SocketTarget,
        index: usize,
        path_and_query: &str,
    ) -> Result<LiveSocket, OpenError> {
        let attempt = async {
            let stream = connect_tcp(target.address, target.source_for(index))
                .await
                .map_err(|error| OpenError::Failed(format!("connect: {error}")))?;
            let config = WebSocketConfig::default()
                .read_buffer_size(target.read_buffer_size)
                // Writes are rare (pongs): write each one eagerly instead of holding a buffer.
                .write_buffer_size(0)
                .max_message_size(Some(4 << 20))
                .max_frame_size(Some(4 << 20));
            let url = format!("ws://{}{}", target.address, path_and_query);
            match tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await {
                Ok((stream, _response)) => Ok(LiveSocket {
                    stream,
                    frames: 0,
                    pings_answered: 0,
                    malformed_frames: 0,
                }),
                Err(tungstenite::Error::Http(response)) => {
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|value| value.to_str().ok())
                        .and_then(|value| value.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    Err(OpenError::Refused {
                        status: response.status().as_u16(),
                        retry_after,
                    })
                }
                Err(error) => Err(OpenError::Failed(format!("handshake: {error}"))),
            }
        };
        match tokio::time::timeout(target.open_timeout, attempt).await {
            Ok(outcome) => outcome,
            Err(_) => Err(OpenError::Failed(format!(
                "not open within {:?}",
                target.open_timeout
            ))),
        }
    }

    /// Waits for one text frame (until `until` or `stop`), hands each of its messages to `each`
    /// with the receive time, and answers a PING among them with a pong.
    pub async fn receive(
        &mut self,
        until: Instant,
        stop: &CancellationToken,
        mut each: impl FnMut(Instant, &WireMessage<'_>),
    ) -> Received {
        loop {
            let next = tokio::select! {
                biased;
                _ = stop.cancelled() => return Received::Stopped,
                _ = tokio::time::sleep_until(until.into()) => return Received::Stopped,
                next = self.stream.next() => next,
            };
            let at = Instant::now();
            match next {
                Some(Ok(Message::Text(text))) => {
                    self.frames += 1;
                    let mut ping = false;
                    let parsed = for_each_message(text.as_str(), |message| {
                        if message.kind == "PING" {
                            ping = true;
                        }
                        each(at, message);
                    });
                    if !parsed {
                        self.malformed_frames += 1;
                    }
                    if ping {
                        if self.stream.send(Message::Text(PONG)).await.is_err() {
                            return Received::Closed(None);
                        }
                        self.pings_answered += 1;
                    }
                    return Received::Frame;
                }
                Some(Ok(Message::Close(frame))) => {
                    return Received::Closed(frame.map(|frame| u16::from(frame.code)))
                }
                // Protocol pings are answered by tungstenite itself; binary frames are not expected.
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Received::Closed(None),
            }
        }
    }

    /// Reads until SUBSCRIBED (the end of the snapshot) arrives, passing every message to `each`.
    /// Returns false if the socket closed or `until` passed first.
    pub async fn await_subscribed(
        &mut self,
        until: Instant,
        stop: &CancellationToken,
        mut each: impl FnMut(Instant, &WireMessage<'_>),
    ) -> bool {
        let mut subscribed = false;
        while !subscribed {
            let outcome = self
                .receive(until, stop, |at, message| {
                    if message.kind == "SUBSCRIBED" {
                        subscribed = true;
                    }
                    each(at, message);
                })
                .await;
            if outcome != Received::Frame {
                return false;
            }
        }
        true
    }

    /// Sends `{"action":"subscribe","channels":[…]}` and reads until its SUBSCRIBED (the
    /// channels' snapshots come first); false when the socket closed or `until` passed.
    pub async fn subscribe(
        &mut self,
        channels: &[String],
        until: Instant,
        stop: &CancellationToken,
    ) -> bool {
        let command = serde_json::json!({"action": "subscribe", "channels": channels});
        if self
            .stream
            .send(Message::Text(command.to_string().into()))
            .await
            .is_err()
        {
            return false;
        }
        self.await_subscribed(until, stop, |_, _| {}).await
    }

    /// Drops the connection without a WebSocket close handshake (the TCP connection just closes),
    /// the way a reloading page or a crashing client leaves.
    pub fn drop_abruptly(self) {
        drop(self.stream);
    }

    /// Sends a close frame and waits briefly for the server's answer.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.stream.close(None)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_array_frames() {
        let mut kinds = Vec::new();
        let single = r#"{"type":"EVENT_UPDATED","payload":{"eventId":"e1","totals":{"a":2,"b":3},"closesAt":"x","seq":4}}"#;
        assert!(for_each_message(single, |message| {
            assert_eq!(message.payload.totals.map(|sum| sum.0), Some(5));
            assert_eq!(message.event_id(), Some("e1"));
            kinds.push(message.kind.to_string());
        }));
        let array = r#"[{"type":"PING","payload":{"ts":"t"}},{"type":"EVENT_CREATED","payload":{"event":{"id":"e2","options":[]}}}]"#;
        assert!(for_each_message(array, |message| {
            if message.kind == "EVENT_CREATED" {
                assert_eq!(message.event_id(), Some("e2"));
            }
            kinds.push(message.kind.to_string());
        }));
        assert_eq!(kinds, ["EVENT_UPDATED", "PING", "EVENT_CREATED"]);
        assert!(!for_each_message("not json", |_| {}));
    }
}
