//! The HTTP API of docs/contract.md §4: routes, CORS, the Origin allow-list, body limits and
//! request tracing that never records a token.

mod auth_api;
mod events;
pub mod extract;
mod ledger;
mod ops;

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

use crate::config::AllowedOrigins;
use crate::error::AppError;
use crate::state::AppState;

pub use events::view as event_view;
// The request bodies and their validation, for the fuzz crate (fuzz/).
pub use auth_api::AuthInput;
pub use events::{
    check_closing_window, EventInput, VoteInput, MAX_PROMPT_VERSIONS, MAX_PROMPT_VERSION_KEY,
    MAX_PROMPT_VERSION_VALUE,
};
pub use ledger::CreditInput;
pub use ops::NoticeInput;

/// Every HTTP route of the API plus the socket endpoint.
pub fn routes(state: &AppState) -> Router<AppState> {
    let api = Router::new()
        .route("/api/auth", post(auth_api::mint))
        .route("/api/events", post(events::create).get(events::list))
        .route("/api/events/{id}", get(events::get))
        .route("/api/events/{id}/votes", post(events::vote))
        .route("/api/events/{id}/close", post(events::close))
        .route("/api/balance", get(ledger::balance))
        .route("/api/ledger/credit", post(ledger::credit))
        .route("/api/notices", post(ops::notice))
        .route("/realtime", get(crate::socket::upgrade))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    api.layer(axum::extract::DefaultBodyLimit::max(
        livevote_protocol::MAX_HTTP_BODY_BYTES,
    ))
    .layer(middleware::from_fn_with_state(
        state.clone(),
        refuse_foreign_origins,
    ))
    .layer(cors_layer(&state.config.allowed_origins))
    .layer(
        TraceLayer::new_for_http().make_span_with(|request: &Request| {
            // The path only: the query string of /realtime carries the token.
            // The path only: the query string of /realtime carries the token. A debug span, so
            // the default `info` filter builds nothing per request (5 % of the vote path).
            tracing::debug_span!("http", method = %request.method(), path = %request.uri().path())
        }),
    )
}

async fn not_found() -> AppError {
    AppError::NotFound("no such route".into())
}

async fn method_not_allowed() -> Response {
    let mut response = AppError::bad_request("method not allowed on this route").into_response();
    *response.status_mut() = axum::http::StatusCode::METHOD_NOT_ALLOWED;
    response
}

fn cors_layer(origins: &AllowedOrigins) -> CorsLayer {
    let allow_origin = match origins {
        AllowedOrigins::Auto | AllowedOrigins::Any => AllowOrigin::any(),
        list @ AllowedOrigins::List(_) => {
            let list = list.clone();
            AllowOrigin::predicate(move |origin, _| {
                origin.to_str().is_ok_and(|origin| list.allows(origin))
            })
        }
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
        ])
        // A page on another origin must be able to read how long to wait after a 429 or 503;
        // browsers hide every response header not listed here.
        .expose_headers([header::RETRY_AFTER])
        .max_age(std::time::Duration::from_secs(600))
}

/// A browser call from an Origin outside the allow-list is refused with 403 before anything
/// else runs (sockets included); calls without an Origin header are not browser calls.
async fn refuse_foreign_origins(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(origin) = request.headers().get(header::ORIGIN) {
        let allowed = origin
            .to_str()
            .is_ok_and(|origin| state.config.allowed_origins.allows(origin));
        if !allowed {
            let reason = if request.uri().path() == "/realtime" {
                "origin"
            } else {
                "api_origin"
            };
            metrics::counter!("livevote_connections_refused_total", "reason" => reason)
                .increment(1);
            return AppError::Forbidden("this Origin is not allowed".into()).into_response();
        }
    }
    next.run(request).await
}
