//! `cargo xtask cluster`: several livevote nodes on loopback ports, sharing the machine's
//! PostgreSQL and Redis, behind HAProxy (from Debian's packages, installed when missing), so
//! that the SDK's one URL reaches every node and a node can be stopped, killed or restarted
//! under it. `--check` runs a bounded smoke test of exactly that and exits (a step of `cargo
//! xtask test`).
//!
//! ```text
//! cargo xtask cluster [--nodes 3] [--port 8080] [--demo]
//!                     [--postgres postgres://postgres@127.0.0.1:5432] [--database livevote_cluster]
//!                     [--redis redis://127.0.0.1:6379] [--prefix livevote-cluster] [--check]
//! ```

mod check;
mod haproxy;
mod running;

pub use haproxy::ensure_installed as ensure_haproxy;

use std::fs::File;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{demo, npm, tools, workspace_root};
use running::{Cluster, Node, NodeSettings};

/// What the command was asked for.
#[derive(Debug, Clone)]
struct Options {
    nodes: usize,
    balancer_port: u16,
    demo: bool,
    /// The PostgreSQL server, without a database name.
    postgres: String,
    database: String,
    redis: String,
    prefix: String,
    check: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            balancer_port: 8080,
            demo: false,
            postgres: "postgres://postgres@127.0.0.1:5432".into(),
            database: "livevote_cluster".into(),
            redis: "redis://127.0.0.1:6379".into(),
            prefix: "livevote-cluster".into(),
            check: false,
        }
    }
}

fn parse(arguments: &[String]) -> Result<Options> {
    let mut options = Options::default();
    let mut arguments = arguments.iter();
    while let Some(argument) = arguments.next() {
        let mut value = |name: &str| {
            arguments
                .next()
                .cloned()
                .with_context(|| format!("{name} needs a value"))
        };
        match argument.as_str() {
            "--nodes" => {
                options.nodes = value("--nodes")?
                    .parse()
                    .ok()
                    .filter(|nodes| (1..=16).contains(nodes))
                    .context("--nodes takes a number from 1 to 16")?;
            }
            "--port" => {
                options.balancer_port = value("--port")?
                    .parse()
                    .ok()
                    .filter(|port| *port >= 1024 && *port <= 65_000)
                    .context("--port takes a port from 1024 to 65000")?;
            }
            "--postgres" => options.postgres = value("--postgres")?,
            "--database" => options.database = value("--database")?,
            "--redis" => options.redis = value("--redis")?,
            "--prefix" => options.prefix = value("--prefix")?,
            "--demo" => options.demo = true,
            "--check" => options.check = true,
            other => bail!(
                "unknown option `{other}`; expected --nodes N, --port P, --demo, --postgres URL, \
                 --database NAME, --redis URL, --prefix P or --check"
            ),
        }
    }
    if !options
        .database
        .chars()
        .all(|character| character.is_ascii_alphanumeric() || character == '_')
    {
        bail!("--database takes letters, digits and `_` only");
    }
    options.postgres = options.postgres.trim_end_matches('/').to_owned();
    Ok(options)
}

pub fn run(arguments: &[String]) -> Result<()> {
    let options = parse(arguments)?;
    if options.check {
        return check::run(&options);
    }
    let root = workspace_root();
    haproxy::ensure_installed()?;
    if options.demo && demo::package_needs_build(&root) {
        println!("building the livevote npm package (the demo's pages import it)");
        tools::ensure_wasm_target()?;
        tools::ensure_wasm_bindgen_cli(&root)?;
        tools::ensure_node_modules(&root)?;
        npm::run(&[])?;
    }
    let binary = build_server(&root, Profile::Release)?;
    ensure_database(&options.postgres, &options.database)?;
    let folder = tools::target_dir(&root).join("cluster");
    std::fs::create_dir_all(&folder)?;
    let secrets = Secrets::kept_in(&folder.join("secrets.env"))?;
    let node_ports: Vec<u16> = (1..=options.nodes)
        .map(|index| options.balancer_port + index as u16)
        .collect();
    let stats_port = options.balancer_port + 99;
    let mut cluster = Cluster {
        binary,
        folder,
        settings: NodeSettings {
            database_url: format!("{}/{}", options.postgres, options.database),
            redis: options.redis.clone(),
            prefix: options.prefix.clone(),
            secrets,
            demo_assets: options.demo.then(|| root.clone()),
        },
        nodes: node_ports.iter().map(|port| Node::new(*port)).collect(),
        balancer: None,
        balancer_port: options.balancer_port,
        stats_port,
    };
    cluster.start()?;
    cluster.print_summary(options.demo);
    cluster.serve_commands()
}

