//! Bounds on raw connections, as a slowloris client meets them: a half-sent request head and an
//! idle keep-alive are closed after the header-read timeout, a stalled body after the idle
//! timeout, and past the cap on open connections (plain TCP included) a client gets 503.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the peer closes; returns what arrived and how long the close took, or panics
/// if the connection is still open after `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(read)) => received.extend_from_slice(&buffer[..read]),
            Err(_) => panic!(
                "the connection was still open after {limit:?}; received {:?}",
                String::from_utf8_lossy(&received)
            ),
        }
    }
    (
        String::from_utf8_lossy(&received).into_owned(),
        started.elapsed(),
    )
}

fn quick_timeouts() -> livevote_server::config::Config {
    let mut config = test_config();
    config.header_read_timeout = Duration::from_millis(400);
    config.heartbeat_interval = Duration::from_millis(200);
    config.pong_timeout = Duration::from_millis(200);
    config.idle_timeout = Duration::from_millis(800);
    config
}

#[tokio::test]
async fn a_half_sent_request_head_is_closed_after_the_header_read_timeout() {
    let server = TestServer::start_with(quick_timeouts()).await;
    let mut stream = TcpStream::connect(server.address).await.unwrap();
    // The head never ends: no blank line.
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: 1\r\n")
        .await
        .unwrap();
    let (_, took) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(300),
        "closed too early: {took:?}"
    );
}

#[tokio::test]
async fn a_connection_that_never_sends_a_byte_is_closed() {
    let server = TestServer::start_with(quick_timeouts()).await;
    let mut stream = TcpStream::connect(server.address).await.unwrap();
    read_until_closed(&mut stream, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_its_answer() {
    let server = TestServer::start_with(quick_timeouts()).await;
    let mut stream = TcpStream::connect(server.address).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (received, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(received.starts_with("HTTP/1.1 200"), "{received}");
    assert!(received.ends_with("ok"), "{received}");
}

#[tokio::test]
async fn a_stalled_request_body_is_closed_after_the_idle_timeout() {
    let server = TestServer::start_with(quick_timeouts()).await;
    let mut stream = TcpStream::connect(server.address).await.unwrap();
    // The head is complete; the body announced is 100 bytes and 10 arrive.
    stream
        .write_all(
            b"POST /api/auth HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"userId\":",
        )
        .await
        .unwrap();
    let (_, took) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(600),
        "closed too early: {took:?}"
    );
}

#[tokio::test]
async fn past_the_open_connection_cap_a_plain_connection_is_answered_503() {
    let mut config = test_config();
    config.max_open_connections = 4;
    let server = TestServer::start_with(config).await;
    // Four silent TCP connections take every place.
    let mut holders = Vec::new();
    for _ in 0..4 {
        holders.push(TcpStream::connect(server.address).await.unwrap());
    }
    // Accepting is asynchronous: give the server a moment to count them.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut refused = TcpStream::connect(server.address).await.unwrap();
    let (answer, _) = read_until_closed(&mut refused, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(answer.contains(r#""code":"UNAVAILABLE""#), "{answer}");
    // A place freed is a place to use.
    drop(holders.pop());
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = client.get(server.http("/healthz")).send().await;
        if matches!(&answer, Ok(response) if response.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "no place came free: {answer:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = client
        .get(server.http("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("livevote_connections_refused_total{reason=\"open_connections\"}"),
        "{metrics}"
    );
}
