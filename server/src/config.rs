//! The server's one configuration: every option a flag with an environment fallback (flag wins).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// livevote-server: the realtime layer for live events and votes.
#[derive(Debug, Clone, Parser)]
#[command(name = "livevote-server", version, about)]
pub struct Config {
    /// Address to bind; port 0 picks a free port (printed as `listening on http://ADDR`).
    #[arg(long, env = "LIVEVOTE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// `sqlite://PATH` (embedded default) or `postgres://…`.
    #[arg(
        long,
        env = "LIVEVOTE_DATABASE_URL",
        default_value = "sqlite://livevote.db"
    )]
    pub database_url: String,

    /// `memory` (single node) or `redis://…` (several nodes).
    #[arg(long, env = "LIVEVOTE_BROKER_URL", default_value = "memory")]
    pub broker_url: String,

    /// Prefix of the broker's Redis channels: nodes with the same prefix form one cluster, so
    /// several clusters (or parallel tests) can share a Redis.
    #[arg(long, env = "LIVEVOTE_BROKER_PREFIX", default_value = "livevote")]
    pub broker_prefix: String,

    /// HS256 secret for tokens; required unless --dev.
    #[arg(long, env = "LIVEVOTE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Key trusted backends present to /api/auth; required unless --dev.
    #[arg(long, env = "LIVEVOTE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Balance credited once to a user the ledger has never seen (recorded as a ledger entry).
    #[arg(long, env = "LIVEVOTE_INITIAL_BALANCE", default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    pub initial_balance: i64,

    /// Server ping period.
    #[arg(long, env = "LIVEVOTE_HEARTBEAT_INTERVAL", default_value = "20s", value_parser = parse_positive_duration)]
    pub heartbeat_interval: Duration,

    /// A socket that has not answered a ping within this is closed with 4000.
    #[arg(long, env = "LIVEVOTE_PONG_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub pong_timeout: Duration,

    /// EVENT_UPDATED coalescing period per channel (250ms–500ms).
    #[arg(long, env = "LIVEVOTE_UPDATE_INTERVAL", default_value = "250ms", value_parser = parse_update_interval)]
    pub update_interval: Duration,

    /// How long a closed event stays in channel snapshots.
    #[arg(long, env = "LIVEVOTE_RECENT_CLOSED", default_value = "60s", value_parser = humantime::parse_duration)]
    pub recent_closed: Duration,

    /// PEM certificate chain; with --tls-key the server speaks https/wss.
    #[arg(long, env = "LIVEVOTE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key; with --tls-cert the server speaks https/wss.
    #[arg(long, env = "LIVEVOTE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Comma-separated Origins allowed to open sockets and call the API from a browser, or
    /// `any`. `loopback` in the list stands for pages served from localhost or 127.0.0.0/8,
    /// `null` for file:// pages (OBS browser sources). Default: `loopback` in --dev (so that no
    /// web page a developer visits can mint an admin token), `loopback,null` in --demo (its
    /// overlay is meant to be opened as a file), `any` otherwise.
    #[arg(long, env = "LIVEVOTE_ALLOWED_ORIGINS", default_value = "auto", value_parser = parse_origins)]
    pub allowed_origins: AllowedOrigins,

    /// Sockets per node; past it an upgrade is answered 503 with Retry-After.
    #[arg(long, env = "LIVEVOTE_MAX_CONNECTIONS", default_value_t = 200_000)]
    pub max_connections: usize,

    /// Open events one streamer may have at once; creating one more is 409
    /// `TOO_MANY_OPEN_EVENTS`. Every open event is in each snapshot of its channels.
    #[arg(long, env = "LIVEVOTE_MAX_OPEN_EVENTS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_open_events: u32,

    /// Open TCP connections per node, HTTP and sockets together; past it a new connection is
    /// answered 503 with Retry-After (plain) or dropped (TLS) at once.
    #[arg(long, env = "LIVEVOTE_MAX_OPEN_CONNECTIONS", default_value_t = 210_000)]
    pub max_open_connections: usize,

    /// Time a client has to send a request's headers, counted from the connection's start or
    /// the previous answer, so it also ends idle keep-alive connections (and bounds a TLS
    /// handshake).
    #[arg(long, env = "LIVEVOTE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub header_read_timeout: Duration,

    /// A connection that moves no byte either way for this long is closed (a stalled body, a
    /// client that stops reading). Must exceed heartbeat interval + pong timeout.
    #[arg(long, env = "LIVEVOTE_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_positive_duration)]
    pub idle_timeout: Duration,

    /// New sockets per second per node; past it 503 with Retry-After.
    #[arg(long, env = "LIVEVOTE_CONNECT_RATE", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    pub connect_rate: u32,

    /// Socket commands per second per socket (burst twice that).
    #[arg(long, env = "LIVEVOTE_COMMAND_RATE", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub command_rate: u32,

    /// Vote requests per second per user (burst the same).
    #[arg(long, env = "LIVEVOTE_VOTE_RATE", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub vote_rate: u32,

    /// `GET /api/events` requests per second per user (burst the same).
    #[arg(long, env = "LIVEVOTE_LIST_RATE", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub list_rate: u32,

    /// Wrong API keys per client address per minute at `/api/auth`; past it that address gets
    /// 429 with Retry-After (even with the right key) until the minute is over.
    #[arg(long, env = "LIVEVOTE_AUTH_FAILURE_LIMIT", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_failure_limit: u32,

    /// Local development: generated secrets, /api/auth without an API key, loopback only.
    #[arg(long)]
    pub dev: bool,

    /// Implies --dev; serves the example overlay and runs a simulated worker and viewers.
    #[arg(long)]
    pub demo: bool,

    /// Folder with the demo's static files (overlay, viewer, built SDK); used by --demo.
    #[arg(long, env = "LIVEVOTE_DEMO_ASSETS", hide = true)]
    pub demo_assets: Option<PathBuf>,

    /// Speeds every demo duration up by this factor (0.1–1000), e.g. `10` makes events last
    /// 4–12 s instead of 40–120 s; for the browser tests of the examples.
    #[arg(long, env = "LIVEVOTE_DEMO_PACE", default_value_t = 1.0, hide = true, value_parser = parse_demo_pace)]
    pub demo_pace: f64,

    /// With --demo: whether this node runs the simulated worker and viewers. `cargo xtask
    /// cluster --demo` sets it false on every node but the first, which then serve the pages
    /// and sockets only, so that one cluster simulates one worker.
    #[arg(long, env = "LIVEVOTE_DEMO_SIMULATION", default_value_t = true, action = clap::ArgAction::Set, hide = true)]
    pub demo_simulation: bool,
}

