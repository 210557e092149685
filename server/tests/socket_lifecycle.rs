//! Socket lifecycle (docs/contract.md §2, §5): the shared heartbeat (PING,
//! `{"action":"pong"}`, 4000 without it; protocol-level pongs do not count), notices to `*` and
//! to channels, 503 with Retry-After past the connection cap and the connect rate, and
//! shutdown: SERVER_RESTARTING with a spread `retryAfterMs`, then 1012.

mod common;
mod socket_support;

use std::time::Duration;

use axum::http::StatusCode;
use common::*;
use livevote_protocol::{Role, ServerMessage};
use serde_json::json;
use socket_support::*;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

async fn viewer_socket(server: &TestServer, query: &str) -> Client {
    let token = server.token(Role::Viewer, Uuid::new_v4());
    connect(&server.socket_url(&format!("?token={token}{query}"))).await
}

#[tokio::test]
async fn a_socket_that_does_not_answer_pings_is_closed_4000_and_one_that_does_stays() {
    let server = TestServer::start().await;
    let heartbeat = server.state.config.heartbeat_interval;
    let mut answering = viewer_socket(&server, "").await;
    let mut silent = viewer_socket(&server, "").await;
    let mut protocol_ponger = viewer_socket(&server, "").await;
    for client in [&mut answering, &mut silent, &mut protocol_ponger] {
        client.assert_responsive().await;
        client.patience = Duration::from_secs(3600);
    }
    tokio::time::pause();
    let started = tokio::time::Instant::now();
    let answering = tokio::spawn(async move {
        for _ in 0..3 {
            answering
                .until(|message| matches!(message, ServerMessage::Ping(_)))
                .await;
            answering.pong().await;
        }
        answering
    });
    let protocol_ponger = tokio::spawn(async move {
        protocol_ponger
            .until(|message| matches!(message, ServerMessage::Ping(_)))
            .await;
        protocol_ponger
            .send_raw(Message::Pong(Vec::new().into()))
            .await
            .unwrap();
        protocol_ponger.until_closed().await
    });

    let (messages, code) = silent.until_closed().await;
    assert_eq!(describe_all(&messages), ["PING"]);
    assert_eq!(code, Some(4000));
    assert!(
        started.elapsed() < heartbeat * 2,
        "closed within the pong timeout of the first ping"
    );
    let (_, code) = protocol_ponger.await.unwrap();
    assert_eq!(code, Some(4000), "a WebSocket pong is not an answer");

    let mut answering = answering.await.unwrap();
    assert!(
        started.elapsed() >= heartbeat * 2,
        "it lived through three pings"
    );
    answering.assert_responsive().await;
    answering.close().await;
}

