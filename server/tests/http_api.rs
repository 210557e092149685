//! The HTTP API of docs/contract.md §3–§4 through the router (`oneshot`): status codes, the
//! error body, roles, validation, votes, idempotency, closing, credits, notices, CORS and
//! operations.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use livevote_protocol::Role;
use serde_json::{json, Value};
use uuid::Uuid;

fn assert_error(
    status: StatusCode,
    body: &Value,
    expected_status: StatusCode,
    expected_code: &str,
) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["error"]["code"], expected_code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|message| !message.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn auth_mints_tokens_and_checks_the_api_key_outside_dev() {
    let mut config = test_config();
    config.dev = false;
    let state = router_state(config).await;
    let user = Uuid::new_v4();
    let request = json!({"apiKey": API_KEY, "userId": user, "role": "viewer", "ttlSeconds": 120});
    let (status, body) = call(&state, post("/api/auth", None, &request)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["token"].as_str().unwrap();
    assert!(body["expiresAt"].as_str().unwrap().ends_with('Z'));
    let claims = state
        .auth
        .verify(token, state.clock.unix_seconds())
        .unwrap();
    assert_eq!((claims.sub, claims.role), (user, Role::Viewer));
    assert_eq!(claims.exp - claims.iat, 120);

    let wrong = json!({"apiKey": "nope", "userId": user, "role": "viewer"});
    let (status, body) = call(&state, post("/api/auth", None, &wrong)).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "INVALID_API_KEY");

    let (status, body) = call(&state, post_raw("/api/auth", None, "{not json".into())).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    let (status, body) = call(
        &state,
        post(
            "/api/auth",
            None,
            &json!({"apiKey": API_KEY, "role": "viewer"}),
        ),
    )
    .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    let bad_role = json!({"apiKey": API_KEY, "userId": user, "role": "king"});
    let (status, body) = call(&state, post("/api/auth", None, &bad_role)).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    let streamer_without_id = json!({"apiKey": API_KEY, "userId": user, "role": "streamer"});
    let (status, body) = call(&state, post("/api/auth", None, &streamer_without_id)).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    let not_a_uuid = json!({"apiKey": API_KEY, "userId": "user-1", "role": "viewer"});
    let (status, body) = call(&state, post("/api/auth", None, &not_a_uuid)).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    // A key that shares a prefix with the real one, or is longer, is just as wrong.
    for wrong_key in [&API_KEY[..4], &format!("{API_KEY}x")[..]] {
        let body = json!({"apiKey": wrong_key, "userId": user, "role": "viewer"});
        let (status, body) = call(&state, post("/api/auth", None, &body)).await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "INVALID_API_KEY");
    }
}

#[tokio::test]
async fn every_api_call_needs_a_valid_token() {
    let state = router_state(test_config()).await;
    let (status, body) = call(&state, get("/api/balance", None)).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let (status, body) = call(&state, get("/api/balance", Some("garbage"))).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "INVALID_TOKEN");

    // Signed with another secret.
    let forger = livevote_server::auth::Authenticator::new("some-other-secret-some-other-secret!!");
    let now = state.clock.unix_seconds();
    let claims = livevote_server::auth::Claims {
        sub: Uuid::new_v4(),
        role: Role::Admin,
        streamer_id: None,
        iat: now,
        exp: now + 60,
    };
    let (status, _) = call(&state, get("/api/balance", Some(&forger.mint(&claims)))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // alg: none with admin claims.
    let (status, _) = call(&state, get("/api/balance", Some(&unsigned_token(&claims)))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Expired.
    let expired = livevote_server::auth::Claims {
        iat: now - 120,
        exp: now - 60,
        ..claims
    };
    let (status, body) = call(
        &state,
        get("/api/balance", Some(&state.auth.mint(&expired))),
    )
    .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "TOKEN_EXPIRED");
}

#[tokio::test]
async fn the_first_authenticated_request_credits_the_initial_balance_once() {
    let state = router_state(test_config()).await;
    let user = Uuid::new_v4();
    let token = mint(&state, Role::Viewer, user, None);
    for _ in 0..3 {
        let (status, body) = call(&state, get("/api/balance", Some(&token))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"userId": user, "balance": 10_000}));
    }
    let entries = state.store.ledger_entries(user).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].amount, 10_000);
}