fn parse_demo_pace(text: &str) -> Result<f64, String> {
    let pace: f64 = text
        .parse()
        .map_err(|_| "expected a number such as 10".to_string())?;
    if pace.is_finite() && (0.1..=1000.0).contains(&pace) {
        Ok(pace)
    } else {
        Err("expected a number from 0.1 to 1000".into())
    }
}

/// Which browser Origins may call the API and open sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// Not set: [`Config::finish`] picks `Loopback` in --dev and `Any` otherwise (until then
    /// it allows any Origin).
    Auto,
    Any,
    /// Exact Origins; the entry `loopback` stands for every page served from a loopback host
    /// (`localhost`, `*.localhost`, 127.0.0.0/8, `[::1]`).
    List(Vec<String>),
}

impl AllowedOrigins {
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            AllowedOrigins::Auto | AllowedOrigins::Any => true,
            AllowedOrigins::List(origins) => origins.iter().any(|allowed| {
                allowed == origin || (allowed == LOOPBACK && is_loopback_origin(origin))
            }),
        }
    }
}

/// The `--allowed-origins` entry that stands for every loopback page.
const LOOPBACK: &str = "loopback";

/// Whether `origin` (`scheme://host[:port]`) names a loopback host.
pub fn is_loopback_origin(origin: &str) -> bool {
    let Some((_, rest)) = origin.split_once("://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    let host = host.to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

fn parse_origins(text: &str) -> Result<AllowedOrigins, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("auto") {
        return Ok(AllowedOrigins::Auto);
    }
    if text.eq_ignore_ascii_case("any") || text == "*" {
        return Ok(AllowedOrigins::Any);
    }
    let origins: Vec<String> = text
        .split(',')
        .map(|origin| origin.trim().trim_end_matches('/').to_owned())
        .filter(|origin| !origin.is_empty())
        .collect();
    if origins.is_empty() {
        return Err("expected `any` or a comma-separated list of origins".into());
    }
    for origin in &origins {
        if !(origin.starts_with("http://")
            || origin.starts_with("https://")
            || origin == "null"
            || origin == LOOPBACK)
        {
            return Err(format!(
                "origin `{origin}` must start with http:// or https://"
            ));
        }
    }
    Ok(AllowedOrigins::List(origins))
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|error| error.to_string())?;
    if duration.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(duration)
}