#[tokio::test]
async fn notices_to_everyone_reach_every_socket_and_channel_notices_only_subscribers() {
    let server = TestServer::start().await;
    let streamer = Uuid::new_v4();
    let mut lonely = viewer_socket(&server, "").await;
    let mut subscriber = viewer_socket(&server, &format!("&streamerId={streamer}")).await;
    lonely.assert_responsive().await;
    subscriber.until_subscribed().await;
    let admin = server.token(Role::Admin, Uuid::new_v4());

    let body = json!({"channel": format!("streamer:{streamer}"), "code": "MAINTENANCE", "message": "soon"});
    let (status, _) = call(&server.state, post("/api/notices", Some(&admin), &body)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let notice = subscriber.until_notice("MAINTENANCE").await;
    assert_eq!(
        notice_of(notice.last().unwrap())
            .unwrap()
            .channel
            .as_deref(),
        Some(format!("streamer:{streamer}").as_str())
    );

    let body = json!({"channel": "*", "code": "FEATURE_FLAGS", "message": "new overlay"});
    let (status, _) = call(&server.state, post("/api/notices", Some(&admin), &body)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    for client in [&mut lonely, &mut subscriber] {
        let received = client.until_notice("FEATURE_FLAGS").await;
        assert_eq!(
            describe_all(&received),
            ["SYSTEM_NOTICE FEATURE_FLAGS"],
            "the channel notice went to subscribers only"
        );
        assert_eq!(
            notice_of(received.last().unwrap())
                .unwrap()
                .channel
                .as_deref(),
            Some("*")
        );
    }
    lonely.close().await;
    subscriber.close().await;
}

async fn wait_for_connection_count(server: &TestServer, wanted: usize) {
    for _ in 0..500 {
        if server.state.realtime.connection_count() == wanted {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "connection count stayed {}",
        server.state.realtime.connection_count()
    );
}

#[tokio::test]
async fn past_max_connections_the_upgrade_is_503_with_retry_after() {
    let mut config = test_config();
    config.max_connections = 3;
    let server = TestServer::start_with(config).await;
    let token = server.token(Role::Viewer, Uuid::new_v4());
    let url = server.socket_url(&format!("?token={token}"));
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(&url).await);
    }
    match try_connect(&url, &[]).await {
        Err(ConnectError::Status {
            status,
            retry_after,
        }) => {
            assert_eq!(status, 503);
            assert!(retry_after.is_some(), "Retry-After is set");
        }
        Err(other) => panic!("expected 503, got {other:?}"),
        Ok(_) => panic!("a fourth socket was accepted"),
    }
    clients.pop().unwrap().close().await;
    wait_for_connection_count(&server, 2).await;
    let mut fourth = connect(&url).await;
    fourth.assert_responsive().await;
    for client in clients {
        client.close().await;
    }
    fourth.close().await;
}

#[tokio::test]
async fn past_the_connect_rate_the_upgrade_is_503_with_retry_after() {
    let mut config = test_config();
    config.connect_rate = 3;
    let server = TestServer::start_with(config).await;
    let token = server.token(Role::Viewer, Uuid::new_v4());
    let url = server.socket_url(&format!("?token={token}"));
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        match try_connect(&url, &[]).await {
            Ok(client) => accepted.push(client),
            Err(ConnectError::Status {
                status: 503,
                retry_after: Some(_),
            }) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        refused > 0 && accepted.len() >= 3,
        "{} accepted, {refused} refused",
        accepted.len()
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let mut later = connect(&url).await;
    later.assert_responsive().await;
    for client in accepted {
        client.close().await;
    }
    later.close().await;
}

#[tokio::test]
async fn a_flood_of_bad_tokens_at_three_times_the_connect_rate_keeps_no_valid_client_out() {
    let mut config = test_config();
    config.connect_rate = 10;
    let server = TestServer::start_with(config).await;
    let bad_url = server.socket_url("?token=bad");
    // 30 bad-token connects (3x the rate) while 8 valid clients connect among them.
    let flood = tokio::spawn(async move {
        let mut refused_for_rate = 0;
        for _ in 0..30 {
            if let Err(ConnectError::Status { status: 503, .. }) = try_connect(&bad_url, &[]).await
            {
                refused_for_rate += 1;
            }
        }
        refused_for_rate
    });
    let mut valid = Vec::new();
    for _ in 0..8 {
        let token = server.token(Role::Viewer, Uuid::new_v4());
        let url = server.socket_url(&format!("?token={token}"));
        match try_connect(&url, &[]).await {
            Ok(client) => valid.push(client),
            Err(error) => panic!("a valid client was kept out during the flood: {error:?}"),
        }
    }
    let refused_for_rate = flood.await.unwrap();
    assert!(
        refused_for_rate > 0,
        "the bad tokens' own bucket never ran dry"
    );
    for mut client in valid {
        client.assert_responsive().await;
        client.close().await;
    }
}

#[tokio::test]
async fn shutdown_tells_every_socket_to_come_back_with_jitter_and_closes_1012() {
    let server = TestServer::start().await;
    let streamer = Uuid::new_v4();
    let mut readers = Vec::new();
    for index in 0..8 {
        let query = if index % 2 == 0 {
            format!("&streamerId={streamer}")
        } else {
            String::new()
        };
        let mut client = viewer_socket(&server, &query).await;
        client.assert_responsive().await;
        readers.push(tokio::spawn(async move { client.until_closed().await }));
    }
    // Let the metrics be exported once, then look at them.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (_, metrics) = call(&server.state, get("/metrics", None)).await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    for name in [
        "livevote_sockets",
        "livevote_subscriptions",
        "livevote_messages_sent_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }

    server.stop().await;
    let mut delays = Vec::new();
    for reader in readers {
        let (messages, code) = reader.await.unwrap();
        assert_eq!(code, Some(1012));
        let restarting: Vec<_> = notices(&messages, "SERVER_RESTARTING").collect();
        assert_eq!(restarting.len(), 1);
        assert!(
            matches!(messages.last(), Some(ServerMessage::SystemNotice(_))),
            "the notice comes last, then the close"
        );
        let delay = restarting[0].retry_after_ms.expect("retryAfterMs");
        assert!(delay <= 5_000);
        delays.push(delay);
    }
    delays.sort_unstable();
    delays.dedup();
    assert!(
        delays.len() > 1,
        "retryAfterMs is drawn per socket: {delays:?}"
    );
}