#[tokio::test]
async fn events_are_validated_created_and_read_back() {
    let state = router_state(test_config()).await;
    let worker = mint(&state, Role::Worker, Uuid::new_v4(), None);
    let viewer = mint(&state, Role::Viewer, Uuid::new_v4(), None);
    let streamer = Uuid::new_v4();
    let mut body = event_body(&state, streamer, 60);
    body["id"] = json!(Uuid::new_v4());

    let (status, created) = call(&state, post("/api/events", Some(&worker), &body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        created["event"]["promptVersions"],
        json!({"session": "v12", "game": "v3"})
    );
    let (status, again) = call(&state, post("/api/events", Some(&worker), &body)).await;
    assert_eq!((status, &again), (StatusCode::OK, &created));
    let mut different = body.clone();
    different["title"] = json!("Something else");
    let (status, conflict) = call(&state, post("/api/events", Some(&worker), &different)).await;
    assert_error(status, &conflict, StatusCode::CONFLICT, "CONFLICT");

    let (status, forbidden) = call(
        &state,
        post(
            "/api/events",
            Some(&viewer),
            &event_body(&state, streamer, 60),
        ),
    )
    .await;
    assert_error(status, &forbidden, StatusCode::FORBIDDEN, "FORBIDDEN");

    let id = created["event"]["id"].as_str().unwrap();
    let (status, read) = call(&state, get(&format!("/api/events/{id}"), Some(&viewer))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["status"], "open");
    assert_eq!(read["totals"], json!({"red": 0, "blue": 0}));
    assert_eq!(read["result"], Value::Null);
    assert_eq!(read["event"], created["event"]);

    let (status, missing) = call(
        &state,
        get(&format!("/api/events/{}", Uuid::new_v4()), Some(&viewer)),
    )
    .await;
    assert_error(status, &missing, StatusCode::NOT_FOUND, "NOT_FOUND");

    let (status, list) = call(
        &state,
        get(
            &format!("/api/events?streamerId={streamer}&status=open"),
            Some(&viewer),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["events"].as_array().unwrap().len(), 1);
    let (status, list) = call(
        &state,
        get(
            &format!("/api/events?streamerId={streamer}&status=closed"),
            Some(&viewer),
        ),
    )
    .await;
    assert_eq!(
        (status, list["events"].as_array().unwrap().len()),
        (StatusCode::OK, 0)
    );
    let (status, bad) = call(&state, get("/api/events?status=maybe", Some(&viewer))).await;
    assert_error(status, &bad, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    let (status, _) = call(&state, get("/api/events?streamerId=nope", Some(&viewer))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn event_rules_are_422_and_json_shape_is_400() {
    let state = router_state(test_config()).await;
    let worker = mint(&state, Role::Worker, Uuid::new_v4(), None);
    let base = event_body(&state, Uuid::new_v4(), 60);
    let far = (state.clock.now() + chrono::Duration::hours(25)).to_rfc3339();
    let past = (state.clock.now() - chrono::Duration::seconds(1)).to_rfc3339();
    let rule_breaks: Vec<(&str, Value)> = vec![
        ("title", json!("")),
        ("title", json!("x".repeat(201))),
        ("options", json!([{"id": "a", "label": "A"}])),
        (
            "options",
            json!((0..11)
                .map(|i| json!({"id": i.to_string(), "label": "L"}))
                .collect::<Vec<_>>()),
        ),
        (
            "options",
            json!([{"id": "a", "label": "A"}, {"id": "a", "label": "B"}]),
        ),
        (
            "options",
            json!([{"id": "", "label": "A"}, {"id": "b", "label": "B"}]),
        ),
        (
            "options",
            json!([{"id": "x".repeat(65), "label": "A"}, {"id": "b", "label": "B"}]),
        ),
        (
            "options",
            json!([{"id": "a", "label": ""}, {"id": "b", "label": "B"}]),
        ),
        ("closesAt", json!(past)),
        ("closesAt", json!(far)),
        ("closesAt", json!("tomorrow")),
        ("costPerVote", json!(0)),
        ("costPerVote", json!(1_000_001)),
        ("costPerVote", json!(1.5)),
        ("streamerId", json!("not-a-uuid")),
        ("gameId", json!("not-a-uuid")),
        ("id", json!("not-a-uuid")),
    ];
    for (field, value) in rule_breaks {
        let mut body = base.clone();
        body[field] = value.clone();
        let (status, answer) = call(&state, post("/api/events", Some(&worker), &body)).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{field}={value}: {answer}"
        );
        assert_eq!(answer["error"]["code"], "VALIDATION_FAILED");
    }
    let shape_breaks: Vec<(&str, Value)> = vec![
        ("title", json!(5)),
        ("options", json!("a,b")),
        ("costPerVote", json!("10")),
        ("promptVersions", json!({"game": 3})),
        ("closesAt", Value::Null),
    ];
    for (field, value) in shape_breaks {
        let mut body = base.clone();
        body[field] = value.clone();
        let (status, answer) = call(&state, post("/api/events", Some(&worker), &body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}={value}: {answer}");
    }
    let mut missing = base.clone();
    missing.as_object_mut().unwrap().remove("title");
    let (status, _) = call(&state, post("/api/events", Some(&worker), &missing)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let mut extra = base.clone();
    extra["unknownField"] = json!({"ignored": true});
    let (status, _) = call(&state, post("/api/events", Some(&worker), &extra)).await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn a_ten_mebibyte_body_is_413_and_the_server_stays_healthy() {
    let state = router_state(test_config()).await;
    let worker = mint(&state, Role::Worker, Uuid::new_v4(), None);
    let huge = format!("{{\"title\": \"{}\"}}", "x".repeat(10 * 1024 * 1024));
    let (status, body) = call(&state, post_raw("/api/events", Some(&worker), huge)).await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
    );
    let (status, _) = call(&state, get("/healthz", None)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn votes_debit_the_ledger_and_refuse_what_breaks_a_rule() {
    let state = router_state(test_config()).await;
    let event = create_event(&state, Uuid::new_v4(), 60).await;
    let user = Uuid::new_v4();
    let viewer = mint(&state, Role::Viewer, user, None);
    let path = format!("/api/events/{event}/votes");

    let (status, body) = call(
        &state,
        post(
            &path,
            Some(&viewer),
            &json!({"optionId": "red", "votes": 3}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"balance": 10_000 - 30, "totals": {"red": 3, "blue": 0}})
    );
    let (_, body) = call(
        &state,
        post(&path, Some(&viewer), &json!({"optionId": "blue"})),
    )
    .await;
    assert_eq!(
        body,
        json!({"balance": 10_000 - 40, "totals": {"red": 3, "blue": 1}})
    );

    let (status, body) = call(
        &state,
        post(&path, Some(&viewer), &json!({"optionId": "green"})),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "UNKNOWN_OPTION",
    );
    for votes in [json!(0), json!(1001), json!(2.5), json!(-1)] {
        let (status, body) = call(
            &state,
            post(
                &path,
                Some(&viewer),
                &json!({"optionId": "red", "votes": votes}),
            ),
        )
        .await;
        assert_error(
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_VOTES",
        );
    }
    let (status, body) = call(
        &state,
        post(
            &path,
            Some(&viewer),
            &json!({"optionId": "red", "votes": 1000}),
        ),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::PAYMENT_REQUIRED,
        "INSUFFICIENT_BALANCE",
    );
    let (status, _) = call(&state, post(&path, Some(&viewer), &json!({"votes": 1}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = call(
        &state,
        post(
            &format!("/api/events/{}/votes", Uuid::new_v4()),
            Some(&viewer),
            &json!({"optionId": "red"}),
        ),
    )
    .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    let worker = mint(&state, Role::Worker, Uuid::new_v4(), None);
    let (status, _) = call(
        &state,
        post(&path, Some(&worker), &json!({"optionId": "red"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let admin = mint(&state, Role::Admin, Uuid::new_v4(), None);
    let (status, _) = call(
        &state,
        post(
            &format!("/api/events/{event}/close"),
            Some(&admin),
            &json!({}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = call(
        &state,
        post(&path, Some(&viewer), &json!({"optionId": "red"})),
    )
    .await;
    assert_error(status, &body, StatusCode::CONFLICT, "EVENT_CLOSED");

    let entries = state.store.ledger_entries(user).await.unwrap();
    let sum: i64 = entries.iter().map(|entry| entry.amount).sum();
    assert_eq!(
        sum,
        10_000 - 40,
        "balance equals the sum of the ledger entries"
    );
}

#[tokio::test]
async fn idempotent_votes_replay_the_first_answer_and_debit_once() {
    let state = router_state(test_config()).await;
    let event = create_event(&state, Uuid::new_v4(), 60).await;
    let viewer = mint(&state, Role::Viewer, Uuid::new_v4(), None);
    let path = format!("/api/events/{event}/votes");
    let vote = |body: Value, key: &str| post_with_key(&path, &viewer, &body, Some(key));
    let (status, first) = call(
        &state,
        vote(json!({"optionId": "red", "votes": 2}), "key-1"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Another vote moves the totals; the replay still answers what the first request answered.
    call(&state, vote(json!({"optionId": "blue"}), "key-2")).await;
    let (status, replay) = call(
        &state,
        vote(json!({"votes": 2, "optionId": "red"}), "key-1"),
    )
    .await;
    assert_eq!((status, &replay), (StatusCode::OK, &first));
    let (status, body) = call(
        &state,
        vote(json!({"optionId": "blue", "votes": 2}), "key-1"),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "IDEMPOTENCY_KEY_REUSED",
    );
    let (_, balance) = call(&state, get("/api/balance", Some(&viewer))).await;
    assert_eq!(balance["balance"], 10_000 - 30);

    // Two identical requests at once: one debit.
    let (a, b) = tokio::join!(
        call(&state, vote(json!({"optionId": "red"}), "key-3")),
        call(&state, vote(json!({"optionId": "red"}), "key-3"))
    );
    assert_eq!(a, b);
    let (_, balance) = call(&state, get("/api/balance", Some(&viewer))).await;
    assert_eq!(balance["balance"], 10_000 - 40);
}

#[tokio::test]
async fn closing_picks_the_winner_and_is_repeatable() {
    let state = router_state(test_config()).await;
    let streamer_id = Uuid::new_v4();
    let owner = mint(&state, Role::Streamer, Uuid::new_v4(), Some(streamer_id));
    let other_streamer = mint(&state, Role::Streamer, Uuid::new_v4(), Some(Uuid::new_v4()));
    let viewer = mint(&state, Role::Viewer, Uuid::new_v4(), None);

    // No votes: a tie, won by the first option.
    let event = create_event(&state, streamer_id, 60).await;
    let close = format!("/api/events/{event}/close");
    let (status, body) = call(&state, post(&close, Some(&other_streamer), &json!({}))).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "FORBIDDEN");
    let (status, _) = call(&state, post(&close, Some(&viewer), &json!({}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = call(&state, post_raw(&close, Some(&owner), String::new())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"eventId": event, "result": {"optionId": "red", "totals": {"red": 0, "blue": 0}}})
    );
    let (status, again) = call(&state, post(&close, Some(&owner), &json!({}))).await;
    assert_eq!((status, again), (StatusCode::OK, body));

    // Most votes wins.
    let event = create_event(&state, streamer_id, 60).await;
    vote(&state, &viewer, event, "blue", 2).await;
    let (_, body) = call(
        &state,
        post(
            &format!("/api/events/{event}/close"),
            Some(&owner),
            &json!({}),
        ),
    )
    .await;
    assert_eq!(
        body["result"],
        json!({"optionId": "blue", "totals": {"red": 0, "blue": 2}})
    );
    let (_, read) = call(&state, get(&format!("/api/events/{event}"), Some(&viewer))).await;
    assert_eq!(
        (read["status"].as_str(), &read["result"]),
        (Some("closed"), &body["result"])
    );

    // The close request names the result; an unknown option is 422.
    let event = create_event(&state, streamer_id, 60).await;
    let close = format!("/api/events/{event}/close");
    let (status, body) = call(
        &state,
        post(&close, Some(&owner), &json!({"optionId": "purple"})),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "UNKNOWN_OPTION",
    );
    let (_, body) = call(
        &state,
        post(&close, Some(&owner), &json!({"optionId": "blue"})),
    )
    .await;
    assert_eq!(body["result"]["optionId"], "blue");
    let (status, _) = call(
        &state,
        post(
            &format!("/api/events/{}/close", Uuid::new_v4()),
            Some(&owner),
            &json!({}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn admins_credit_balances_idempotently() {
    let state = router_state(test_config()).await;
    let admin = mint(&state, Role::Admin, Uuid::new_v4(), None);
    let viewer = mint(&state, Role::Viewer, Uuid::new_v4(), None);
    let user = Uuid::new_v4();
    let credit = |token: &str, body: Value, key: Option<&str>| {
        post_with_key("/api/ledger/credit", token, &body, key)
    };
    let body = json!({"userId": user, "amount": 500, "reason": "giveaway"});
    let (status, answer) = call(&state, credit(&admin, body.clone(), Some("grant-1"))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer, json!({"userId": user, "balance": 10_500}));
    let (_, replay) = call(&state, credit(&admin, body.clone(), Some("grant-1"))).await;
    assert_eq!(replay, answer);
    let (status, _) = call(
        &state,
        credit(
            &admin,
            json!({"userId": user, "amount": 7, "reason": "x"}),
            Some("grant-1"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = call(&state, credit(&viewer, body.clone(), None)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, answer) = call(
        &state,
        credit(
            &admin,
            json!({"userId": user, "amount": 0, "reason": "x"}),
            None,
        ),
    )
    .await;
    assert_error(
        status,
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "INVALID_AMOUNT",
    );
    let (status, _) = call(
        &state,
        credit(
            &admin,
            json!({"userId": user, "amount": "5", "reason": "x"}),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(
        &state,
        credit(
            &admin,
            json!({"userId": "bob", "amount": 5, "reason": "x"}),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let entries = state.store.ledger_entries(user).await.unwrap();
    assert_eq!(
        entries.iter().map(|entry| entry.amount).collect::<Vec<_>>(),
        vec![10_000, 500]
    );
}

#[tokio::test]
async fn notices_are_admin_only_and_validated() {
    let state = router_state(test_config()).await;
    let admin = mint(&state, Role::Admin, Uuid::new_v4(), None);
    let viewer = mint(&state, Role::Viewer, Uuid::new_v4(), None);
    let notice = json!({"channel": "*", "code": "MAINTENANCE", "message": "back in 5"});
    let (status, _) = call(&state, post("/api/notices", Some(&admin), &notice)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = call(&state, post("/api/notices", Some(&viewer), &notice)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let bad_channel = json!({"channel": "room:1", "code": "MAINTENANCE", "message": "x"});
    let (status, body) = call(&state, post("/api/notices", Some(&admin), &bad_channel)).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    let (status, _) = call(
        &state,
        post("/api/notices", Some(&admin), &json!({"channel": "*"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn browser_origins_follow_the_allow_list() {
    let mut config = test_config();
    config.allowed_origins =
        livevote_server::config::AllowedOrigins::List(vec!["https://overlay.example".into()]);
    let state = router_state(config).await;
    let preflight = Request::builder()
        .method("OPTIONS")
        .uri("/api/events")
        .header("origin", "https://overlay.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,idempotency-key",
        )
        .body(Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(livevote_server::app(state.clone()), preflight)
        .await
        .unwrap();
    assert!(response.status().is_success());
    let headers = response.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://overlay.example"
    );
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(
        allowed.contains("idempotency-key") && allowed.contains("authorization"),
        "{allowed}"
    );

    // A page on the allowed origin can read Retry-After (a 429 or 503 says how long to wait).
    let viewer = mint(&state, Role::Viewer, Uuid::new_v4(), None);
    let allowed_call = Request::get("/api/balance")
        .header("origin", "https://overlay.example")
        .header("authorization", format!("Bearer {viewer}"))
        .body(Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(livevote_server::app(state.clone()), allowed_call)
        .await
        .unwrap();
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(exposed.contains("retry-after"), "{exposed}");

    let foreign = Request::get("/api/balance")
        .header("origin", "https://evil.example")
        .body(Body::empty())
        .unwrap();
    let (status, body) = call(&state, foreign).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "FORBIDDEN");
    let (status, _) = call(&state, get("/healthz", None)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "requests without Origin are not browser calls"
    );
}

#[tokio::test]
async fn operations_endpoints_answer() {
    let state = router_state(test_config()).await;
    let (status, _) = call(&state, get("/healthz", None)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&state, get("/readyz", None)).await;
    assert_eq!(status, StatusCode::OK);
    let event = create_event(&state, Uuid::new_v4(), 60).await;
    let viewer = mint(&state, Role::Viewer, Uuid::new_v4(), None);
    call(
        &state,
        post(
            &format!("/api/events/{event}/votes"),
            Some(&viewer),
            &json!({"optionId": "red"}),
        ),
    )
    .await;
    let (status, body) = call(&state, get("/metrics", None)).await;
    assert_eq!(status, StatusCode::OK);
    let text = body.as_str().unwrap();
    for metric in [
        "livevote_votes_total",
        "livevote_store_queries_total",
        "livevote_events_created_total",
    ] {
        assert!(text.contains(metric), "{metric} missing from /metrics");
    }
    let (status, body) = call(&state, get("/api/nothing-here", None)).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
}

#[tokio::test]
async fn past_the_open_events_cap_a_create_is_409_and_a_retry_of_an_existing_one_is_200() {
    let mut config = test_config();
    config.max_open_events = 3;
    let state = router_state(config).await;
    let worker = mint(&state, Role::Worker, Uuid::new_v4(), None);
    let streamer = Uuid::new_v4();
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let mut body = event_body(&state, streamer, 600);
        body["id"] = json!(Uuid::new_v4());
        let (status, answer) = call(&state, post("/api/events", Some(&worker), &body)).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        bodies.push(body);
    }
    let (status, answer) = call(
        &state,
        post(
            "/api/events",
            Some(&worker),
            &event_body(&state, streamer, 600),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["error"]["code"], "TOO_MANY_OPEN_EVENTS");
    // Retrying a create that succeeded is still answered 200.
    let (status, answer) = call(&state, post("/api/events", Some(&worker), &bodies[0])).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // Another streamer is not affected, and closing one event makes room again.
    let (status, _) = call(
        &state,
        post(
            "/api/events",
            Some(&worker),
            &event_body(&state, Uuid::new_v4(), 600),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let first = bodies[0]["id"].as_str().unwrap();
    let (status, _) = call(
        &state,
        post(
            &format!("/api/events/{first}/close"),
            Some(&worker),
            &json!({}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer) = call(
        &state,
        post(
            "/api/events",
            Some(&worker),
            &event_body(&state, streamer, 600),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
}

#[tokio::test]
async fn in_dev_a_foreign_page_cannot_mint_a_token_but_a_local_one_can() {
    let config = test_config().finish().expect("a valid dev configuration");
    let state = router_state(config).await;
    let body = json!({"userId": Uuid::new_v4(), "role": "admin"});
    for (origin, expected) in [
        ("https://evil.example", StatusCode::FORBIDDEN),
        ("http://localhost:5173", StatusCode::OK),
        ("http://127.0.0.1:8080", StatusCode::OK),
    ] {
        let request = Request::builder()
            .method("POST")
            .uri("/api/auth")
            .header("content-type", "application/json")
            .header("origin", origin)
            .body(Body::from(body.to_string()))
            .unwrap();
        let (status, answer) = call(&state, request).await;
        assert_eq!(status, expected, "{origin}: {answer}");
    }
}

#[tokio::test]
async fn the_event_list_is_paged_by_cursor_and_limited_per_user() {
    let mut config = test_config();
    config.list_rate = 1_000;
    let state = router_state(config).await;
    let streamer = Uuid::new_v4();
    let mut created = Vec::new();
    for seconds in [600, 700, 800, 900, 1000] {
        created.push(create_event(&state, streamer, seconds).await);
    }
    let reader = mint(&state, Role::Viewer, Uuid::new_v4(), None);
    let mut listed = Vec::new();
    let mut path = format!("/api/events?streamerId={streamer}&limit=2");
    for page in 0.. {
        assert!(page < 5, "paging did not end");
        let (status, body) = call(&state, get(&path, Some(&reader))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let events = body["events"].as_array().unwrap();
        assert!(events.len() <= 2);
        listed.extend(
            events
                .iter()
                .map(|item| item["event"]["id"].as_str().unwrap().to_owned()),
        );
        match body["nextCursor"].as_str() {
            Some(cursor) => {
                path = format!("/api/events?streamerId={streamer}&limit=2&cursor={cursor}")
            }
            None => break,
        }
    }
    // Latest closesAt first, every event once.
    let expected: Vec<String> = created.iter().rev().map(Uuid::to_string).collect();
    assert_eq!(listed, expected);
    for bad in ["limit=0", "limit=201", "limit=many", "cursor=garbage"] {
        let (status, body) = call(&state, get(&format!("/api/events?{bad}"), Some(&reader))).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    }
    // The rate is per user: with 1 a second, a second request at once is 429.
    let mut config = test_config();
    config.list_rate = 1;
    let state = router_state(config).await;
    let reader = mint(&state, Role::Viewer, Uuid::new_v4(), None);
    let (status, _) = call(&state, get("/api/events", Some(&reader))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = call(&state, get("/api/events", Some(&reader))).await;
    assert_error(status, &body, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
    let other = mint(&state, Role::Viewer, Uuid::new_v4(), None);
    let (status, _) = call(&state, get("/api/events", Some(&other))).await;
    assert_eq!(status, StatusCode::OK, "another user is not limited");
}
