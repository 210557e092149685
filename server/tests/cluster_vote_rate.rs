//! `--vote-rate` across a cluster: two real nodes on one Postgres database and one Redis prefix
//! count one user's votes together, so the user gets 429 once N votes a second are used over
//! both nodes, while other users are not affected; with Redis gone each node limits by itself
//! (N a second per node, never a 500), and counting across the cluster comes back with Redis.
//! Skips, saying why, when Postgres or Redis does not answer (see `redis_support`).

mod common;
mod postgres_support;
mod redis_support;

use std::time::Duration;

use common::*;
use livevote_protocol::Role;
use postgres_support::TestDatabase;
use redis_support::*;
use serde_json::json;
use tokio::time::Instant;
use uuid::Uuid;

/// The vote rate of these tests: small, so that both nodes together pass it in a few votes.
const RATE: u32 = 3;

/// One vote's answer: its status, the error code, and Retry-After in seconds.
#[derive(Debug)]
struct Answer {
    status: u16,
    code: Option<String>,
    retry_after: Option<u64>,
}

async fn vote(server: &TestServer, voter: Uuid, event: Uuid) -> Answer {
    let token = server.token(Role::Viewer, voter);
    let response = reqwest::Client::new()
        .post(server.http(&format!("/api/events/{event}/votes")))
        .bearer_auth(&token)
        .timeout(Duration::from_secs(5))
        .json(&json!({"optionId": "red"}))
        .send()
        .await
        .expect("the node answers within 5 s");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok()?.parse().ok());
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    Answer {
        status,
        code: body["error"]["code"].as_str().map(str::to_owned),
        retry_after,
    }
}

/// What a user saw voting alternately on two nodes until the first refusal.
struct Alternation {
    /// Votes answered 200 before the first refusal, per node.
    allowed: [u32; 2],
    /// The node that refused first, if any did within the bound.
    refused_by: Option<usize>,
    elapsed: Duration,
}

/// Votes as a fresh user on A, B, A, B… as fast as it can until the first 429 (at most 4N
/// votes), and checks each answer is 200 or the contract's 429.
async fn alternate(nodes: [&TestServer; 2], event: Uuid) -> Alternation {
    let voter = Uuid::new_v4();
    let mut allowed = [0; 2];
    let started = Instant::now();
    for turn in 0..4 * RATE as usize {
        let node = turn % 2;
        let answer = vote(nodes[node], voter, event).await;
        match answer.status {
            200 => allowed[node] += 1,
            429 => {
                assert_eq!(answer.code.as_deref(), Some("RATE_LIMITED"), "{answer:?}");
                assert!(
                    answer.retry_after.is_some_and(|seconds| seconds >= 1),
                    "{answer:?}"
                );
                return Alternation {
                    allowed,
                    refused_by: Some(node),
                    elapsed: started.elapsed(),
                };
            }
            _ => panic!("a vote was answered {answer:?}"),
        }
    }
    Alternation {
        allowed,
        refused_by: None,
        elapsed: started.elapsed(),
    }
}

/// Whether the alternation was limited across the cluster: the refusal came from a node that
/// had allowed fewer than N votes itself (its own limiter, which starts with a burst of N,
/// could not have refused), after at least the burst N and at most what GCRA allows over the
/// time taken (N, plus N a second). `Err` says what was seen instead.
fn counted_across_the_cluster(run: &Alternation) -> Result<(), String> {
    let seen = format!(
        "allowed {:?} on A and B in {:?}, then refused by {:?}",
        run.allowed, run.elapsed, run.refused_by
    );
    let Some(node) = run.refused_by else {
        return Err(format!("never refused: {seen}"));
    };
    let total = run.allowed[0] + run.allowed[1];
    let most = RATE + (run.elapsed.as_secs_f64() * f64::from(RATE)).floor() as u32;
    if total < RATE || total > most {
        return Err(format!("not {RATE} a second, burst {RATE}: {seen}"));
    }
    if run.allowed[node] >= RATE {
        return Err(format!("refused by the node's own limiter: {seen}"));
    }
    Ok(())
}

