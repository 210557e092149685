//! `--demo`: what a new user sees after `cargo xtask demo`. [`routes`] serves the example
//! overlay and viewer pages with the built `livevote` package, a landing page linking them, and
//! a development-only token endpoint standing in for a real backend; [`start`] runs a simulated
//! worker and a few hundred simulated viewers that go through the real HTTP handlers.
//!
//! `LIVEVOTE_DEMO_PACE` (hidden, for the browser tests) speeds every demo duration up by the
//! given factor, e.g. `10` makes events last 4–12 s instead of 40–120 s.

mod catalog;
mod simulation;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{OriginalUri, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, MethodRouter};
use axum::{Json, Router};
use livevote_protocol::Role;
use serde::Deserialize;
use serde_json::json;
use tower::ServiceExt;
use tower_http::services::ServeDir;
use uuid::Uuid;

use crate::auth::{Authenticator, Claims};
use crate::config::Config;
use crate::state::AppState;

pub use catalog::{DEMO_USERS, STREAMER_ID};

/// How long the tokens handed out by `/demo/token` and printed for the overlay live: a week,
/// so that an overlay left in OBS keeps working through a long stream.
const DEMO_TOKEN_SECONDS: i64 = 7 * 24 * 3600;

/// The demo's static pages and its token endpoint; empty unless `--demo`.
pub fn routes(config: &Config) -> Router {
    if !config.demo {
        return Router::new();
    }
    let assets = config.demo_assets.clone().unwrap_or_else(default_assets);
    let tokens = Arc::new(Authenticator::new(
        config.jwt_secret.as_deref().unwrap_or_default(),
    ));
    Router::new()
        .route("/", get(landing))
        .route("/demo/token", get(demo_token))
        .route("/demo/config", get(demo_config))
        .with_state(tokens)
        .nest_service(
            "/overlay",
            static_folder(assets.join("examples").join("obs-overlay"), "/overlay/"),
        )
        .nest_service(
            "/viewer",
            static_folder(assets.join("examples").join("viewer"), "/viewer/"),
        )
        .nest_service("/npm", static_folder(assets.join("npm"), "/npm/"))
        .layer(axum::middleware::map_response(no_cache))
}

/// The repository the server was built from: its examples and npm folders are the demo's pages.
fn default_assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Serves a folder; the bare mount path (`/overlay`) redirects to the folder (`/overlay/`),
/// query string included, so that the pages' relative imports resolve.
fn static_folder(folder: PathBuf, mount: &'static str) -> MethodRouter {
    let files = ServeDir::new(folder);
    get(
        move |OriginalUri(original): OriginalUri, request: Request| {
            let files = files.clone();
            async move {
                if original.path() == mount.trim_end_matches('/') {
                    let target = match original.query() {
                        Some(query) => format!("{mount}?{query}"),
                        None => mount.to_owned(),
                    };
                    return Redirect::permanent(&target).into_response();
                }
                match files.oneshot(request).await {
                    Ok(response) => response.map(Body::new),
                    Err(infallible) => match infallible {},
                }
            }
        },
    )
}

/// The pages change while someone edits them: always revalidate.
async fn no_cache(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn mint(
    tokens: &Authenticator,
    user_id: Uuid,
    role: Role,
    streamer_id: Option<Uuid>,
) -> (String, i64) {
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        sub: user_id,
        role,
        streamer_id,
        iat: now,
        exp: now + DEMO_TOKEN_SECONDS,
    };
    (tokens.mint(&claims), claims.exp)
}

/// The overlay's address with its configuration in the query string, as printed at start.
fn overlay_query(token: &str) -> String {
    format!("streamerId={}&token={token}", catalog::STREAMER_ID)
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    /// `viewer` (default) or `overlay`.
    #[serde(default)]
    role: Option<String>,
    /// Index of a demo user (`/demo/config` lists them); the overlay user when absent.
    #[serde(default)]
    user: Option<usize>,
}

