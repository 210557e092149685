//! The demo's simulated worker and viewers. They drive the real HTTP handlers in-process
//! (`tower::ServiceExt::oneshot` on the application router), so that every vote goes through
//! the same authentication, validation, rate limits, ledger and fan-out as a real one, and the
//! overlay shows exactly what a production deployment would.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use livevote_protocol::Role;
use parking_lot::Mutex;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::ServiceExt;
use uuid::Uuid;

use super::catalog::{self, Game, Prompt};
use crate::auth::Claims;
use crate::clock::format_timestamp;
use crate::state::AppState;

/// How many simulated viewers vote.
pub const SIMULATED_VIEWERS: usize = 300;
/// At most this many simulated requests are in flight at once.
const MAX_IN_FLIGHT: usize = 16;
/// Vote requests per second at the peak of the crowd's excitement (and a tenth of it at rest).
const PEAK_VOTE_REQUESTS_PER_SECOND: f64 = 30.0;
/// The worker waits while this many events are open.
const MAX_OPEN_EVENTS: usize = 2;
/// Lifetime of the tokens the simulation mints for itself.
const TOKEN_SECONDS: i64 = 3600;

/// An event the simulation votes on: its options and how the simulated crowd leans.
struct LiveEvent {
    id: Uuid,
    option_ids: Vec<String>,
    /// Relative popularity of each option; drifts as votes come in so that the lead can change.
    weights: Vec<f64>,
    created: Instant,
    closes: Instant,
}

/// Shared by the worker loop, the viewer loop and the vote tasks they spawn.
pub struct Simulation {
    state: AppState,
    router: Router,
    /// Speed-up factor for every duration (1 in a real demo; the browser tests use more).
    pace: f64,
    events: Mutex<Vec<LiveEvent>>,
    /// Tokens by user id, with their expiry (unix seconds), re-minted shortly before it.
    tokens: Mutex<HashMap<Uuid, (String, i64)>>,
    /// Users whose balance this process has already checked and topped up.
    topped_up: Mutex<HashSet<Uuid>>,
    /// The latest titles asked, so that the same question does not come twice in a row.
    recent_titles: Mutex<Vec<&'static str>>,
    in_flight: Semaphore,
}

/// What a simulated request got back.
struct Answer {
    status: StatusCode,
    body: Value,
}

impl Simulation {
    pub fn new(state: AppState, router: Router, pace: f64) -> Arc<Self> {
        Arc::new(Simulation {
            state,
            router,
            pace,
            events: Mutex::new(Vec::new()),
            tokens: Mutex::new(HashMap::new()),
            topped_up: Mutex::new(HashSet::new()),
            recent_titles: Mutex::new(Vec::new()),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
        })
    }

    /// A duration of the real demo, shortened by the pace (never below 300 ms).
    fn paced(&self, seconds: f64) -> Duration {
        Duration::from_secs_f64((seconds / self.pace).max(0.3))
    }

    /// A signed token for one of the simulation's users, minted with the server's own secret.
    fn token_for(&self, user_id: Uuid, role: Role) -> String {
        let now = self.state.clock.unix_seconds();
        let mut tokens = self.tokens.lock();
        if let Some((token, expires)) = tokens.get(&user_id) {
            if *expires - now > 300 {
                return token.clone();
            }
        }
        let claims = Claims {
            sub: user_id,
            role,
            streamer_id: None,
            iat: now,
            exp: now + TOKEN_SECONDS,
        };
        let token = self.state.auth.mint(&claims);
        tokens.insert(user_id, (token.clone(), claims.exp));
        token
    }

