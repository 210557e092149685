//! `--demo`: what a new user sees after `cargo xtask demo`. [`routes`] serves the example
//! overlay and viewer pages with the built `livevote` package, a landing page linking them, and
//! a development-only token endpoint standing in for a real backend; [`start`] runs a simulated
//! worker and a few hundred simulated viewers that go through the real HTTP handlers.
//!
//! `--demo-pace` / `LIVEVOTE_DEMO_PACE` (hidden, for the browser tests) speeds every demo
//! duration up by the given factor, e.g. `10` makes events last 4–12 s instead of 40–120 s.

mod catalog;
mod simulation;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{OriginalUri, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, MethodRouter};
use axum::{Json, Router};
use livevote_protocol::Role;
use serde::Deserialize;
use serde_json::json;
use tower::ServiceExt;
use tower_http::cors::{AllowOrigin, CorsLayer};
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
    // A page opened from a local file (Origin `null`, or OBS's `http://absolute`) calls these too.
    let any_origin = CorsLayer::new()
        .allow_origin(AllowOrigin::any())
        .allow_methods([Method::GET]);
    let endpoints = Router::new()
        .route("/demo/token", get(demo_token))
        .route("/demo/config", get(demo_config))
        .with_state(tokens)
        .layer(any_origin);
    Router::new()
        .route("/", get(landing))
        .merge(endpoints)
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

/// The overlay's query string. It names a token URL rather than a token: `--dev` makes a new
/// JWT secret at every start, and with `tokenUrl` an overlay left open in OBS fetches a fresh
/// token when the demo restarts instead of stopping at close code 4001.
fn overlay_query() -> String {
    format!(
        "streamerId={}&tokenUrl=%2Fdemo%2Ftoken%3Frole%3Doverlay",
        catalog::STREAMER_ID
    )
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
async fn landing() -> Html<String> {
    let overlay = format!("/overlay/?{}", overlay_query().replace('&', "&amp;"));
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
    let pace = state.config.demo_pace;
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
        overlay_query()
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    async fn get(
        router: &Router,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, String, Option<String>) {
        let mut request = Request::get(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = router
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let location = response
            .headers()
            .get(header::LOCATION)
            .map(|value| value.to_str().unwrap().to_owned());
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            String::from_utf8_lossy(&bytes).into_owned(),
            location,
        )
    }

    #[tokio::test]
    async fn demo_serves_its_pages_and_tokens_and_simulates_live_voting() {
        let mut config = Config::for_tests();
        config.demo = true;
        let state = crate::start(config).await.unwrap();
        let router = crate::app(state.clone());

        // The bare folder redirects to the folder, query string kept, so relative imports work.
        let (status, _, location) = get(&router, "/overlay?streamerId=x", None).await;
        assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(location.as_deref(), Some("/overlay/?streamerId=x"));
        let (status, page, _) = get(&router, "/overlay/", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("overlay.js"));
        let (status, page, _) = get(&router, "/viewer/", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("viewer.js"));
        let (status, page, _) = get(&router, "/", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("/overlay/?streamerId="));

        // Demo tokens are signed with the server's secret.
        let (status, body, _) = get(&router, "/demo/token?role=viewer&user=0", None).await;
        assert_eq!(status, StatusCode::OK);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        let token = body["token"].as_str().unwrap().to_owned();
        let claims = state
            .auth
            .verify(&token, state.clock.unix_seconds())
            .unwrap();
        assert_eq!(claims.sub, DEMO_USERS[0].id);
        assert_eq!(claims.role, Role::Viewer);
        assert_eq!(
            get(&router, "/demo/token?user=99", None).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get(&router, "/demo/token?role=admin", None).await.0,
            StatusCode::BAD_REQUEST
        );

        // The simulation creates an event at once and the simulated viewers vote on it.
        let simulation = start(state.clone(), router.clone());
        let path = format!("/api/events?streamerId={STREAMER_ID}&status=open");
        let mut votes = 0;
        for _ in 0..100 {
            let (_, body, _) = get(&router, &path, Some(&token)).await;
            let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            votes = body["events"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|item| item["totals"].as_object().into_iter().flatten())
                .map(|(_, count)| count.as_u64().unwrap_or(0))
                .sum::<u64>();
            if votes > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(votes > 0, "no simulated votes within 10 s");
        let (_, body, _) = get(&router, "/api/balance", Some(&token)).await;
        assert!(
            body.contains(&format!("\"balance\":{}", catalog::DEMO_BALANCE)),
            "{body}"
        );

        // Everything stops with the server.
        state.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), simulation)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn nothing_of_the_demo_is_served_without_demo() {
        let config = Config::for_tests();
        assert!(!config.demo);
        let router = routes(&config);
        assert_eq!(
            get(&router, "/demo/token?user=0", None).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get(&router, "/overlay/", None).await.0,
            StatusCode::NOT_FOUND
        );
    }
}
