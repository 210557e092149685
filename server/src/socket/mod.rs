//! The `/realtime` WebSocket endpoint: admission before the upgrade (Origin, capacity,
//! connect rate), the token and `?streamerId`, then one task per connection that reads
//! commands, writes its outbox and keeps its deadlines in a single `select!`.
//!
//! Per-connection memory is kept small on purpose (the target is a few KiB per idle socket):
//! small WebSocket buffers, no task or timer per socket beyond this one, and outboxes that
//! hold no buffer when idle.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{ready, Poll};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{
    rejection::WebSocketUpgradeRejection, CloseFrame, Message, Utf8Bytes, WebSocket,
    WebSocketUpgrade,
};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use livevote_hub::SharedMessage;
use livevote_protocol::{close_codes, notice_codes, Channel, MAX_CLIENT_FRAME_BYTES};
use serde::Deserialize;
use tokio::time::Instant;
use uuid::Uuid;

mod session;

use crate::auth::{Claims, TokenError};
use crate::error::AppError;
use crate::realtime::{close_for_restart, notice_message, Refusal};
use crate::state::AppState;
use session::{Ending, Session, Verdict};

/// Read buffer per socket: client commands are small, and this buffer is resident for every
/// idle socket (axum's default is 128 KiB).
const READ_BUFFER_BYTES: usize = 512;
/// Frames are gathered up to this before a write; `flush` writes the rest.
const WRITE_BUFFER_BYTES: usize = 8 * 1024;
/// Backstop: the writer never queues more than one drain's frames before it blocks.
const MAX_WRITE_BUFFER_BYTES: usize = WRITE_BUFFER_BYTES + 1024 * 1024;
/// How long closing may take (last frames, close frame, the peer's close reply).
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The query of `GET /realtime`. Unknown parameters are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct SocketQuery {
    token: Option<String>,
    #[serde(rename = "streamerId")]
    streamer_id: Option<String>,
}

/// `GET /realtime`: refuses sockets past the node's capacity or
/// connect rate (503 with Retry-After) before the upgrade; everything else is upgraded, and
/// a bad token or `streamerId` is answered on the socket (notice, then 4001/4002/4003).
pub async fn upgrade(
    State(state): State<AppState>,
    query: Result<Query<SocketQuery>, QueryRejection>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // Foreign Origins never reach this handler: the router's Origin guard answers them 403.
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            // Not a WebSocket handshake: the contract's error body, with axum's status.
            let mut response = AppError::bad_request(rejection.body_text()).into_response();
            *response.status_mut() = rejection.status();
            return response;
        }
    };
    if state.shutdown.is_cancelled() {
        return unavailable(Refusal::Restarting);
    }
    // A malformed query string is treated as an empty one: the token is then missing (4001).
    let query = query.map(|Query(query)| query).unwrap_or_default();
    let token = query
        .token
        .filter(|token| !token.is_empty())
        .or_else(|| bearer_token(&headers));
    let verdict = match &token {
        None => Err(TokenError::Missing),
        Some(token) => state.auth.verify(token, state.clock.unix_seconds()),
    };
    // The token is checked before admission, so a flood of bad tokens draws on its own bucket.
    let permit = match state.realtime.admit_socket(verdict.is_ok()) {
        Ok(permit) => permit,
        Err(refusal) => return unavailable(refusal),
    };
    let streamer = match query.streamer_id.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => Uuid::try_parse(text)
            .map(|id| Some(Channel::streamer(id)))
            .map_err(|_| ()),
    };
    if let Ok(claims) = &verdict {
        // Opening a socket authenticates its user (the ledger learns it, once).
        if let Err(error) = state.ensure_user_known(claims).await {
            return error.into_response();
        }
    }
    configure(upgrade).on_upgrade(move |socket| async move {
        match (verdict, streamer) {
            (Err(TokenError::Expired), _) => {
                refuse(
                    socket,
                    notice_codes::TOKEN_EXPIRED,
                    "the token expired",
                    close_codes::TOKEN_EXPIRED,
                )
                .await
            }
            (Err(TokenError::Missing | TokenError::Invalid), _) => {
                refuse(
                    socket,
                    notice_codes::UNAUTHORIZED,
                    "the token is missing or invalid",
                    close_codes::UNAUTHORIZED,
                )
                .await
            }
            (Ok(_), Err(())) => {
                refuse(
                    socket,
                    notice_codes::BAD_REQUEST,
                    "streamerId must be a uuid",
                    close_codes::FORBIDDEN,
                )
                .await
            }
            (Ok(claims), Ok(streamer_channel)) => {
                serve(socket, state, claims, streamer_channel).await
            }
        }
        drop(permit);
    })
}

