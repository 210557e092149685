//! A livevote worker you can copy: it gets a worker token from `/api/auth` with the API key,
//! creates events with ids it chooses (so a retry after a lost answer is harmless: the server
//! answers 200 to an identical re-send), and closes one event by hand.
//!
//! Configuration (environment):
//! - `LIVEVOTE_URL`: the server, default `http://127.0.0.1:8080`
//! - `LIVEVOTE_API_KEY`: the key trusted backends present to `/api/auth` (any value in `--dev`)
//! - `LIVEVOTE_STREAMER_ID`: whose stream the events belong to, default the demo streamer
//! - `LIVEVOTE_WORKER_ID`: the worker's own user id, default a new random one
//! - `EVENT_COUNT` (default 3) and `EVENT_SECONDS` (default 90): how many events and how long
//!   each stays open

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rand::Rng;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

/// The streamer the demo server's overlay shows (`cargo xtask demo`), so that events created
/// here appear on it.
const DEMO_STREAMER_ID: &str = "5f1c0a4e-7d1b-4c39-9a55-3d2f6c8e9b10";

/// How many times one request is tried before giving up.
const MAX_ATTEMPTS: u32 = 6;

#[derive(Debug, Clone)]
struct Settings {
    base_url: String,
    api_key: String,
    streamer_id: Uuid,
    worker_id: Uuid,
    event_count: usize,
    event_duration: Duration,
}

impl Settings {
    fn from_environment() -> Result<Self> {
        let variable =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        let streamer_id = variable("LIVEVOTE_STREAMER_ID", DEMO_STREAMER_ID);
        let worker_id = match std::env::var("LIVEVOTE_WORKER_ID") {
            Ok(text) => text.parse().context("LIVEVOTE_WORKER_ID must be a uuid")?,
            Err(_) => Uuid::new_v4(),
        };
        Ok(Settings {
            base_url: variable("LIVEVOTE_URL", "http://127.0.0.1:8080")
                .trim_end_matches('/')
                .to_owned(),
            api_key: variable("LIVEVOTE_API_KEY", ""),
            streamer_id: streamer_id
                .parse()
                .context("LIVEVOTE_STREAMER_ID must be a uuid")?,
            worker_id,
            event_count: variable("EVENT_COUNT", "3")
                .parse()
                .context("EVENT_COUNT must be a number")?,
            event_duration: Duration::from_secs(
                variable("EVENT_SECONDS", "90")
                    .parse()
                    .context("EVENT_SECONDS must be a number of seconds")?,
            ),
        })
    }
}

/// The server's error body: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

/// A client for the few calls a worker makes, holding its current token.
struct Worker {
    http: reqwest::Client,
    settings: Settings,
    token: String,
}

/// What the server answered, after retries.
struct Answer {
    status: StatusCode,
    body: Value,
}

