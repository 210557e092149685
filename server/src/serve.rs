//! Accepting and serving connections, plain or TLS, with the bounds hyper leaves to its caller:
//! a cap on every open connection (HTTP and upgraded sockets alike), a header-read timeout that
//! also ends idle keep-alive connections, an idle timeout for a connection that moves no bytes,
//! a TLS handshake deadline, and one shutdown sequence for both kinds of serving.
//!
//! `axum::serve` runs hyper without a timer, so its header-read timeout never applies, and it
//! counts no connections: a client could hold half-sent requests open for ever and use every
//! file descriptor. This loop is what it would be with those bounds, and nothing more.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::state::AppState;

/// How long open HTTP connections may take to finish once shutdown has closed the sockets.
const SHUTDOWN_DRAIN_GRACE: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of file descriptors, say) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How long a refused client gets to read its 503 before the connection is dropped.
const REFUSAL_WRITE_DEADLINE: Duration = Duration::from_secs(1);

/// The connection bounds from the configuration.
#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_open_connections: usize,
}

impl ConnectionLimits {
    fn of(state: &AppState) -> Self {
        ConnectionLimits {
            header_read_timeout: state.config.header_read_timeout,
            idle_timeout: state.config.idle_timeout,
            max_open_connections: state.config.max_open_connections,
        }
    }
}

/// Why a TLS certificate or key cannot be used; checked before the server binds.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate {path}: {reason}")]
    Certificate { path: String, reason: String },
    #[error("cannot read the TLS key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("the TLS certificate and key do not fit together: {0}")]
    Mismatch(String),
}

/// A TLS configuration ready to accept with.
#[derive(Clone)]
pub struct TlsAcceptor(tokio_rustls::TlsAcceptor);

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("TlsAcceptor")
    }
}

/// Reads and checks a PEM certificate chain and private key.
pub fn load_tls(certificate: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certificate_error = |reason: String| TlsError::Certificate {
        path: certificate.display().to_string(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(certificate)
        .map_err(|error| certificate_error(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| certificate_error(error.to_string()))?;
    if chain.is_empty() {
        return Err(certificate_error("no certificate in the file".into()));
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|error| TlsError::Key {
        path: key.display().to_string(),
        reason: error.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Mismatch(error.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|error| TlsError::Mismatch(error.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor(tokio_rustls::TlsAcceptor::from(Arc::new(
        config,
    ))))
}

/// Serves `router` on `listener` until `shutdown` resolves, then: stops accepting, tells every
/// socket SERVER_RESTARTING and closes it with 1012, lets in-flight requests finish (at most
/// [`SHUTDOWN_DRAIN_GRACE`]) and returns. With `tls`, every connection speaks TLS first.
pub(crate) async fn serve_connections(
    listener: TcpListener,
    state: AppState,
    router: Router,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let limits = ConnectionLimits::of(&state);
    let permits = Arc::new(Semaphore::new(limits.max_open_connections));
    let connections = TaskTracker::new();
    let draining = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("livevote_connections_refused_total", "reason" => "open_connections")
                .increment(1);
            refuse(stream, tls.is_some());
            continue;
        };
        let _ = stream.set_nodelay(true);
        let stream = ServedStream::new(stream, permit, limits.idle_timeout);
        connections.spawn(serve_connection(
            stream,
            remote,
            router.clone(),
            tls.clone(),
            limits,
            draining.clone(),
        ));
    }
    state.shutdown.cancel();
    state.realtime.close_all_for_restart().await;
    draining.cancel();
    connections.close();
    // A client that keeps a connection open (an idle keep-alive it never closes, say) must not
    // keep the process alive after SIGTERM.
    if tokio::time::timeout(SHUTDOWN_DRAIN_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open {SHUTDOWN_DRAIN_GRACE:?} after shutdown began; stopping anyway"
        );
    }
    Ok(())
}

/// Past the cap: a plain client is told 503 with Retry-After, a TLS one is dropped (it could
/// not read a plain answer).
fn refuse(mut stream: TcpStream, tls: bool) {
    if tls {
        return;
    }
    tokio::spawn(async move {
        const BODY: &str =
            r#"{"error":{"code":"UNAVAILABLE","message":"too many open connections"}}"#;
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
            BODY.len()
        );
        let _ = tokio::time::timeout(REFUSAL_WRITE_DEADLINE, async {
            stream.write_all(answer.as_bytes()).await?;
            stream.shutdown().await
        })
        .await;
    });
}

async fn serve_connection(
    stream: ServedStream,
    remote: SocketAddr,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    draining: CancellationToken,
) {
    match tls {
        None => serve_http(stream, remote, router, limits, draining).await,
        Some(TlsAcceptor(acceptor)) => {
            match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => serve_http(stream, remote, router, limits, draining).await,
                Ok(Err(error)) => tracing::debug!(%error, %remote, "TLS handshake failed"),
                Err(_) => {
                    metrics::counter!("livevote_connections_timed_out_total", "reason" => "tls_handshake")
                        .increment(1);
                }
            }
        }
    }
}

async fn serve_http<Stream>(
    stream: Stream,
    remote: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    draining: CancellationToken,
) where
    Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(remote));
        router.clone().oneshot(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // hyper (1.4 and later) starts this timer whenever it waits for a request head: on a new
    // connection and between requests on a kept-alive one, so it bounds both a half-sent head
    // and an idle keep-alive.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let mut shutting_down = false;
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            () = draining.cancelled(), if !shutting_down => {
                shutting_down = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(error) = result {
        let reason = if error.is_timeout() {
            Some("header_read")
        } else if is_idle_timeout(&error) {
            Some("idle")
        } else {
            None
        };
        match reason {
            Some(reason) => {
                metrics::counter!("livevote_connections_timed_out_total", "reason" => reason)
                    .increment(1);
            }
            None => tracing::debug!(%error, %remote, "connection ended with an error"),
        }
    }
}

fn is_idle_timeout(error: &hyper::Error) -> bool {
    use std::error::Error as _;
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(io_error) = cause.downcast_ref::<io::Error>() {
            return io_error.kind() == io::ErrorKind::TimedOut;
        }
        source = cause.source();
    }
    false
}