/// Which build of the server the nodes run.
#[derive(Debug, Clone, Copy)]
enum Profile {
    /// For people: what production runs.
    Release,
    /// For the smoke check in `cargo xtask test`, which has built it already.
    Debug,
}

fn build_server(root: &Path, profile: Profile) -> Result<PathBuf> {
    let mut command = tools::cargo();
    command
        .args(["build", "-p", "livevote-server", "--bin", "livevote-server"])
        .current_dir(root);
    let folder = match profile {
        Profile::Release => {
            command.arg("--release");
            "release"
        }
        Profile::Debug => "debug",
    };
    tools::run(&mut command)?;
    Ok(tools::target_dir(root).join(folder).join("livevote-server"))
}

/// Creates the cluster's database unless it exists (the nodes create their tables).
fn ensure_database(postgres: &str, database: &str) -> Result<()> {
    let administration = format!("{postgres}/postgres");
    let query = format!("SELECT 1 FROM pg_database WHERE datname = '{database}'");
    let found = tools::output_of("psql", &["-X", "-tA", &administration, "-c", &query])
        .with_context(|| {
            format!("PostgreSQL at {postgres} does not answer `psql` (is it running?)")
        })?;
    if found.trim() == "1" {
        return Ok(());
    }
    tools::run(Command::new("psql").args([
        "-X",
        "-q",
        &administration,
        "-c",
        &format!("CREATE DATABASE {database}"),
    ]))
}

/// Drops a database the smoke check made, closing what still holds it.
fn drop_database(postgres: &str, database: &str) {
    let administration = format!("{postgres}/postgres");
    let _ = Command::new("psql")
        .args([
            "-X",
            "-q",
            &administration,
            "-c",
            &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
        ])
        .stdout(Stdio::null())
        .status();
}

/// The secrets every node of one cluster shares.
#[derive(Debug, Clone)]
struct Secrets {
    jwt_secret: String,
    api_key: String,
}

impl Secrets {
    /// Fresh random secrets.
    fn random() -> Result<Secrets> {
        Ok(Secrets {
            jwt_secret: random_hex(32)?,
            api_key: random_hex(24)?,
        })
    }

    /// The secrets written at the first run, so that tokens outlive a restart of the cluster.
    fn kept_in(path: &Path) -> Result<Secrets> {
        if let Ok(text) = std::fs::read_to_string(path) {
            let value = |name: &str| {
                text.lines()
                    .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
                    .map(str::to_owned)
            };
            if let (Some(jwt_secret), Some(api_key)) =
                (value("LIVEVOTE_JWT_SECRET"), value("LIVEVOTE_API_KEY"))
            {
                return Ok(Secrets {
                    jwt_secret,
                    api_key,
                });
            }
        }
        let secrets = Secrets::random()?;
        std::fs::write(
            path,
            format!(
                "LIVEVOTE_JWT_SECRET={}\nLIVEVOTE_API_KEY={}\n",
                secrets.jwt_secret, secrets.api_key
            ),
        )
        .with_context(|| format!("writing {}", path.display()))?;
        Ok(secrets)
    }
}

fn random_hex(bytes: usize) -> Result<String> {
    use std::io::Read;
    let mut buffer = vec![0u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut buffer))
        .context("reading /dev/urandom")?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// The status of `GET base + path`, or `None` when nothing answers within a second.
fn http_status(base: &str, path: &str) -> Option<u16> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(1))
        .build();
    match agent.get(&format!("{base}{path}")).call() {
        Ok(response) => Some(response.status()),
        Err(ureq::Error::Status(status, _)) => Some(status),
        Err(ureq::Error::Transport(_)) => None,
    }
}

fn http_text(base: &str, path: &str) -> Option<String> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(1))
        .build();
    agent
        .get(&format!("{base}{path}"))
        .call()
        .ok()?
        .into_string()
        .ok()
}
