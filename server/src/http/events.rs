//! `/api/events`: create, read, list, vote, close.

use std::collections::{BTreeMap, HashSet};

use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use livevote_protocol::{
    CloseRequest, CloseResponse, Event, EventEnvelope, EventList, EventOption, EventStatus,
    EventView, VoteResponse,
};
use livevote_storage::{CreateOutcome, EventFilter, EventRecord, VoteCommand};
use serde::Deserialize;
use serde_json::Number;
use uuid::Uuid;

use super::extract::{
    idempotency_key, Authenticated, IdempotencyKeyHeader, JsonBody, OptionalJsonBody,
};
use crate::broker::BrokerMessage;
use crate::clock::format_timestamp;
use crate::error::AppError;
use crate::state::AppState;

/// `POST /api/events` body before validation: JSON types are checked by serde (400), rules by
/// [`EventInput::validate`] (422).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventInput {
    #[serde(default)]
    id: Option<String>,
    streamer_id: String,
    #[serde(default)]
    game_id: Option<String>,
    title: String,
    options: Vec<OptionInput>,
    closes_at: String,
    cost_per_vote: Number,
    #[serde(default)]
    prompt_versions: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
struct OptionInput {
    id: String,
    label: String,
}

const MAX_EVENT_DURATION: chrono::Duration = chrono::Duration::hours(24);

impl EventInput {
    /// Checks everything but the closing window, which depends on the time of the request and
    /// so is [`check_closing_window`]'s job: a retry of a create that succeeded must still be
    /// recognised once its `closesAt` has passed.
    pub fn validate(self) -> Result<(Event, DateTime<Utc>), AppError> {
        let invalid = |message: &str| AppError::validation("VALIDATION_FAILED", message);
        let id = match self.id {
            Some(id) => parse_uuid(&id).ok_or_else(|| invalid("id must be a uuid"))?,
            None => Uuid::new_v4(),
        };
        let streamer_id =
            parse_uuid(&self.streamer_id).ok_or_else(|| invalid("streamerId must be a uuid"))?;
        let game_id = match self.game_id {
            Some(game) => {
                Some(parse_uuid(&game).ok_or_else(|| invalid("gameId must be a uuid or null"))?)
            }
            None => None,
        };
        let title_length = self.title.chars().count();
        if !(1..=200).contains(&title_length) || self.title.trim().is_empty() {
            return Err(invalid("title must be 1–200 characters"));
        }
        if !(2..=10).contains(&self.options.len()) {
            return Err(invalid("an event needs 2–10 options"));
        }
        let mut seen = HashSet::new();
        for option in &self.options {
            if option.id.is_empty() || option.id.chars().count() > 64 {
                return Err(invalid("option ids must be 1–64 characters"));
            }
            if !seen.insert(option.id.as_str()) {
                return Err(invalid("option ids must be unique"));
            }
            let label_length = option.label.chars().count();
            if !(1..=100).contains(&label_length) {
                return Err(invalid("option labels must be 1–100 characters"));
            }
        }
        let closes_at = DateTime::parse_from_rfc3339(&self.closes_at)
            .map_err(|_| invalid("closesAt must be an ISO-8601 date-time with a time zone"))?
            .with_timezone(&Utc);
        // The wire carries milliseconds; keep the stored instant equal to what clients see.
        let closes_at =
            chrono::DurationRound::duration_trunc(closes_at, chrono::Duration::milliseconds(1))
                .map_err(|_| invalid("closesAt is out of range"))?;
        if let Some(versions) = &self.prompt_versions {
            check_prompt_versions(versions)?;
        }
        let cost_per_vote = self
            .cost_per_vote
            .as_u64()
            .filter(|cost| (1..=1_000_000).contains(cost))
            .ok_or_else(|| invalid("costPerVote must be an integer 1–1,000,000"))?;
        let event = Event {
            id,
            streamer_id,
            game_id,
            title: self.title,
            options: self
                .options
                .into_iter()
                .map(|option| EventOption {
                    id: option.id,
                    label: option.label,
                })
                .collect(),
            closes_at: format_timestamp(closes_at),
            cost_per_vote,
            prompt_versions: self.prompt_versions,
        };
        Ok((event, closes_at))
    }
}

/// A new event must close in the future and at most 24 h ahead.
pub fn check_closing_window(closes_at: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), AppError> {
    let invalid = |message: &str| AppError::validation("VALIDATION_FAILED", message);
    if closes_at <= now {
        return Err(invalid("closesAt must be in the future"));
    }
    if closes_at > now + MAX_EVENT_DURATION {
        return Err(invalid("closesAt must be at most 24 h ahead"));
    }
    Ok(())
}