/// An accepted TCP stream that holds its place under the connection cap for as long as it
/// lives (through a WebSocket upgrade too, which carries the stream along) and fails with
/// `TimedOut` once no byte has moved either way for the idle timeout.
struct ServedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle_timeout: Duration,
    /// Wall-clock time, not tokio's: a test that pauses tokio's clock and jumps it ahead must
    /// not make every connection look idle.
    last_activity: std::time::Instant,
    /// Armed lazily: it fires at most once per idle timeout and is then moved to
    /// `last_activity + idle_timeout`, so activity itself never touches the timer.
    idle_check: Pin<Box<Sleep>>,
}

impl ServedStream {
    fn new(stream: TcpStream, permit: OwnedSemaphorePermit, idle_timeout: Duration) -> Self {
        metrics::gauge!("livevote_open_connections").increment(1.0);
        ServedStream {
            stream,
            _permit: permit,
            idle_timeout,
            last_activity: std::time::Instant::now(),
            idle_check: Box::pin(tokio::time::sleep(idle_timeout)),
        }
    }

    /// Records bytes written as activity; a write that would wait is bounded by the idle timeout
    /// (a client that stops reading is idle too).
    fn after_write(
        &mut self,
        context: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(written)) => {
                if written > 0 {
                    self.last_activity = std::time::Instant::now();
                }
                Poll::Ready(Ok(written))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => self.poll_idle(context).map(Err),
        }
    }

    /// Called when the stream would wait: `Pending` while within the idle timeout.
    fn poll_idle(&mut self, context: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.idle_check.as_mut().poll(context).is_pending() {
                return Poll::Pending;
            }
            let idle_for = self.last_activity.elapsed();
            if idle_for >= self.idle_timeout {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no bytes moved within the idle timeout",
                ));
            }
            let left = self.idle_timeout - idle_for;
            self.idle_check
                .as_mut()
                .reset(tokio::time::Instant::now() + left);
        }
    }
}

impl Drop for ServedStream {
    fn drop(&mut self) {
        metrics::gauge!("livevote_open_connections").decrement(1.0);
    }
}

impl AsyncRead for ServedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buffer.filled().len();
        match Pin::new(&mut this.stream).poll_read(context, buffer) {
            Poll::Ready(Ok(())) => {
                if buffer.filled().len() > before {
                    this.last_activity = std::time::Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => this.poll_idle(context).map(Err),
        }
    }
}

impl AsyncWrite for ServedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write(context, buffer);
        this.after_write(context, written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write_vectored(context, buffers);
        this.after_write(context, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(context)
    }
}
