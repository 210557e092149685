//! Socket commands and abuse (docs/contract.md §5): bad JSON, binary frames, unknown actions,
//! frames over 16 KiB (1009), 10,000-channel subscribes and the 100-channel limit, malformed and
//! forbidden channels, unsubscribe, and the command rate limit (RATE_LIMITED, then 4008).
//! Each case leaves the socket (or, after a close, the server) healthy.

mod common;
mod socket_support;

use std::time::Duration;

use common::*;
use livevote_protocol::{Role, ServerMessage};
use serde_json::json;
use socket_support::actions::create_event;
use socket_support::*;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

async fn viewer_socket(server: &TestServer) -> Client {
    let token = server.token(Role::Viewer, Uuid::new_v4());
    connect(&server.socket_url(&format!("?token={token}"))).await
}

#[tokio::test]
async fn bad_json_binary_frames_and_unknown_actions_get_bad_request_and_the_socket_stays() {
    let server = TestServer::start().await;
    let mut client = viewer_socket(&server).await;
    for bad in [
        "not json",
        "{\"action\": \"dance\"}",
        "{\"action\": \"subscribe\"}",
        "{\"channels\": []}",
        "[1, 2, 3]",
        "",
    ] {
        client.send_text(bad).await;
        let reply = client.until_notice("BAD_REQUEST").await;
        assert_eq!(reply.len(), 1, "only the notice for {bad:?}");
    }
    client
        .send_raw(Message::binary(vec![1, 2, 3]))
        .await
        .unwrap();
    client.until_notice("BAD_REQUEST").await;

    // Unknown fields are ignored.
    let streamer = Uuid::new_v4();
    client
        .send_json(json!({"action": "subscribe", "channels": [format!("streamer:{streamer}")], "extra": {"x": 1}}))
        .await;
    let subscribed = client.until_subscribed().await;
    assert_eq!(
        describe_all(&subscribed),
        [format!("SUBSCRIBED streamer:{streamer}")]
    );
    client.assert_responsive().await;
    client.close().await;
}

#[tokio::test]
async fn a_frame_over_16_kib_is_closed_1009_and_the_server_stays_healthy() {
    let server = TestServer::start().await;
    let mut client = viewer_socket(&server).await;
    // Just under the limit is fine.
    let padding = "x".repeat(16 * 1024 - 100);
    client
        .send_json(json!({"action": "unsubscribe", "channels": [], "padding": padding}))
        .await;
    client
        .until(|message| matches!(message, ServerMessage::Unsubscribed(_)))
        .await;

    let _ = client.send_raw(Message::text("y".repeat(64 * 1024))).await;
    let (_, code) = client.until_closed().await;
    assert_eq!(code, Some(1009));
    assert_server_healthy(&server).await;
}

#[tokio::test]
async fn a_ten_thousand_channel_subscribe_is_refused_by_size_and_the_limit_holds_at_100() {
    let server = TestServer::start().await;
    let many: Vec<String> = (0..10_000)
        .map(|_| format!("game:{}", Uuid::new_v4()))
        .collect();
    let mut client = viewer_socket(&server).await;
    let _ = client
        .send_raw(Message::text(
            json!({"action": "subscribe", "channels": many}).to_string(),
        ))
        .await;
    let (_, code) = client.until_closed().await;
    assert_eq!(
        code,
        Some(1009),
        "10,000 channel names do not fit in 16 KiB"
    );

    // As many as fit in one frame: 100 are held (the ?streamerId channel counts), the rest
    // are each denied.
    let streamer = Uuid::new_v4();
    let token = server.token(Role::Viewer, Uuid::new_v4());
    let mut client =
        connect(&server.socket_url(&format!("?streamerId={streamer}&token={token}"))).await;
    client.until_subscribed().await;
    let fitting: Vec<String> = (0..300)
        .map(|_| format!("game:{}", Uuid::new_v4()))
        .collect();
    client.subscribe(&fitting).await;
    let answer = client.until_subscribed().await;
    let denied: Vec<String> = notices(&answer, "SUBSCRIBE_DENIED")
        .map(|notice| notice.channel.clone().unwrap())
        .collect();
    assert_eq!(denied, fitting[99..].to_vec());
    let ServerMessage::Subscribed(list) = answer.last().unwrap() else {
        unreachable!()
    };
    assert_eq!(list.channels, fitting[..99].to_vec());
    assert_eq!(server.state.realtime.hub().subscription_count(), 100);

    client
        .subscribe(&[format!("game:{}", Uuid::new_v4())])
        .await;
    client.until_notice("SUBSCRIBE_DENIED").await;
    // Leaving one makes room for one.
    client
        .send_json(json!({"action": "unsubscribe", "channels": [fitting[0]]}))
        .await;
    client
        .until(|message| matches!(message, ServerMessage::Unsubscribed(_)))
        .await;
    let another = format!("game:{}", Uuid::new_v4());
    client.subscribe(std::slice::from_ref(&another)).await;
    assert_eq!(
        describe_all(&client.until_subscribed().await),
        [format!("SUBSCRIBED {another}")]
    );
    client.close().await;
    assert_server_healthy(&server).await;
}