    /// One HTTP request through the real router, as user `user_id` with `role`.
    async fn call(
        &self,
        method: Method,
        path: &str,
        (user_id, role): (Uuid, Role),
        body: Option<&Value>,
    ) -> Answer {
        let token = self.token_for(user_id, role);
        let bytes = body
            .map(|body| serde_json::to_vec(body).unwrap_or_default())
            .unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(bytes));
        let mut request = match request {
            Ok(request) => request,
            Err(error) => {
                tracing::warn!(%error, path, "demo: could not build a request");
                return Answer {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    body: Value::Null,
                };
            }
        };
        // Requests from sockets carry the peer address; these come from inside the server.
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 0))));
        let response = match self.router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(infallible) => match infallible {},
        };
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        Answer {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// Credits `user_id` up to the demo balance through the admin API when it runs low.
    async fn top_up(&self, user_id: Uuid) {
        let balance = self
            .call(Method::GET, "/api/balance", (user_id, Role::Viewer), None)
            .await;
        let current = balance.body["balance"].as_i64().unwrap_or(0);
        if balance.status != StatusCode::OK || current >= catalog::DEMO_BALANCE / 5 {
            return;
        }
        let credit = json!({
            "userId": user_id,
            "amount": catalog::DEMO_BALANCE - current,
            "reason": "demo top-up",
        });
        let answer = self
            .call(
                Method::POST,
                "/api/ledger/credit",
                (catalog::ADMIN_USER_ID, Role::Admin),
                Some(&credit),
            )
            .await;
        if answer.status != StatusCode::OK {
            tracing::warn!(status = %answer.status, body = %answer.body, "demo: credit refused");
        }
    }

    /// Tops up every named demo user, so that the viewer page starts with points to spend.
    pub async fn top_up_named_users(&self) {
        for user in catalog::DEMO_USERS {
            self.top_up(user.id).await;
            self.topped_up.lock().insert(user.id);
        }
    }

    /// Picks up events of the demo streamer still open from an earlier run on the same database.
    pub async fn adopt_open_events(&self) {
        let path = format!(
            "/api/events?streamerId={}&status=open",
            catalog::STREAMER_ID
        );
        let answer = self
            .call(
                Method::GET,
                &path,
                (catalog::WORKER_USER_ID, Role::Worker),
                None,
            )
            .await;
        let Some(items) = answer.body["events"].as_array() else {
            return;
        };
        let now = self.state.clock.now();
        for item in items {
            let event = &item["event"];
            let (Some(id), Some(closes_at)) = (
                event["id"].as_str().and_then(|id| id.parse::<Uuid>().ok()),
                event["closesAt"]
                    .as_str()
                    .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok()),
            ) else {
                continue;
            };
            let Ok(remaining) = (closes_at.with_timezone(&chrono::Utc) - now).to_std() else {
                continue;
            };
            let option_ids: Vec<String> = event["options"]
                .as_array()
                .map(|options| {
                    options
                        .iter()
                        .filter_map(|option| option["id"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let weights = crowd_leaning(option_ids.len());
            self.events.lock().push(LiveEvent {
                id,
                option_ids,
                weights,
                created: Instant::now(),
                closes: Instant::now() + remaining,
            });
        }
    }

    /// Creates one event as the worker would: a prompt of a game, 40–120 s to vote, and
    /// sometimes a close by hand before that. Returns the event's title when it was accepted.
    pub async fn create_event(self: &Arc<Self>) -> Option<String> {
        let (game, prompt, cost, duration, closes_early) = {
            let mut random = rand::thread_rng();
            let mut recent = self.recent_titles.lock();
            let mut pick = || -> Option<(Game, Prompt)> {
                let game: Game = *catalog::GAMES.choose(&mut random)?;
                Some((game, *game.prompts.choose(&mut random)?))
            };
            let (mut game, mut prompt) = pick()?;
            for _ in 0..20 {
                if !recent.contains(&prompt.title) {
                    break;
                }
                (game, prompt) = pick()?;
            }
            recent.push(prompt.title);
            if recent.len() > 5 {
                recent.remove(0);
            }
            let cost = *catalog::COSTS_PER_VOTE.choose(&mut random)?;
            let duration = self.paced(random.gen_range(40.0..120.0));
            let closes_early = random
                .gen_bool(0.25)
                .then(|| duration.mul_f64(random.gen_range(0.45..0.8)));
            (game, prompt, cost, duration, closes_early)
        };
        let id = Uuid::new_v4();
        let chrono_duration = chrono::Duration::from_std(duration).unwrap_or_default();
        let options: Vec<Value> = prompt
            .options
            .iter()
            .map(|(id, label)| json!({"id": id, "label": label}))
            .collect();
        let body = json!({
            "id": id,
            "streamerId": catalog::STREAMER_ID,
            "gameId": game.id,
            "title": prompt.title,
            "options": options,
            "closesAt": format_timestamp(self.state.clock.now() + chrono_duration),
            "costPerVote": cost,
            "promptVersions": {"session": "v12", "game": game.prompt_version, "perClip": "v7"},
        });
        let answer = self
            .call(
                Method::POST,
                "/api/events",
                (catalog::WORKER_USER_ID, Role::Worker),
                Some(&body),
            )
            .await;
        if !answer.status.is_success() {
            tracing::warn!(status = %answer.status, body = %answer.body, "demo: the worker's event was refused");
            return None;
        }
        tracing::info!(
            event_id = %id,
            game = game.name,
            seconds = duration.as_secs(),
            "demo: new event \"{}\"",
            prompt.title
        );
        let option_ids: Vec<String> = prompt
            .options
            .iter()
            .map(|(id, _)| (*id).to_owned())
            .collect();
        let weights = crowd_leaning(option_ids.len());
        self.events.lock().push(LiveEvent {
            id,
            option_ids,
            weights,
            created: Instant::now(),
            closes: Instant::now() + duration,
        });
        if let Some(after) = closes_early {
            let simulation = Arc::clone(self);
            tokio::spawn(async move {
                tokio::select! {
                    () = simulation.state.shutdown.cancelled() => {}
                    () = tokio::time::sleep(after) => simulation.close_by_hand(id).await,
                }
            });
        }
        Some(prompt.title.to_owned())
    }

    /// The worker closes an event before its time, as a streamer's moderator might.
    async fn close_by_hand(&self, event_id: Uuid) {
        let path = format!("/api/events/{event_id}/close");
        let answer = self
            .call(
                Method::POST,
                &path,
                (catalog::WORKER_USER_ID, Role::Worker),
                Some(&json!({})),
            )
            .await;
        self.events.lock().retain(|event| event.id != event_id);
        if answer.status == StatusCode::OK {
            tracing::info!(%event_id, winner = %answer.body["result"]["optionId"], "demo: event closed early by hand");
        } else {
            tracing::warn!(%event_id, status = %answer.status, "demo: closing by hand failed");
        }
    }

    /// A new event every 30–60 s until shutdown, never more than two open at once (an overlay
    /// has room for two, and a chat can follow no more).
    pub async fn run_worker(self: Arc<Self>) {
        loop {
            let gap = self.paced(rand::thread_rng().gen_range(30.0..60.0));
            tokio::select! {
                () = self.state.shutdown.cancelled() => return,
                () = tokio::time::sleep(gap) => {}
            }
            while self.open_event_count() >= MAX_OPEN_EVENTS {
                tokio::select! {
                    () = self.state.shutdown.cancelled() => return,
                    () = tokio::time::sleep(self.paced(2.0)) => {}
                }
            }
            self.create_event().await;
        }
    }

    fn open_event_count(&self) -> usize {
        let now = Instant::now();
        self.events
            .lock()
            .iter()
            .filter(|event| event.closes > now)
            .count()
    }

    /// The crowd: vote requests at a rate that rises and falls like a chat's excitement, with
    /// a burst whenever a new event appears, until shutdown.
    pub async fn run_viewers(self: Arc<Self>) {
        let started = Instant::now();
        let tick = Duration::from_millis(100);
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut owed = 0.0;
        loop {
            tokio::select! {
                () = self.state.shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let now = Instant::now();
            let newest_age = {
                let mut events = self.events.lock();
                // Votes stop a little before `closesAt`: later ones would only be refused.
                events.retain(|event| event.closes > now + Duration::from_millis(200));
                events.iter().map(|event| now - event.created).min()
            };
            let Some(newest_age) = newest_age else {
                continue;
            };
            let elapsed = (now - started).as_secs_f64() * self.pace;
            owed +=
                self.vote_rate(elapsed, newest_age.as_secs_f64() * self.pace) * tick.as_secs_f64();
            while owed >= 1.0 {
                owed -= 1.0;
                let Ok(permit) = self.in_flight.try_acquire() else {
                    // The server is busy: drop the vote rather than pile up requests.
                    owed = 0.0;
                    break;
                };
                permit.forget();
                let simulation = Arc::clone(&self);
                tokio::spawn(async move {
                    simulation.cast_one_vote().await;
                    simulation.in_flight.add_permits(1);
                });
            }
        }
    }

    /// Vote requests per second: a slow wave between a tenth of the peak and the peak, a second
    /// faster ripple, and a burst in the first seconds of a new event.
    fn vote_rate(&self, elapsed_seconds: f64, newest_event_age_seconds: f64) -> f64 {
        use std::f64::consts::TAU;
        let wave = 0.5 + 0.5 * (elapsed_seconds * TAU / 75.0).sin();
        let ripple = 0.5 + 0.5 * (elapsed_seconds * TAU / 17.0).sin();
        let hype = (1.0 - newest_event_age_seconds / 15.0).max(0.0);
        let intensity = (0.1 + 0.6 * wave + 0.15 * ripple + 0.5 * hype).min(1.0);
        PEAK_VOTE_REQUESTS_PER_SECOND * intensity
    }

    /// One simulated viewer votes on one open event, favouring the newest one.
    async fn cast_one_vote(&self) {
        let (viewer, event_id, option_id, votes) = {
            let mut random = rand::thread_rng();
            let mut events = self.events.lock();
            if events.is_empty() {
                return;
            }
            // Newest first, each older one half as likely.
            let count = events.len();
            let mut index = count - 1;
            while index > 0 && random.gen_bool(0.5) {
                index -= 1;
            }
            let event = &mut events[index];
            for weight in &mut event.weights {
                *weight = (*weight * random.gen_range(0.97..1.035)).clamp(0.02, 5.0);
            }
            let total: f64 = event.weights.iter().sum();
            let mut pick = random.gen_range(0.0..total);
            let mut chosen = 0;
            for (position, weight) in event.weights.iter().enumerate() {
                if pick < *weight {
                    chosen = position;
                    break;
                }
                pick -= weight;
            }
            let viewer = catalog::simulated_viewer_id(random.gen_range(0..SIMULATED_VIEWERS));
            let votes = *[1, 1, 1, 1, 2, 3, 5].choose(&mut random).unwrap_or(&1);
            (viewer, event.id, event.option_ids[chosen].clone(), votes)
        };
        let first_time = self.topped_up.lock().insert(viewer);
        if first_time {
            self.top_up(viewer).await;
        }
        let path = format!("/api/events/{event_id}/votes");
        let body = json!({"optionId": option_id, "votes": votes});
        let answer = self
            .call(Method::POST, &path, (viewer, Role::Viewer), Some(&body))
            .await;
        match answer.status {
            StatusCode::OK | StatusCode::TOO_MANY_REQUESTS => {}
            StatusCode::PAYMENT_REQUIRED => self.top_up(viewer).await,
            StatusCode::CONFLICT | StatusCode::NOT_FOUND => {
                self.events.lock().retain(|event| event.id != event_id)
            }
            status => tracing::debug!(%status, body = %answer.body, "demo: vote refused"),
        }
    }
}

/// How a crowd leans on a new question: one or two favourites and some long shots.
fn crowd_leaning(options: usize) -> Vec<f64> {
    let mut random = rand::thread_rng();
    (0..options)
        .map(|_| random.gen_range(0.15f64..1.0).powi(2))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crowd_always_has_a_choice() {
        for options in 2..=10 {
            let weights = crowd_leaning(options);
            assert_eq!(weights.len(), options);
            assert!(weights.iter().all(|weight| *weight > 0.0));
        }
    }
}