/// Most `promptVersions` entries an event may carry.
pub const MAX_PROMPT_VERSIONS: usize = 32;
/// Longest `promptVersions` key, in characters.
pub const MAX_PROMPT_VERSION_KEY: usize = 64;
/// Longest `promptVersions` value, in characters.
pub const MAX_PROMPT_VERSION_VALUE: usize = 128;

/// `promptVersions` is echoed in every snapshot of the event's channels, so its size is
/// bounded: 64 KiB of it in each of a streamer's events would make every snapshot huge.
fn check_prompt_versions(versions: &BTreeMap<String, String>) -> Result<(), AppError> {
    let invalid = |message: String| AppError::validation("VALIDATION_FAILED", &message);
    if versions.len() > MAX_PROMPT_VERSIONS {
        return Err(invalid(format!(
            "promptVersions holds at most {MAX_PROMPT_VERSIONS} entries"
        )));
    }
    for (key, value) in versions {
        if key.is_empty() || key.chars().count() > MAX_PROMPT_VERSION_KEY {
            return Err(invalid(format!(
                "promptVersions keys must be 1–{MAX_PROMPT_VERSION_KEY} characters"
            )));
        }
        if value.chars().count() > MAX_PROMPT_VERSION_VALUE {
            return Err(invalid(format!(
                "promptVersions values must be at most {MAX_PROMPT_VERSION_VALUE} characters"
            )));
        }
    }
    Ok(())
}

fn parse_uuid(text: &str) -> Option<Uuid> {
    Uuid::try_parse(text).ok()
}

pub fn view(record: EventRecord) -> EventView {
    EventView {
        event: record.event,
        status: record.status,
        totals: record.totals,
        result: record.result,
    }
}

pub async fn create(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    body: JsonBody<EventInput>,
) -> Result<Response, AppError> {
    if !claims.may_create_events() {
        return Err(AppError::Forbidden(
            "only workers and admins create events".into(),
        ));
    }
    let now = state.clock.now();
    let (event, closes_at) = body.value.validate()?;
    let refusal = check_closing_window(closes_at, now).err().or_else(|| {
        let open = state.realtime.open_events_of(event.streamer_id);
        (open >= state.config.max_open_events as usize).then(|| AppError::Conflict {
            code: "TOO_MANY_OPEN_EVENTS",
            message: format!("this streamer already has {open} open events; close one first"),
        })
    });
    if let Some(refusal) = refusal {
        // A retry of a create that succeeded is answered 200 even once `closesAt` has passed
        // or the streamer has reached the cap; only a new event is held to them.
        return match state.store.get_event(event.id).await? {
            Some(existing) if existing.event == event && existing.closes_at == closes_at => Ok((
                StatusCode::OK,
                Json(EventEnvelope {
                    event: existing.event,
                }),
            )
                .into_response()),
            _ => Err(refusal),
        };
    }
    let committing = state.clone();
    let outcome = state
        .commit(async move {
            let outcome = committing.store.create_event(&event, closes_at).await?;
            if let CreateOutcome::Created(record) = &outcome {
                committing
                    .publish_committed([BrokerMessage::EventCreated {
                        event: record.event.clone(),
                    }])
                    .await;
            }
            Ok(outcome)
        })
        .await?;
    match outcome {
        CreateOutcome::Created(record) => {
            metrics::counter!("livevote_events_created_total").increment(1);
            Ok((
                StatusCode::CREATED,
                Json(EventEnvelope {
                    event: record.event,
                }),
            )
                .into_response())
        }
        CreateOutcome::AlreadyExists(record) => Ok((
            StatusCode::OK,
            Json(EventEnvelope {
                event: record.event,
            }),
        )
            .into_response()),
    }
}

/// The event named by a path segment; a segment that is not a uuid names no event (404).
async fn find_event(state: &AppState, event_id: &str) -> Result<EventRecord, AppError> {
    let not_found = || AppError::NotFound("event not found".into());
    let event_id = parse_uuid(event_id).ok_or_else(not_found)?;
    state.store.get_event(event_id).await?.ok_or_else(not_found)
}

pub async fn get(
    State(state): State<AppState>,
    Authenticated(_claims): Authenticated,
    Path(event_id): Path<String>,
) -> Result<Json<EventView>, AppError> {
    let record = find_event(&state, &event_id).await?;
    Ok(Json(view(record)))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    #[serde(default)]
    streamer_id: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    limit: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
}

/// Events per page of `GET /api/events` unless `limit` says otherwise, and the most it may say.
pub const DEFAULT_LIST_LIMIT: u32 = 50;
pub const MAX_LIST_LIMIT: u32 = 200;

/// A page cursor: the last event's `closesAt` in unix milliseconds and its id. Opaque to
/// clients, who only send back what `nextCursor` said.
fn encode_cursor(record: &EventRecord) -> String {
    format!(
        "{}_{}",
        record.closes_at.timestamp_millis(),
        record.event.id
    )
}