impl Worker {
    async fn connect(settings: Settings) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut worker = Worker {
            http,
            settings,
            token: String::new(),
        };
        worker.token = worker.fetch_token().await?;
        Ok(worker)
    }

    /// `POST /api/auth` with the API key: a worker token for one hour.
    async fn fetch_token(&self) -> Result<String> {
        let body = json!({
            "apiKey": self.settings.api_key,
            "userId": self.settings.worker_id,
            "role": "worker",
            "ttlSeconds": 3600,
        });
        let answer = self
            .send_with_retries(reqwest::Method::POST, "/api/auth", Some(&body), false)
            .await?;
        if answer.status != StatusCode::OK {
            bail!("/api/auth refused the worker: {}", describe_error(&answer));
        }
        answer.body["token"]
            .as_str()
            .map(str::to_owned)
            .context("/api/auth answered without a token")
    }

    /// Sends one request, retrying what is safe to retry: network errors, timeouts, 429 and
    /// 5xx answers. Every call here is idempotent (events carry their own id, closing a closed
    /// event answers the same result), so a retry after a lost answer changes nothing.
    async fn send_with_retries(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        authorized: bool,
    ) -> Result<Answer> {
        let url = format!("{}{path}", self.settings.base_url);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self.http.request(method.clone(), &url);
            if authorized {
                request = request.bearer_auth(&self.token);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let (retry, wait_hint) = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|value| value.to_str().ok())
                        .and_then(|value| value.parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let text = response.text().await.unwrap_or_default();
                    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
                    let retryable =
                        status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
                    if !retryable || attempt >= MAX_ATTEMPTS {
                        return Ok(Answer { status, body });
                    }
                    (format!("{status}"), retry_after)
                }
                Err(error) if attempt < MAX_ATTEMPTS => (error.to_string(), None),
                Err(error) => {
                    return Err(error)
                        .with_context(|| format!("{method} {path} failed {attempt} times"))
                }
            };
            let wait = wait_hint.unwrap_or_else(|| backoff(attempt));
            eprintln!(
                "{method} {path}: {retry}; retrying in {} ms",
                wait.as_millis()
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// An authorized call; a 401 (token expired) gets one new token and one more try.
    async fn call(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer> {
        let answer = self
            .send_with_retries(method.clone(), path, body, true)
            .await?;
        if answer.status != StatusCode::UNAUTHORIZED {
            return Ok(answer);
        }
        self.token = self.fetch_token().await?;
        self.send_with_retries(method, path, body, true).await
    }

    /// `POST /api/events` with an id chosen here: 201 created, 200 the same event was already
    /// there (an earlier attempt got through), 409 a different event already has this id.
    async fn create_event(&mut self, event: &Value) -> Result<StatusCode> {
        let answer = self
            .call(reqwest::Method::POST, "/api/events", Some(event))
            .await?;
        match answer.status {
            StatusCode::CREATED | StatusCode::OK => Ok(answer.status),
            _ => bail!(
                "could not create event {}: {}",
                event["id"],
                describe_error(&answer)
            ),
        }
    }

    /// `POST /api/events/{id}/close`: the result is the option with the most votes.
    async fn close_event(&mut self, event_id: Uuid) -> Result<Value> {
        let answer = self
            .call(
                reqwest::Method::POST,
                &format!("/api/events/{event_id}/close"),
                Some(&json!({})),
            )
            .await?;
        if answer.status != StatusCode::OK {
            bail!(
                "could not close event {event_id}: {}",
                describe_error(&answer)
            );
        }
        Ok(answer.body["result"].clone())
    }
}

/// Full-jitter exponential backoff: a random wait up to 250 ms × 2^attempt, capped at 8 s, so
/// that many workers retrying at once do not hit the server together.
fn backoff(attempt: u32) -> Duration {
    let ceiling = 250u64.saturating_mul(1 << attempt.min(5)).min(8_000);
    Duration::from_millis(rand::thread_rng().gen_range(ceiling / 4..=ceiling))
}

fn describe_error(answer: &Answer) -> String {
    match serde_json::from_value::<ErrorBody>(answer.body.clone()) {
        Ok(body) => format!(
            "{} {}: {}",
            answer.status, body.error.code, body.error.message
        ),
        Err(_) => format!("{} {}", answer.status, answer.body),
    }
}

/// A believable event for a game stream; in a real worker this comes from your game logic.
fn build_event(settings: &Settings, index: usize) -> Value {
    const PROMPTS: [(&str, [&str; 3]); 3] = [
        (
            "Will the squad clear the next wave without a revive?",
            ["Flawless", "One revive", "Wipe"],
        ),
        (
            "Which route should the run take?",
            ["Sewers", "Rooftops", "Main street"],
        ),
        (
            "How many kills before the next extraction?",
            ["0–2", "3–5", "6 or more"],
        ),
    ];
    let (title, labels) = PROMPTS[index % PROMPTS.len()];
    let options: Vec<Value> = labels
        .iter()
        .enumerate()
        .map(|(position, label)| json!({"id": format!("option-{}", position + 1), "label": label}))
        .collect();
    let closes_at = chrono::Utc::now()
        + chrono::Duration::from_std(settings.event_duration).unwrap_or_default();
    let prompt_versions: BTreeMap<&str, &str> =
        [("session", "v12"), ("game", "v3"), ("perClip", "v7")]
            .into_iter()
            .collect();
    json!({
        "id": Uuid::new_v4(),
        "streamerId": settings.streamer_id,
        "gameId": null,
        "title": title,
        "options": options,
        "closesAt": closes_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "costPerVote": 10,
        "promptVersions": prompt_versions,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let settings = Settings::from_environment()?;
    println!(
        "worker {} talking to {} for streamer {}",
        settings.worker_id, settings.base_url, settings.streamer_id
    );
    let mut worker = Worker::connect(settings.clone()).await?;
    println!("got a worker token from /api/auth");

    let mut created = Vec::new();
    for index in 0..settings.event_count {
        let event = build_event(&settings, index);
        let status = worker.create_event(&event).await?;
        println!(
            "created event {} \"{}\" ({})",
            event["id"].as_str().unwrap_or_default(),
            event["title"].as_str().unwrap_or_default(),
            status.as_u16()
        );
        created.push(event);
    }

    let Some(first) = created.first() else {
        println!("EVENT_COUNT is 0: nothing else to do");
        return Ok(());
    };

    // Sending the same event again, as a retry after a lost answer would, changes nothing.
    let status = worker.create_event(first).await?;
    println!(
        "re-sent event {}: {} (already created, nothing changed)",
        first["id"].as_str().unwrap_or_default(),
        status.as_u16()
    );

    // Closing by hand, before `closesAt`: the winner is the option with the most votes so far.
    let first_id: Uuid = serde_json::from_value(first["id"].clone())?;
    let result = worker.close_event(first_id).await?;
    println!(
        "closed event {first_id} by hand: winner {}, totals {}",
        result["optionId"].as_str().unwrap_or("?"),
        result["totals"]
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_capped() {
        for attempt in 1..20 {
            let wait = backoff(attempt);
            assert!(
                wait <= Duration::from_secs(8),
                "attempt {attempt} waits {wait:?}"
            );
            assert!(wait >= Duration::from_millis(125));
        }
    }

    #[test]
    fn events_follow_the_contract_rules() {
        let settings = Settings {
            base_url: "http://127.0.0.1:8080".into(),
            api_key: String::new(),
            streamer_id: DEMO_STREAMER_ID.parse().unwrap(),
            worker_id: Uuid::new_v4(),
            event_count: 1,
            event_duration: Duration::from_secs(90),
        };
        for index in 0..6 {
            let event = build_event(&settings, index);
            let options = event["options"].as_array().unwrap();
            assert!((2..=10).contains(&options.len()));
            assert!(event["title"].as_str().unwrap().chars().count() <= 200);
            assert!(event["closesAt"].as_str().unwrap().ends_with('Z'));
        }
    }
}
