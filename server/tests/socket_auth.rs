//! Socket authentication (docs/contract.md §3, §5): token in the query or the Authorization header;
//! missing, forged and `alg: none` tokens get a notice and 4001, expired ones 4002, a bad
//! `streamerId` 4003, a foreign Origin 403 before the upgrade; TOKEN_EXPIRING, refresh,
//! REFRESH_DENIED and the 4002 close at `exp`.

mod common;
mod socket_support;

use std::time::Duration;

use common::*;
use livevote_protocol::Role;
use livevote_server::auth::{Authenticator, Claims};
use livevote_server::config::AllowedOrigins;
use serde_json::json;
use socket_support::*;
use uuid::Uuid;

fn claims(server: &TestServer, user: Uuid, from_now: i64, lifetime: i64) -> Claims {
    let now = server.state.clock.unix_seconds();
    Claims {
        sub: user,
        role: Role::Viewer,
        streamer_id: None,
        iat: now + from_now - lifetime,
        exp: now + from_now,
    }
}

/// Connects and expects the refusal: the notice `code`, then the close `close_code`.
async fn expect_refused(server: &TestServer, query: &str, code: &str, close_code: u16) {
    let mut client = connect(&server.socket_url(query)).await;
    let (messages, close) = client.until_closed().await;
    assert_eq!(
        describe_all(&messages),
        [format!("SYSTEM_NOTICE {code}")],
        "query {query}"
    );
    assert_eq!(close, Some(close_code), "query {query}");
}

#[tokio::test]
async fn bad_tokens_are_upgraded_told_and_closed() {
    let server = TestServer::start().await;
    expect_refused(&server, "", "UNAUTHORIZED", 4001).await;
    expect_refused(&server, "?token=", "UNAUTHORIZED", 4001).await;
    expect_refused(&server, "?token=not.a.jwt", "UNAUTHORIZED", 4001).await;

    let user = Uuid::new_v4();
    let forged = Authenticator::new("another-secret-another-secret-another!")
        .mint(&claims(&server, user, 3600, 3600));
    expect_refused(&server, &format!("?token={forged}"), "UNAUTHORIZED", 4001).await;

    let unsigned = unsigned_token(&Claims {
        role: Role::Admin,
        ..claims(&server, user, 3600, 3600)
    });
    expect_refused(&server, &format!("?token={unsigned}"), "UNAUTHORIZED", 4001).await;

    let expired = server.state.auth.mint(&claims(&server, user, -10, 3600));
    expect_refused(&server, &format!("?token={expired}"), "TOKEN_EXPIRED", 4002).await;

    let valid = server.token(Role::Viewer, user);
    expect_refused(
        &server,
        &format!("?token={valid}&streamerId=not-a-uuid"),
        "BAD_REQUEST",
        4003,
    )
    .await;
    assert_server_healthy(&server).await;
}

#[tokio::test]
async fn the_token_may_come_in_the_authorization_header_and_an_empty_streamer_id_is_none() {
    let server = TestServer::start().await;
    let token = server.token(Role::Viewer, Uuid::new_v4());
    let bearer = format!("Bearer {token}");
    let mut client = try_connect(
        &server.socket_url("?streamerId="),
        &[("authorization", &bearer)],
    )
    .await
    .unwrap();
    client.assert_responsive().await;
    assert_eq!(client.frames.len(), 1, "no subscription, only the answer");
    assert_eq!(server.state.realtime.hub().subscription_count(), 0);
    client.close().await;
}

#[tokio::test]
async fn foreign_origins_are_refused_403_before_the_upgrade() {
    let mut config = test_config();
    config.allowed_origins = AllowedOrigins::List(vec!["https://good.example".into()]);
    let server = TestServer::start_with(config).await;
    let token = server.token(Role::Viewer, Uuid::new_v4());
    let url = server.socket_url(&format!("?token={token}"));
    match try_connect(&url, &[("origin", "https://evil.example")]).await {
        Err(ConnectError::Status { status, .. }) => assert_eq!(status, 403),
        Err(other) => panic!("expected 403, got {other:?}"),
        Ok(_) => panic!("a foreign origin was upgraded"),
    }
    let mut allowed = try_connect(&url, &[("origin", "https://good.example")])
        .await
        .unwrap();
    allowed.assert_responsive().await;
    // Without an Origin it is not a browser: allowed.
    let mut backend = connect(&url).await;
    backend.assert_responsive().await;
    allowed.close().await;
    backend.close().await;
}