fn configure(upgrade: WebSocketUpgrade) -> WebSocketUpgrade {
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
        .max_message_size(MAX_CLIENT_FRAME_BYTES)
        .max_frame_size(MAX_CLIENT_FRAME_BYTES)
}

fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|token| !token.is_empty())
}

fn count_refusal(reason: &'static str) {
    metrics::counter!("livevote_connections_refused_total", "reason" => reason).increment(1);
}

fn unavailable(refusal: Refusal) -> Response {
    count_refusal(refusal.metric_reason());
    let message = match refusal {
        Refusal::MaxConnections => "this node holds as many sockets as it may; retry later",
        Refusal::ConnectRate => "too many new sockets right now; retry later",
        Refusal::Restarting => "the server is restarting; retry later",
    };
    let mut response = AppError::Unavailable(message.into()).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn count_close(code: u16) {
    let label = match code {
        close_codes::NORMAL => "1000",
        close_codes::FRAME_TOO_LARGE => "1009",
        close_codes::SERVER_RESTARTING => "1012",
        close_codes::PONG_TIMEOUT => "4000",
        close_codes::UNAUTHORIZED => "4001",
        close_codes::TOKEN_EXPIRED => "4002",
        close_codes::FORBIDDEN => "4003",
        close_codes::RATE_LIMITED => "4008",
        close_codes::TOO_SLOW => "4009",
        _ => "other",
    };
    metrics::counter!("livevote_socket_closes_total", "code" => label).increment(1);
}

fn text_frame(bytes: Bytes) -> Option<Message> {
    // Frames are serde_json output (and ASCII brackets and commas), so always UTF-8.
    Utf8Bytes::try_from(bytes).ok().map(Message::Text)
}

fn close_frame(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// A socket that may not stay: one notice, the close code, and a short wait for the reply.
async fn refuse(socket: WebSocket, code: &str, message: &str, close_code: u16) {
    count_close(close_code);
    let notice = notice_message(code, message, None);
    let (mut sink, mut stream) = socket.split();
    let mut outgoing: VecDeque<Message> = text_frame(notice.bytes().clone()).into_iter().collect();
    outgoing.push_back(close_frame(close_code, "refused"));
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        let mut needs_flush = false;
        if write_outgoing(&mut sink, &mut outgoing, &mut needs_flush)
            .await
            .is_ok()
        {
            while let Some(Ok(_)) = stream.next().await {}
        }
    })
    .await;
}

/// Writes queued frames (`feed` each, one `flush`), as far as the socket accepts them now.
/// Cancel-safe: a frame is either still queued or handed to the socket.
async fn write_outgoing(
    sink: &mut SplitSink<WebSocket, Message>,
    outgoing: &mut VecDeque<Message>,
    needs_flush: &mut bool,
) -> Result<(), axum::Error> {
    poll_fn(|context| {
        while !outgoing.is_empty() {
            ready!(sink.poll_ready_unpin(context))?;
            if let Some(message) = outgoing.pop_front() {
                sink.start_send_unpin(message)?;
                *needs_flush = true;
            }
        }
        if *needs_flush {
            ready!(sink.poll_flush_unpin(context))?;
            *needs_flush = false;
        }
        Poll::Ready(Ok(()))
    })
    .await
}

/// Whether a read error is a frame or message over the 16 KiB limit.
fn is_too_large(error: &axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error as WebSocketError;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(WebSocketError::Capacity(_)) = current.downcast_ref::<WebSocketError>() {
            return true;
        }
        source = current.source();
    }
    false
}

/// Runs one authenticated socket until it ends.
async fn serve(
    socket: WebSocket,
    state: AppState,
    claims: Claims,
    streamer_channel: Option<Channel>,
) {
    let realtime = state.realtime.clone();
    let connection = realtime.hub().connect();
    let mut session = Session::new(state, connection.clone(), claims);
    if realtime.is_restarting() {
        close_for_restart(&connection);
    } else if let Some(channel) = streamer_channel {
        Box::pin(session.subscribe(vec![channel.to_string()])).await;
    }
    run(socket, &mut session).await;
    realtime.hub().disconnect(&connection);
}