#[tokio::test]
async fn each_channel_is_judged_alone() {
    let server = TestServer::start().await;
    let user = Uuid::new_v4();
    let other = Uuid::new_v4();
    let game = Uuid::new_v4();
    let token = server.token(Role::Viewer, user);
    let mut client = connect(&server.socket_url(&format!("?token={token}"))).await;
    let asked = [
        "nope".to_owned(),
        "streamer:not-a-uuid".to_owned(),
        format!("room:{game}"),
        format!("user:{other}"),
        format!("game:{game}"),
        format!("user:{user}"),
    ];
    client.subscribe(&asked).await;
    let answer = client.until_subscribed().await;
    let denied: Vec<String> = notices(&answer, "SUBSCRIBE_DENIED")
        .map(|notice| notice.channel.clone().unwrap())
        .collect();
    assert_eq!(denied, asked[..4].to_vec());
    let ServerMessage::Subscribed(list) = answer.last().unwrap() else {
        unreachable!()
    };
    assert_eq!(list.channels, asked[4..].to_vec());
    // A subscribe that gains nothing is still answered, after its denials.
    client.subscribe(&["nope".to_owned()]).await;
    let answer = client.until_subscribed().await;
    assert_eq!(
        describe_all(&answer),
        ["SYSTEM_NOTICE SUBSCRIBE_DENIED", "SUBSCRIBED "]
    );
    client.close().await;
}

#[tokio::test]
async fn unsubscribing_stops_the_channel() {
    let server = TestServer::start().await;
    let streamer = Uuid::new_v4();
    let token = server.token(Role::Viewer, Uuid::new_v4());
    let mut client =
        connect(&server.socket_url(&format!("?streamerId={streamer}&token={token}"))).await;
    client.until_subscribed().await;
    client
        .send_json(json!({"action": "unsubscribe", "channels": [format!("streamer:{streamer}")]}))
        .await;
    let answer = client
        .until(|message| matches!(message, ServerMessage::Unsubscribed(_)))
        .await;
    assert_eq!(
        describe_all(&answer),
        [format!("UNSUBSCRIBED streamer:{streamer}")]
    );
    create_event(&server.state, streamer, None, 600).await;
    // Nothing of the channel arrives before the answer to a later command.
    client
        .send_json(json!({"action": "unsubscribe", "channels": []}))
        .await;
    let next = client.message().await;
    assert!(
        matches!(next, ServerMessage::Unsubscribed(_)),
        "got {}",
        describe(&next)
    );
    assert_eq!(server.state.realtime.hub().subscription_count(), 0);
    client.close().await;
}

fn rate_config() -> livevote_server::config::Config {
    let mut config = test_config();
    config.command_rate = 5;
    // Nothing else may fire while time is paused and jumps ahead.
    config.heartbeat_interval = Duration::from_secs(24 * 3600);
    config
}

#[tokio::test]
async fn a_socket_over_the_command_rate_is_warned_then_closed_4008() {
    let server = TestServer::start_with(rate_config()).await;
    let mut client = viewer_socket(&server).await;
    client.assert_responsive().await;
    tokio::time::pause();
    client.patience = Duration::from_secs(3600);
    // Twice the rate per second, for longer than the five seconds' grace.
    for _ in 0..80 {
        let command = Message::text(json!({"action": "unsubscribe", "channels": []}).to_string());
        if client.send_raw(command).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (messages, code) = client.until_closed().await;
    assert_eq!(notices(&messages, "RATE_LIMITED").count(), 1, "one warning");
    assert_eq!(code, Some(4008));
    tokio::time::resume();
    assert_server_healthy(&server).await;
}

#[tokio::test]
async fn a_socket_that_slows_down_after_the_warning_stays_and_pongs_do_not_count() {
    let server = TestServer::start_with(rate_config()).await;
    let mut client = viewer_socket(&server).await;
    client.assert_responsive().await;
    tokio::time::pause();
    client.patience = Duration::from_secs(3600);
    // Pongs and refreshes are never limited.
    for _ in 0..200 {
        client.pong().await;
    }
    client
        .send_json(json!({"action": "refresh", "token": "not-a-token"}))
        .await;
    let answer = client.until_notice("REFRESH_DENIED").await;
    assert_eq!(notices(&answer, "RATE_LIMITED").count(), 0);

    for _ in 0..30 {
        client
            .send_json(json!({"action": "unsubscribe", "channels": []}))
            .await;
    }
    client.until_notice("RATE_LIMITED").await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    client.assert_responsive().await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    client.assert_responsive().await;
    client.close().await;
}
