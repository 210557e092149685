//! Socket test support: a WebSocket client (tokio-tungstenite) that reads server frames as
//! livevote messages (a frame may hold one message or an array), with every wait bounded.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use livevote_protocol::{ServerMessage, SystemNotice};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::{Error as WebSocketError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// What the client read next.
#[derive(Debug)]
pub enum Received {
    Message(ServerMessage),
    /// The server closed, with this close code (`None`: without a close frame).
    Closed(Option<u16>),
}

/// A frame as the client received it.
#[derive(Debug)]
pub struct Frame {
    pub at: Instant,
    pub messages: Vec<ServerMessage>,
}

pub struct Client {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pending: VecDeque<ServerMessage>,
    /// Every frame read so far, in order.
    pub frames: Vec<Frame>,
    /// The longest any single read may wait.
    pub patience: Duration,
    closed: Option<Option<u16>>,
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum ConnectError {
    /// The server answered HTTP instead of upgrading.
    Status {
        status: u16,
        retry_after: Option<String>,
    },
    Other(String),
}

pub async fn connect(url: &str) -> Client {
    try_connect(url, &[])
        .await
        .unwrap_or_else(|error| panic!("connect {url}: {error:?}"))
}

pub async fn try_connect(url: &str, headers: &[(&str, &str)]) -> Result<Client, ConnectError> {
    try_connect_with(url, headers, None).await
}

/// Connects with an optional small receive buffer (to make a client that stops reading
/// back-pressure the server quickly).
pub async fn try_connect_with(
    url: &str,
    headers: &[(&str, &str)],
    receive_buffer: Option<u32>,
) -> Result<Client, ConnectError> {
    let mut request = url
        .into_client_request()
        .map_err(|error| ConnectError::Other(error.to_string()))?;
    for (name, value) in headers {
        request.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let authority = request.uri().authority().unwrap().as_str().to_owned();
    let address: std::net::SocketAddr = authority.parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = receive_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let tcp = tokio::time::timeout(Duration::from_secs(10), socket.connect(address))
        .await
        .map_err(|_| ConnectError::Other("connect timed out".into()))?
        .map_err(|error| ConnectError::Other(error.to_string()))?;
    tcp.set_nodelay(true).unwrap();
    let handshake = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp));
    match tokio::time::timeout(Duration::from_secs(10), handshake).await {
        Err(_) => Err(ConnectError::Other("handshake timed out".into())),
        Ok(Ok((stream, _))) => Ok(Client {
            stream,
            pending: VecDeque::new(),
            frames: Vec::new(),
            patience: Duration::from_secs(20),
            closed: None,
        }),
        Ok(Err(WebSocketError::Http(response))) => Err(ConnectError::Status {
            status: response.status().as_u16(),
            retry_after: response
                .headers()
                .get("retry-after")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned),
        }),
        Ok(Err(error)) => Err(ConnectError::Other(error.to_string())),
    }
}

fn parse_frame(text: &str) -> Vec<ServerMessage> {
    if text.starts_with('[') {
        serde_json::from_str(text).unwrap_or_else(|error| panic!("bad batch frame {text}: {error}"))
    } else {
        vec![serde_json::from_str(text).unwrap_or_else(|error| panic!("bad frame {text}: {error}"))]
    }
}

impl Client {
    pub async fn send_text(&mut self, text: &str) {
        self.stream.send(Message::text(text)).await.expect("send");
    }

    pub async fn send_json(&mut self, value: serde_json::Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends, tolerating a server that already closed (it may close on this very frame).
    pub async fn send_raw(&mut self, message: Message) -> Result<(), WebSocketError> {
        self.stream.send(message).await
    }

    pub async fn subscribe(&mut self, channels: &[String]) {
        self.send_json(serde_json::json!({"action": "subscribe", "channels": channels}))
            .await;
    }

    pub async fn pong(&mut self) {
        self.send_json(serde_json::json!({"action": "pong"})).await;
    }

    /// The next message, or the close. Panics if nothing comes within `patience`.
    pub async fn next(&mut self) -> Received {
        if let Some(message) = self.pending.pop_front() {
            return Received::Message(message);
        }
        if let Some(code) = self.closed {
            return Received::Closed(code);
        }
        loop {
            let read = tokio::time::timeout(self.patience, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("nothing received within {:?}", self.patience));
            match read {
                Some(Ok(Message::Text(text))) => {
                    let messages = parse_frame(text.as_str());
                    self.frames.push(Frame {
                        at: Instant::now(),
                        messages: messages.clone(),
                    });
                    self.pending.extend(messages);
                    if let Some(message) = self.pending.pop_front() {
                        return Received::Message(message);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|frame| u16::from(frame.code));
                    self.closed = Some(code);
                    return Received::Closed(code);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    self.closed = Some(None);
                    return Received::Closed(None);
                }
            }
        }
    }

    /// The next message; panics on a close.
    pub async fn message(&mut self) -> ServerMessage {
        match self.next().await {
            Received::Message(message) => message,
            Received::Closed(code) => panic!("closed ({code:?}) while a message was expected"),
        }
    }

    /// Messages up to and including the first that matches; panics on a close.
    pub async fn until(
        &mut self,
        mut wanted: impl FnMut(&ServerMessage) -> bool,
    ) -> Vec<ServerMessage> {
        let mut seen = Vec::new();
        loop {
            let message = self.message().await;
            let done = wanted(&message);
            seen.push(message);
            if done {
                return seen;
            }
        }
    }

    /// Messages up to and including SUBSCRIBED.
    pub async fn until_subscribed(&mut self) -> Vec<ServerMessage> {
        self.until(|message| matches!(message, ServerMessage::Subscribed(_)))
            .await
    }

    /// Messages up to and including the first notice with `code`.
    pub async fn until_notice(&mut self, code: &str) -> Vec<ServerMessage> {
        self.until(
            |message| matches!(message, ServerMessage::SystemNotice(notice) if notice.code == code),
        )
        .await
    }

    /// Reads to the close: the messages before it and the close code.
    pub async fn until_closed(&mut self) -> (Vec<ServerMessage>, Option<u16>) {
        let mut seen = Vec::new();
        loop {
            match self.next().await {
                Received::Message(message) => seen.push(message),
                Received::Closed(code) => return (seen, code),
            }
        }
    }

    /// Sends a close frame and reads until the server's reply (or the end).
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = self.stream.next().await {}
        })
        .await;
    }

    /// Proves the socket is alive and served: an empty unsubscribe is answered.
    pub async fn assert_responsive(&mut self) {
        self.send_json(serde_json::json!({"action": "unsubscribe", "channels": []}))
            .await;
        self.until(|message| matches!(message, ServerMessage::Unsubscribed(_)))
            .await;
    }
}