fn parse_update_interval(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|error| error.to_string())?;
    if duration < Duration::from_millis(250) || duration > Duration::from_millis(500) {
        return Err("must be between 250ms and 500ms".into());
    }
    Ok(duration)
}

/// A configuration that parsed but cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--jwt-secret (LIVEVOTE_JWT_SECRET) is required unless --dev")]
    MissingJwtSecret,
    #[error("--api-key (LIVEVOTE_API_KEY) is required unless --dev")]
    MissingApiKey,
    #[error("--dev refuses to bind the non-loopback address {0}")]
    DevOnNonLoopback(SocketAddr),
    #[error("--jwt-secret must be at least 32 bytes")]
    WeakJwtSecret,
    #[error("--api-key must be at least 16 bytes")]
    WeakApiKey,
    #[error("--idle-timeout ({idle:?}) must exceed --heartbeat-interval + --pong-timeout ({heartbeat:?}), or healthy sockets would be cut")]
    IdleTimeoutTooShort { idle: Duration, heartbeat: Duration },
    #[error("unsupported --database-url `{0}`: expected sqlite://PATH or postgres://…")]
    UnsupportedDatabase(String),
    #[error("unsupported --broker-url `{0}`: expected memory or redis://…")]
    UnsupportedBroker(String),
}

impl Config {
    /// Development mode, on by `--dev` or `--demo`.
    pub fn is_dev(&self) -> bool {
        self.dev || self.demo
    }

    /// Checks the rules that span several options and fills in development secrets.
    pub fn finish(mut self) -> Result<Self, ConfigError> {
        if self.demo {
            self.dev = true;
        }
        if self.dev {
            if !self.listen.ip().is_loopback() {
                return Err(ConfigError::DevOnNonLoopback(self.listen));
            }
            if self.jwt_secret.is_none() {
                self.jwt_secret = Some(random_secret());
            }
        } else {
            if self.jwt_secret.is_none() {
                return Err(ConfigError::MissingJwtSecret);
            }
            if self.api_key.is_none() {
                return Err(ConfigError::MissingApiKey);
            }
        }
        if self
            .jwt_secret
            .as_ref()
            .is_some_and(|secret| secret.len() < 32)
            && !self.dev
        {
            return Err(ConfigError::WeakJwtSecret);
        }
        if self.allowed_origins == AllowedOrigins::Auto {
            self.allowed_origins = if self.demo {
                AllowedOrigins::List(vec![LOOPBACK.into(), "null".into()])
            } else if self.dev {
                AllowedOrigins::List(vec![LOOPBACK.into()])
            } else {
                AllowedOrigins::Any
            };
        }
        if !self.dev && self.api_key.as_ref().is_some_and(|key| key.len() < 16) {
            return Err(ConfigError::WeakApiKey);
        }
        let heartbeat = self.heartbeat_interval + self.pong_timeout;
        if self.idle_timeout <= heartbeat {
            return Err(ConfigError::IdleTimeoutTooShort {
                idle: self.idle_timeout,
                heartbeat,
            });
        }
        let database = self.database_url.as_str();
        if !(database.starts_with("sqlite:")
            || database.starts_with("postgres://")
            || database.starts_with("postgresql://"))
        {
            return Err(ConfigError::UnsupportedDatabase(self.database_url.clone()));
        }
        if !(self.broker_url == "memory" || self.broker_url.starts_with("redis://")) {
            return Err(ConfigError::UnsupportedBroker(self.broker_url.clone()));
        }
        Ok(self)
    }

