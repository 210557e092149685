//! `/api/auth` against a key-guessing client on a real socket: past `--auth-failure-limit` wrong
//! keys its address gets 429 with Retry-After, even for the right key, while a backend on
//! another address still mints tokens.

mod common;

use std::net::IpAddr;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

fn client_from(address: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(address.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn mint(
    server: &TestServer,
    client: &reqwest::Client,
    key: &str,
) -> (StatusCode, Option<String>, Value) {
    let body = json!({"apiKey": key, "userId": Uuid::new_v4(), "role": "viewer"});
    let response = client
        .post(server.http("/api/auth"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap().to_owned());
    (status, retry_after, response.json().await.unwrap())
}

#[tokio::test]
async fn wrong_keys_hold_back_their_address_and_no_other() {
    let mut config = test_config();
    config.dev = false;
    config.auth_failure_limit = 5;
    let server = TestServer::start_with(config).await;
    let guesser = client_from("127.0.0.2");
    let backend = client_from("127.0.0.3");

    for guess in 0..5 {
        let (status, _, body) = mint(&server, &guesser, &format!("guess-{guess}")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["error"]["code"], "INVALID_API_KEY");
    }
    let (status, retry_after, body) = mint(&server, &guesser, "guess-5").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "RATE_LIMITED");
    let wait: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=61).contains(&wait), "Retry-After {wait}");
    // The right key does not get through either: a guess must not be confirmable while held.
    let (status, _, body) = mint(&server, &guesser, API_KEY).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");

    // A backend on another address keeps minting, wrong keys of the guesser notwithstanding.
    for _ in 0..20 {
        let (status, _, body) = mint(&server, &backend, API_KEY).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    server.stop().await;
}