pub fn notice_of(message: &ServerMessage) -> Option<&SystemNotice> {
    match message {
        ServerMessage::SystemNotice(notice) => Some(notice),
        _ => None,
    }
}

pub fn notices<'a>(
    messages: &'a [ServerMessage],
    code: &'a str,
) -> impl Iterator<Item = &'a SystemNotice> + 'a {
    messages
        .iter()
        .filter_map(notice_of)
        .filter(move |notice| notice.code == code)
}

/// A short name for each message, for readable assertions.
pub fn describe(message: &ServerMessage) -> String {
    match message {
        ServerMessage::EventCreated(created) => format!("EVENT_CREATED {}", created.event.id),
        ServerMessage::EventUpdated(updated) => format!("EVENT_UPDATED {}", updated.event_id),
        ServerMessage::EventClosed(closed) => format!("EVENT_CLOSED {}", closed.event_id),
        ServerMessage::BalanceUpdated(balance) => format!("BALANCE_UPDATED {}", balance.balance),
        ServerMessage::SystemNotice(notice) => format!("SYSTEM_NOTICE {}", notice.code),
        ServerMessage::Ping(_) => "PING".into(),
        ServerMessage::Subscribed(list) => format!("SUBSCRIBED {}", list.channels.join(",")),
        ServerMessage::Unsubscribed(list) => format!("UNSUBSCRIBED {}", list.channels.join(",")),
    }
}

pub fn describe_all(messages: &[ServerMessage]) -> Vec<String> {
    messages.iter().map(describe).collect()
}

/// HTTP actions the socket tests need, through the server's own router and state.
pub mod actions {
    use axum::http::StatusCode;
    use livevote_protocol::{EventResult, Role, Totals};
    use livevote_server::state::AppState;
    use serde_json::{json, Value};
    use uuid::Uuid;

    use crate::common::{call, event_body, mint, post};

    /// Creates an event of `streamer` (and `game`, if given) closing in `seconds`.
    pub async fn create_event(
        state: &AppState,
        streamer: Uuid,
        game: Option<Uuid>,
        seconds: i64,
    ) -> Uuid {
        let worker = mint(state, Role::Worker, Uuid::new_v4(), None);
        let mut body = event_body(state, streamer, seconds);
        body["gameId"] = json!(game);
        let (status, answer) = call(state, post("/api/events", Some(&worker), &body)).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        answer["event"]["id"].as_str().unwrap().parse().unwrap()
    }

    /// Casts `votes` for `option`; returns the status and body.
    pub async fn vote(
        state: &AppState,
        event: Uuid,
        token: &str,
        option: &str,
        votes: u32,
    ) -> (StatusCode, Value) {
        let path = format!("/api/events/{event}/votes");
        call(
            state,
            post(
                &path,
                Some(token),
                &json!({"optionId": option, "votes": votes}),
            ),
        )
        .await
    }

    /// Closes an event as a worker; returns its result.
    pub async fn close_event(state: &AppState, event: Uuid) -> EventResult {
        let worker = mint(state, Role::Worker, Uuid::new_v4(), None);
        let path = format!("/api/events/{event}/close");
        let (status, answer) = call(state, post(&path, Some(&worker), &json!({}))).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        serde_json::from_value(answer["result"].clone()).unwrap()
    }

    pub fn totals(red: u64, blue: u64) -> Totals {
        Totals::from([("red".to_owned(), red), ("blue".to_owned(), blue)])
    }
}

/// The server answers HTTP and a fresh socket is served.
pub async fn assert_server_healthy(server: &crate::common::TestServer) {
    let (status, _) =
        crate::common::call(&server.state, crate::common::get("/healthz", None)).await;
    assert_eq!(status.as_u16(), 200);
    let token = server.token(livevote_protocol::Role::Viewer, uuid::Uuid::new_v4());
    let mut client = connect(&server.socket_url(&format!("?token={token}"))).await;
    client.assert_responsive().await;
    client.close().await;
}