fn decode_cursor(text: &str) -> Option<livevote_storage::EventPosition> {
    let (millis, id) = text.split_once('_')?;
    Some(livevote_storage::EventPosition {
        closes_at: DateTime::from_timestamp_millis(millis.parse().ok()?)?,
        event_id: Uuid::try_parse(id).ok()?,
    })
}

pub async fn list(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EventList>, AppError> {
    state.list_limiter.check(claims.sub)?;
    let Query(query) = query.map_err(|rejection| AppError::bad_request(rejection.body_text()))?;
    let streamer_id = match query.streamer_id.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            parse_uuid(text).ok_or_else(|| AppError::bad_request("streamerId must be a uuid"))?,
        ),
    };
    let status = match query.status.as_deref() {
        None | Some("") => None,
        Some("open") => Some(EventStatus::Open),
        Some("closed") => Some(EventStatus::Closed),
        Some(_) => return Err(AppError::bad_request("status must be open or closed")),
    };
    let limit = match query.limit.as_deref() {
        None | Some("") => DEFAULT_LIST_LIMIT,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|limit| (1..=MAX_LIST_LIMIT).contains(limit))
            .ok_or_else(|| {
                AppError::bad_request(format!("limit must be an integer 1–{MAX_LIST_LIMIT}"))
            })?,
    };
    let after = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(text) => Some(decode_cursor(text).ok_or_else(|| {
            AppError::bad_request("cursor must be a nextCursor this server returned")
        })?),
    };
    // One more than the page tells whether another page follows.
    let mut records = state
        .store
        .list_events(&EventFilter {
            streamer_id,
            status,
            limit: Some(limit + 1),
            after,
        })
        .await?;
    let next_cursor = if records.len() > limit as usize {
        records.truncate(limit as usize);
        records.last().map(encode_cursor)
    } else {
        None
    };
    Ok(Json(EventList {
        events: records.into_iter().map(view).collect(),
        next_cursor,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoteInput {
    option_id: String,
    #[serde(default)]
    votes: Option<Number>,
}

pub async fn vote(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    Path(event_id): Path<String>,
    OriginalUri(uri): OriginalUri,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    body: JsonBody<VoteInput>,
) -> Result<Json<VoteResponse>, AppError> {
    if !claims.may_vote() {
        return Err(AppError::Forbidden("workers do not vote".into()));
    }
    state.vote_limiter.check(claims.sub).await?;
    let event_id =
        parse_uuid(&event_id).ok_or_else(|| AppError::NotFound("event not found".into()))?;
    let votes = match &body.value.votes {
        None => 1,
        Some(number) => number
            .as_u64()
            .filter(|votes| (1..=1000).contains(votes))
            .ok_or_else(|| {
                AppError::validation("INVALID_VOTES", "votes must be an integer 1–1000")
            })? as u32,
    };
    let idempotency = idempotency_key(key, &uri, &body.raw);
    let command = VoteCommand {
        user_id: claims.sub,
        event_id,
        option_id: body.value.option_id,
        votes,
        idempotency,
        now: state.clock.now(),
        initial_balance: claims.initial_balance(state.config.initial_balance),
    };
    let committing = state.clone();
    let receipt = state
        .commit(async move {
            let receipt = committing.store.cast_vote(command).await?;
            if !receipt.replayed {
                metrics::counter!("livevote_votes_total").increment(u64::from(votes));
                committing
                    .publish_committed([
                        BrokerMessage::TotalsChanged {
                            event_id,
                            totals: receipt.totals.clone(),
                            seq: receipt.seq,
                        },
                        BrokerMessage::BalanceChanged {
                            user_id: claims.sub,
                            balance: receipt.balance,
                            version: receipt.balance_version,
                        },
                    ])
                    .await;
            }
            Ok(receipt)
        })
        .await?;
    Ok(Json(VoteResponse {
        balance: receipt.balance,
        totals: receipt.totals,
    }))
}

pub async fn close(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    Path(event_id): Path<String>,
    OptionalJsonBody(body): OptionalJsonBody<CloseRequest>,
) -> Result<Json<CloseResponse>, AppError> {
    let record = find_event(&state, &event_id).await?;
    let event_id = record.event.id;
    if !claims.may_close(record.event.streamer_id) {
        return Err(AppError::Forbidden(
            "this token may not close this event".into(),
        ));
    }
    let chosen = body.and_then(|body| body.option_id);
    let closing = state.clone();
    let record = state
        .commit(async move { closing.close_event(event_id, chosen).await })
        .await?;
    let result = record
        .result
        .ok_or_else(|| AppError::Internal("a closed event has no result".into()))?;
    Ok(Json(CloseResponse { event_id, result }))
}
