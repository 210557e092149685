//! livevote-reference: a deliberately lean fan-out server (axum + one tokio broadcast channel per
//! room, no auth, no coalescing, no storage) that speaks just enough of livevote's socket and
//! notice API for the load generator's W1 and W3 workloads. Measured in the same run as
//! livevote, it turns "what do livevote's features cost" into a ratio.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use clap::Parser;
use futures_util::SinkExt;
use livevote_protocol::{AuthRequest, ChannelList, NoticeRequest, ServerMessage, SystemNotice};
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

/// The reference server's knobs; the socket buffer defaults match livevote's so that memory per
/// socket compares like with like.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "livevote-reference",
    about = "Lean axum + tokio broadcast fan-out server for benchmark ratios"
)]
struct Options {
    /// Address to bind; port 0 picks a free one, printed as `listening on http://ADDR`.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Per-socket read buffer in bytes (axum's default of 128 KiB costs 128 KiB of RSS per
    /// socket); 512 as in livevote-server's socket layer.
    #[arg(long, default_value_t = 512)]
    read_buffer_size: usize,
    /// Bytes gathered before a write goes to the socket (a flush writes the rest); 8 KiB as in
    /// livevote-server.
    #[arg(long, default_value_t = 8 * 1024)]
    write_buffer_size: usize,
    /// Frames a slow socket may fall behind in its room before it skips ahead.
    #[arg(long, default_value_t = 1024)]
    room_capacity: usize,
    /// Listen backlog; tokio's default of 128 makes a connect burst wait out SYN retransmits.
    #[arg(long, default_value_t = 8192)]
    backlog: u32,
}

#[derive(Clone)]
struct Shared {
    options: Options,
    /// One broadcast sender per channel name; rooms live as long as the process (bench only).
    rooms: Arc<Mutex<HashMap<String, broadcast::Sender<Utf8Bytes>>>>,
}

impl Shared {
    fn room(&self, channel: &str) -> broadcast::Sender<Utf8Bytes> {
        let mut rooms = self
            .rooms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        rooms
            .entry(channel.to_owned())
            .or_insert_with(|| broadcast::channel(self.options.room_capacity).0)
            .clone()
    }
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(options))
}

async fn serve(options: Options) -> anyhow::Result<()> {
    let socket = match options.listen {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(options.listen)
        .with_context(|| format!("binding {}", options.listen))?;
    let listener = socket.listen(options.backlog)?;
    let address = listener.local_addr()?;
    let listener = listener.tap_io(|stream| {
        // Small frames must leave at once; Nagle would add up to 40 ms of latency on loopback.
        let _ = stream.set_nodelay(true);
    });
    let shared = Shared {
        options,
        rooms: Arc::default(),
    };
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/realtime", get(realtime))
        .route("/api/auth", post(auth))
        .route("/api/notices", post(notice))
        .with_state(shared);
    println!("listening on http://{address}");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => return std::future::pending().await,
        };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Accepts any body shaped like livevote's auth request and hands back a placeholder token, so
/// the load generator runs the same code against both servers.
async fn auth(Json(_request): Json<AuthRequest>) -> Response {
    Json(serde_json::json!({"token": "reference", "expiresAt": "2100-01-01T00:00:00.000Z"}))
        .into_response()
}

/// Publishes a SYSTEM_NOTICE to one room, serialized once and shared by every subscriber.
async fn notice(State(shared): State<Shared>, Json(request): Json<NoticeRequest>) -> StatusCode {
    let message = ServerMessage::SystemNotice(SystemNotice {
        code: request.code,
        message: request.message,
        channel: Some(request.channel.clone()),
        retry_after_ms: None,
    });
    let Ok(text) = serde_json::to_string(&message) else {
        return StatusCode::INTERNAL_SERVER_ERROR;
    };
    // No receivers is not an error for a broadcast: the notice simply reaches nobody.
    let _ = shared.room(&request.channel).send(Utf8Bytes::from(text));
    StatusCode::ACCEPTED
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RealtimeQuery {
    streamer_id: Option<String>,
}

async fn realtime(
    State(shared): State<Shared>,
    Query(query): Query<RealtimeQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let options = &shared.options;
    let upgrade = upgrade
        .read_buffer_size(options.read_buffer_size)
        .write_buffer_size(options.write_buffer_size)
        .max_write_buffer_size(options.write_buffer_size + 1024 * 1024)
        .max_message_size(16 * 1024)
        .max_frame_size(16 * 1024);
    let channel = query
        .streamer_id
        .filter(|id| !id.is_empty())
        .map(|id| format!("streamer:{id}"));
    upgrade.on_upgrade(move |socket| connection(shared, channel, socket))
}

async fn connection(shared: Shared, channel: Option<String>, mut socket: WebSocket) {
    let Some(channel) = channel else {
        // Without a room there is nothing to deliver; hold the socket until the client leaves.
        while let Some(Ok(_)) = socket.recv().await {}
        return;
    };
    let mut receiver = shared.room(&channel).subscribe();
    let subscribed = ServerMessage::Subscribed(ChannelList {
        channels: vec![channel],
    });
    let Ok(text) = serde_json::to_string(&subscribed) else {
        return;
    };
    if socket.send(Message::Text(text.into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            incoming = socket.recv() => match incoming {
                // Pongs and any other client text need no answer from a reference server.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            published = receiver.recv() => {
                let first = match published {
                    Ok(text) => text,
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                };
                // Queue everything already waiting, then flush once: fewer write syscalls when
                // the room is busy, the same latency when it is not.
                if socket.feed(Message::Text(first)).await.is_err() {
                    return;
                }
                for _ in 0..64 {
                    match receiver.try_recv() {
                        Ok(text) => {
                            if socket.feed(Message::Text(text)).await.is_err() {
                                return;
                            }
                        }
                        Err(TryRecvError::Lagged(_)) => continue,
                        Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                    }
                }
                if socket.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}