async fn run(socket: WebSocket, session: &mut Session) {
    let connection = session.connection().clone();
    let (mut sink, mut stream) = socket.split();
    let mut outgoing: VecDeque<Message> = VecDeque::new();
    let mut frames: Vec<Bytes> = Vec::new();
    let mut needs_flush = false;
    // The outbox may already hold the `?streamerId` snapshot.
    let mut outbox_woken = true;
    let token_timer = tokio::time::sleep_until(session.token_deadline());
    tokio::pin!(token_timer);
    let rate_timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(rate_timer);
    session.take_timers_changed();

    let ending = loop {
        if let Some(request) = connection.take_close_request() {
            break Ending::Close {
                code: request.code,
                reason: request.reason,
                notice: None,
                deliver_pending: request.deliver_pending,
            };
        }
        // Drain only when the previous frames are out: while a slow socket is blocked, the
        // outbox keeps just the latest of each update instead of a backlog here.
        if outbox_woken && outgoing.is_empty() && !needs_flush {
            outbox_woken = false;
            connection.drain(&mut frames);
            outgoing.extend(frames.drain(..).filter_map(text_frame));
        }
        let writing = !outgoing.is_empty() || needs_flush;
        let rate_armed = session.rate_deadline().is_some();
        tokio::select! {
            biased;
            () = connection.notified() => outbox_woken = true,
            written = write_outgoing(&mut sink, &mut outgoing, &mut needs_flush), if writing => {
                if written.is_err() {
                    break Ending::Gone;
                }
            }
            inbound = stream.next() => {
                let verdict = match inbound {
                    None => Verdict::Stop(Ending::Gone),
                    Some(Err(error)) if is_too_large(&error) => Verdict::Stop(Ending::Close {
                        code: close_codes::FRAME_TOO_LARGE,
                        reason: "frame too large (limit 16 KiB)",
                        notice: None,
                        deliver_pending: false,
                    }),
                    Some(Err(_)) => Verdict::Stop(Ending::Gone),
                    // Boxed: commands are rare next to idle time, and inlining their state
                    // (snapshots, token checks) would grow every idle socket's task.
                    Some(Ok(Message::Text(text))) => Box::pin(session.on_text(text.as_str())).await,
                    Some(Ok(Message::Binary(_))) => session.on_binary(),
                    Some(Ok(Message::Close(_))) => Verdict::Stop(Ending::PeerClosed),
                    // Protocol-level pings are answered by the library; pongs prove nothing.
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Verdict::Continue,
                };
                if let Verdict::Stop(ending) = verdict {
                    break ending;
                }
            }
            () = &mut token_timer => {
                if let Verdict::Stop(ending) = session.on_token_deadline() {
                    break ending;
                }
            }
            () = &mut rate_timer, if rate_armed => {
                if let Verdict::Stop(ending) = session.on_rate_deadline() {
                    break ending;
                }
            }
        }
        if session.take_timers_changed() {
            token_timer.as_mut().reset(session.token_deadline());
            if let Some(deadline) = session.rate_deadline() {
                rate_timer.as_mut().reset(deadline);
            }
        }
    };
    Box::pin(finish(
        ending,
        &connection,
        sink,
        stream,
        outgoing,
        needs_flush,
    ))
    .await;
}

/// Carries out the end: for a server close, the last frames (or none), the close frame, and
/// a bounded wait for the peer's reply so the close is not cut off by a reset.
async fn finish(
    ending: Ending,
    connection: &livevote_hub::Connection,
    mut sink: SplitSink<WebSocket, Message>,
    mut stream: SplitStream<WebSocket>,
    mut outgoing: VecDeque<Message>,
    mut needs_flush: bool,
) {
    let (code, reason, notice, deliver_pending) = match ending {
        Ending::Gone => return,
        Ending::PeerClosed => {
            // The library queued the close reply; push it out.
            let _ = tokio::time::timeout(CLOSE_GRACE, sink.flush()).await;
            return;
        }
        Ending::Close {
            code,
            reason,
            notice,
            deliver_pending,
        } => (code, reason, notice, deliver_pending),
    };
    count_close(code);
    if deliver_pending {
        let mut frames = Vec::new();
        connection.drain(&mut frames);
        outgoing.extend(frames.into_iter().filter_map(text_frame));
    } else {
        outgoing.clear();
    }
    outgoing.extend(
        notice
            .as_ref()
            .map(SharedMessage::bytes)
            .cloned()
            .and_then(text_frame),
    );
    outgoing.push_back(close_frame(code, reason));
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if write_outgoing(&mut sink, &mut outgoing, &mut needs_flush)
            .await
            .is_ok()
        {
            while let Some(Ok(_)) = stream.next().await {}
        }
    })
    .await;
}