/// `GET /demo/token?role=viewer&user=N`: a token for a demo user. Development only: in a real
/// deployment your own backend, which knows who is logged in, asks `/api/auth` for it.
async fn demo_token(
    State(tokens): State<Arc<Authenticator>>,
    Query(query): Query<TokenQuery>,
) -> Response {
    let user = match (query.role.as_deref().unwrap_or("viewer"), query.user) {
        ("viewer", Some(index)) => match DEMO_USERS.get(index) {
            Some(user) => (user.id, user.name),
            None => {
                return demo_error(
                    StatusCode::NOT_FOUND,
                    "NOT_FOUND",
                    "no demo user with this number",
                )
            }
        },
        ("viewer" | "overlay", None) => (catalog::OVERLAY_USER_ID, "overlay"),
        _ => {
            return demo_error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "role must be viewer or overlay",
            )
        }
    };
    let (token, expires) = mint(&tokens, user.0, Role::Viewer, None);
    let expires_at = chrono::DateTime::from_timestamp(expires, 0).unwrap_or_default();
    Json(json!({
        "token": token,
        "expiresAt": crate::clock::format_timestamp(expires_at),
        "userId": user.0,
        "name": user.1,
        "streamerId": catalog::STREAMER_ID,
    }))
    .into_response()
}

fn demo_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// `GET /demo/config`: the demo streamer and the demo users the viewer page offers.
async fn demo_config() -> Json<serde_json::Value> {
    let users: Vec<_> = DEMO_USERS
        .iter()
        .enumerate()
        .map(|(index, user)| json!({"index": index, "name": user.name, "userId": user.id}))
        .collect();
    Json(json!({"streamerId": catalog::STREAMER_ID, "users": users}))
}

/// `GET /`: what is running and where to look.
async fn landing(State(tokens): State<Arc<Authenticator>>) -> Html<String> {
    let (token, _) = mint(&tokens, catalog::OVERLAY_USER_ID, Role::Viewer, None);
    let overlay = format!("/overlay/?{}", overlay_query(&token));
    Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>livevote demo</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 44rem; margin: 3rem auto; padding: 0 1rem; color: #1d1d2b; }}
a {{ color: #5b3df5; }} code {{ background: #f0eefc; padding: 0 .3em; border-radius: 4px; }}
li {{ margin: .5rem 0; }}
</style></head>
<body>
<h1>livevote demo</h1>
<p>A simulated worker creates a new event every 30–60 seconds for the demo streamer, and a few
hundred simulated viewers vote on it through the real API.</p>
<ul>
<li><a href="{overlay}">The OBS overlay</a> — transparent, made for a 1920×1080 browser source.</li>
<li><a href="/viewer/">The viewer page</a> — pick a demo user and vote with their points.</li>
</ul>
<p>Stop the server with Ctrl-C. Events and balances are kept in <code>livevote.db</code>.</p>
</body></html>
"#
    ))
}

/// Starts the simulation: the first event at once, then a new one every 30–60 s, and the
/// simulated viewers. Prints the URLs to open. Everything stops when `state.shutdown` is
/// cancelled. Call it once, from inside the runtime, with the application's router.
pub fn start(state: AppState, router: Router) -> tokio::task::JoinHandle<()> {
    let pace = std::env::var("LIVEVOTE_DEMO_PACE")
        .ok()
        .and_then(|text| text.parse::<f64>().ok())
        .filter(|pace| pace.is_finite() && *pace >= 0.1)
        .unwrap_or(1.0);
    let simulation = simulation::Simulation::new(state.clone(), router, pace);
    tokio::spawn(async move {
        simulation.adopt_open_events().await;
        let first = simulation.create_event().await;
        print_urls(&state, first.as_deref());
        simulation.top_up_named_users().await;
        let worker = tokio::spawn(Arc::clone(&simulation).run_worker());
        let viewers = tokio::spawn(Arc::clone(&simulation).run_viewers());
        let _ = tokio::join!(worker, viewers);
    })
}

fn print_urls(state: &AppState, first_event: Option<&str>) {
    let (token, _) = mint(&state.auth, catalog::OVERLAY_USER_ID, Role::Viewer, None);
    let listen = state.config.listen;
    // With port 0 the real port is only known to the listener: point at the `listening on` line.
    let base = if listen.port() == 0 {
        "http://ADDRESS".to_owned()
    } else {
        format!("http://{listen}")
    };
    let scheme_note = if listen.port() == 0 {
        "  (ADDRESS: see the `listening on` line)\n"
    } else {
        ""
    };
    let first = first_event
        .map(|title| format!("  first event: \"{title}\"\n"))
        .unwrap_or_default();
    println!(
        "\nlivevote demo is running: a simulated worker and {} simulated viewers.\n{first}{scheme_note}\n  \
         overlay (OBS browser source, 1920×1080):\n    {base}/overlay/?{}\n  \
         viewer page:\n    {base}/viewer/\n  \
         everything:\n    {base}/\n",
        simulation::SIMULATED_VIEWERS,
        overlay_query(&token)
    );
}