fn paused_config() -> livevote_server::config::Config {
    let mut config = test_config();
    // Only the token's own deadlines may fire while time is paused and jumps ahead.
    config.heartbeat_interval = Duration::from_secs(24 * 3600);
    config
}

#[tokio::test]
async fn a_token_that_runs_out_is_warned_then_closed_4002() {
    let server = TestServer::start_with(paused_config()).await;
    let user = Uuid::new_v4();
    // Ten seconds left of ten minutes: the warning (a minute before the end) is due at once.
    let token = server.state.auth.mint(&claims(&server, user, 10, 600));
    let mut client = connect(&server.socket_url(&format!("?token={token}"))).await;
    tokio::time::pause();
    client.patience = Duration::from_secs(3600);
    let warned = client.until_notice("TOKEN_EXPIRING").await;
    assert_eq!(warned.len(), 1);
    let started = tokio::time::Instant::now();
    let (messages, code) = client.until_closed().await;
    assert_eq!(describe_all(&messages), ["SYSTEM_NOTICE TOKEN_EXPIRED"]);
    assert_eq!(code, Some(4002));
    assert!(
        started.elapsed() <= Duration::from_secs(11),
        "closed at exp"
    );
}

#[tokio::test]
async fn refresh_replaces_the_token_and_a_bad_refresh_keeps_the_old_one() {
    let server = TestServer::start_with(paused_config()).await;
    let user = Uuid::new_v4();
    // 100 s left of 1,000 s: TOKEN_EXPIRING is due at exp − min(60 s, 100 s) = in 40 s.
    let token = server.state.auth.mint(&claims(&server, user, 100, 1_000));
    let mut client = connect(&server.socket_url(&format!("?token={token}"))).await;
    client.assert_responsive().await;
    tokio::time::pause();
    client.patience = Duration::from_secs(3 * 3600);
    let started = tokio::time::Instant::now();
    client.until_notice("TOKEN_EXPIRING").await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(38) && waited <= Duration::from_secs(41),
        "warned after {waited:?}"
    );

    let other_user = server
        .state
        .auth
        .mint(&claims(&server, Uuid::new_v4(), 3600, 3600));
    let expired = server.state.auth.mint(&claims(&server, user, -1, 3600));
    for denied in [other_user.as_str(), expired.as_str(), "garbage"] {
        client
            .send_json(json!({"action": "refresh", "token": denied}))
            .await;
        let answer = client.until_notice("REFRESH_DENIED").await;
        assert_eq!(answer.len(), 1);
    }
    // Short lifetime so the new warning is exp − lifetime/10.
    let fresh = server.state.auth.mint(&claims(&server, user, 200, 200));
    client
        .send_json(json!({"action": "refresh", "token": fresh}))
        .await;
    client.until_notice("TOKEN_REFRESHED").await;
    // Past the old token's exp the socket lives on.
    tokio::time::sleep(Duration::from_secs(120)).await;
    client.assert_responsive().await;
    let (messages, code) = client.until_closed().await;
    let names = describe_all(&messages);
    assert_eq!(
        names,
        [
            "SYSTEM_NOTICE TOKEN_EXPIRING",
            "SYSTEM_NOTICE TOKEN_EXPIRED"
        ]
    );
    assert_eq!(code, Some(4002));
}

#[tokio::test]
async fn a_plain_http_get_of_the_socket_path_gets_the_error_body() {
    let server = TestServer::start().await;
    let (status, body) = call(&server.state, get("/realtime", None)).await;
    assert_eq!(status.as_u16(), 400);
    assert_eq!(body["error"]["code"], "BAD_REQUEST");
}