/// The value of a counter summed over its labels in the Prometheus text.
async fn counter(server: &TestServer, name: &str) -> f64 {
    let text = reqwest::get(server.http("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_vote_rate_holds_across_two_nodes_and_other_users_are_not_affected() {
    let Some(redis_url) = shared_redis_or_skip().await else {
        return;
    };
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let mut config = node_config(&database.url, &redis_url, &fresh_prefix());
    config.vote_rate = RATE;
    let (node_a, node_b) = ready_nodes(config).await;
    let event = create_event_on(&node_a, Uuid::new_v4(), 600).await;

    let run = alternate([&node_a, &node_b], event).await;
    if let Err(seen) = counted_across_the_cluster(&run) {
        panic!("one user's votes are not limited across the cluster: {seen}");
    }
    // Another user has an allowance of its own, on either node.
    let other = Uuid::new_v4();
    for node in [&node_a, &node_b] {
        let answer = vote(node, other, event).await;
        assert_eq!(answer.status, 200, "{answer:?}");
    }

    node_a.stop().await;
    node_b.stop().await;
    database.audit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_gone_each_node_limits_votes_by_itself_and_counts_together_again_after() {
    let Some(mut redis) = PrivateRedis::start_or_skip().await else {
        return;
    };
    let port = redis.port;
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let mut config = node_config(&database.url, &redis.url(), &fresh_prefix());
    config.vote_rate = RATE;
    let (node_a, node_b) = ready_nodes(config).await;
    let event = create_event_on(&node_a, Uuid::new_v4(), 600).await;
    if let Err(seen) = counted_across_the_cluster(&alternate([&node_a, &node_b], event).await) {
        panic!("before the outage: {seen}");
    }

    redis.kill();
    let fallbacks_before = counter(&node_a, "livevote_vote_rate_fallbacks_total").await;
    // One user's 2N votes at once on each node: each node allows the burst N by itself (and
    // refuses the rest), so the cluster allows up to N per node while Redis is away.
    let voter = Uuid::new_v4();
    let started = Instant::now();
    let mut allowed = Vec::new();
    for node in [&node_a, &node_b] {
        let answers =
            futures_util::future::join_all((0..2 * RATE).map(|_| vote(node, voter, event))).await;
        for answer in &answers {
            assert!(
                answer.status == 200
                    || (answer.status == 429 && answer.code.as_deref() == Some("RATE_LIMITED")),
                "a vote with Redis gone was answered {answer:?}"
            );
        }
        allowed.push(answers.iter().filter(|answer| answer.status == 200).count() as u32);
    }
    let most = RATE + (started.elapsed().as_secs_f64() * f64::from(RATE)).floor() as u32;
    for (node, allowed) in allowed.iter().enumerate() {
        assert!(
            (1..=most).contains(allowed),
            "node {node} allowed {allowed} of {} votes with Redis gone (at most {most})",
            2 * RATE
        );
    }
    assert!(
        counter(&node_a, "livevote_vote_rate_fallbacks_total").await > fallbacks_before,
        "the fallback to the node's own limiter is not counted"
    );

    // Redis comes back: within a few seconds one user's votes count across both nodes again.
    let _redis = PrivateRedis::start(port)
        .await
        .expect("redis-server restarts");
    wait_for_readiness(&node_a, 200, Duration::from_secs(10)).await;
    wait_for_readiness(&node_b, 200, Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let run = alternate([&node_a, &node_b], event).await;
        let Err(seen) = counted_across_the_cluster(&run) else {
            break;
        };
        assert!(
            Instant::now() < deadline,
            "5 s after Redis came back: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    node_a.stop().await;
    node_b.stop().await;
    database.audit().await;
}