    /// A configuration for tests and embedding: dev mode, in-memory SQLite, port 0.
    pub fn for_tests() -> Self {
        let mut config =
            Config::parse_from(["livevote-server", "--dev", "--listen", "127.0.0.1:0"]);
        config.database_url = "sqlite::memory:".into();
        config.jwt_secret = Some("test-secret-test-secret-test-secret!".into());
        config.api_key = Some("test-api-key".into());
        config
    }
}

fn random_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::thread_rng().gen();
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_interval_outside_bounds_is_refused() {
        for bad in ["100ms", "600ms", "1s"] {
            let parsed =
                Config::try_parse_from(["livevote-server", "--dev", "--update-interval", bad]);
            assert!(parsed.is_err(), "{bad} accepted");
        }
        let parsed =
            Config::try_parse_from(["livevote-server", "--update-interval", "500ms"]).unwrap();
        assert_eq!(parsed.update_interval, Duration::from_millis(500));
    }

    #[test]
    fn production_needs_secrets_and_dev_needs_loopback() {
        let config = Config::try_parse_from(["livevote-server"]).unwrap();
        assert!(matches!(
            config.finish(),
            Err(ConfigError::MissingJwtSecret)
        ));
        let config =
            Config::try_parse_from(["livevote-server", "--dev", "--listen", "0.0.0.0:80"]).unwrap();
        assert!(matches!(
            config.finish(),
            Err(ConfigError::DevOnNonLoopback(_))
        ));
        let config = Config::try_parse_from(["livevote-server", "--demo"])
            .unwrap()
            .finish()
            .unwrap();
        assert!(config.dev && config.jwt_secret.is_some());
    }

    #[test]
    fn origins_parse() {
        assert_eq!(parse_origins("any").unwrap(), AllowedOrigins::Any);
        let list = parse_origins("https://a.example, http://localhost:5173/").unwrap();
        assert!(list.allows("http://localhost:5173"));
        assert!(!list.allows("https://evil.example"));
        assert!(parse_origins("ftp://x").is_err());
        let loopback = parse_origins("loopback").unwrap();
        assert!(parse_origins("loopback,null").unwrap().allows("null"));
        for origin in [
            "http://localhost:5173",
            "http://127.0.0.1:8080",
            "https://app.localhost",
            "http://[::1]:3000",
        ] {
            assert!(loopback.allows(origin), "{origin}");
        }
        for origin in [
            "https://evil.example",
            "http://localhost.evil.example",
            "null",
            "http://128.0.0.1",
        ] {
            assert!(!loopback.allows(origin), "{origin}");
        }
    }

    #[test]
    fn dev_allows_only_loopback_origins_unless_told_otherwise() {
        let dev = Config::try_parse_from(["livevote-server", "--dev"])
            .unwrap()
            .finish()
            .unwrap();
        assert!(dev.allowed_origins.allows("http://localhost:5173"));
        assert!(!dev.allowed_origins.allows("https://evil.example"));
        assert!(!dev.allowed_origins.allows("null"));
        let demo = Config::try_parse_from(["livevote-server", "--demo"])
            .unwrap()
            .finish()
            .unwrap();
        assert!(
            demo.allowed_origins.allows("null"),
            "the demo's overlay opens as a file"
        );
        assert!(!demo.allowed_origins.allows("https://evil.example"));
        let told = Config::try_parse_from(["livevote-server", "--dev", "--allowed-origins", "any"])
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(told.allowed_origins, AllowedOrigins::Any);
    }
}
