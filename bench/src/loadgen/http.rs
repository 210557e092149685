//! A small keep-alive HTTP/1.1 client on hyper's connection API: one TCP connection, one request
//! at a time, reconnecting after an error. Many of them side by side give many requests in
//! flight without the bookkeeping of a pooled client, which matters when the load generator
//! shares two cores with the server it measures.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};

/// How long one request (including a reconnect) may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Opens a TCP connection to `address` from `source` (a loopback address such as 127.0.0.5), so
/// that each source address brings its own ~28,000 ephemeral ports.
pub async fn connect_tcp(
    address: SocketAddr,
    source: Option<IpAddr>,
) -> std::io::Result<TcpStream> {
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(source) = source {
        // Reusing ports still in TIME_WAIT from an earlier phase keeps a reconnect storm from
        // running out of ports; the 4-tuple stays unique because the kernel checks it at connect.
        socket.set_reuseaddr(true)?;
        // A bind to port 0 picks the port at once, searching the source address's bound ports
        // in the kernel, which slows as thousands share it and stalls the runtime's workers:
        // with 100,000 sockets over 8 sources, PINGs waited 10-18 s for their task and most
        // sockets were closed 4000. Deferring the port to connect (only the 4-tuple must be
        // free there) opens that fleet in 16 s instead of 53, every socket answering in time.
        #[cfg(target_os = "linux")]
        {
            use nix::sys::socket::{setsockopt, sockopt::IpBindAddressNoPort};
            setsockopt(&socket, IpBindAddressNoPort, &true).map_err(std::io::Error::from)?;
        }
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let stream = socket.connect(address).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The `Authorization: Bearer …` value for a token, built once per token by callers that send
/// many requests with it.
pub fn bearer(token: &str) -> anyhow::Result<HeaderValue> {
    Ok(HeaderValue::from_str(&format!("Bearer {token}"))?)
}

/// An HTTP answer: status and whole body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

pub struct HttpConnection {
    address: SocketAddr,
    source: Option<IpAddr>,
    host: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl HttpConnection {
    /// A connection that dials lazily on its first request.
    pub fn new(address: SocketAddr, source: Option<IpAddr>) -> Self {
        HttpConnection {
            address,
            source,
            host: address.to_string(),
            sender: None,
        }
    }

    async fn ready_sender(&mut self) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
        if let Some(sender) = &mut self.sender {
            if sender.ready().await.is_err() {
                self.sender = None;
            }
        }
        if self.sender.is_none() {
            let stream = connect_tcp(self.address, self.source)
                .await
                .with_context(|| format!("connecting to {}", self.address))?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            // The connection future drives the socket; it ends when the sender is dropped or the
            // server closes, so this task is bounded by the connection's life.
            tokio::spawn(async move {
                let _ = connection.await;
            });
            self.sender = Some(sender);
        }
        self.sender.as_mut().ok_or_else(|| anyhow!("no connection"))
    }

    /// Sends one request and reads the whole answer. `token` becomes a Bearer header.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        authorization: Option<HeaderValue>,
        body: Option<Bytes>,
    ) -> anyhow::Result<Answer> {
        self.request_with_headers(method, path, authorization, None, body)
            .await
    }

    /// [`HttpConnection::request`] with one more header, such as an `Idempotency-Key`.
    pub async fn request_with_headers(
        &mut self,
        method: Method,
        path: &str,
        authorization: Option<HeaderValue>,
        extra: Option<(HeaderName, HeaderValue)>,
        body: Option<Bytes>,
    ) -> anyhow::Result<Answer> {
        let outcome = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.request_inner(method, path, authorization, extra, body),
        )
        .await;
        match outcome {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => {
                self.sender = None;
                Err(error)
            }
            Err(_) => {
                self.sender = None;
                Err(anyhow!("{path}: no answer within {REQUEST_TIMEOUT:?}"))
            }
        }
    }

    async fn request_inner(
        &mut self,
        method: Method,
        path: &str,
        authorization: Option<HeaderValue>,
        extra: Option<(HeaderName, HeaderValue)>,
        body: Option<Bytes>,
    ) -> anyhow::Result<Answer> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.as_str());
        if let Some(authorization) = authorization {
            builder = builder.header(AUTHORIZATION, authorization);
        }
        if let Some((name, value)) = extra {
            builder = builder.header(name, value);
        }
        let has_body = body.is_some();
        if has_body {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        let request = builder.body(Full::new(body.unwrap_or_default()))?;
        let sender = self.ready_sender().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Answer { status, body })
    }

    pub async fn get(&mut self, path: &str, token: Option<&str>) -> anyhow::Result<Answer> {
        self.request(Method::GET, path, token.map(bearer).transpose()?, None)
            .await
    }

    pub async fn post_json<T: serde::Serialize>(
        &mut self,
        path: &str,
        token: Option<&str>,
        body: &T,
    ) -> anyhow::Result<Answer> {
        let body = Bytes::from(serde_json::to_vec(body)?);
        self.request(
            Method::POST,
            path,
            token.map(bearer).transpose()?,
            Some(body),
        )
        .await
    }
}
