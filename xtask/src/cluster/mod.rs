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

pub use haproxy::ensure_installed as ensure_haproxy;

use std::fs::File;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{demo, npm, tools, workspace_root};

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

/// What every node is started with.
#[derive(Debug, Clone)]
struct NodeSettings {
    database_url: String,
    redis: String,
    prefix: String,
    secrets: Secrets,
    /// With `--demo`: the workspace root, whose examples the nodes serve.
    demo_assets: Option<PathBuf>,
}

/// One node: its port and, while it runs, its process.
#[derive(Debug)]
struct Node {
    port: u16,
    process: Option<Child>,
    /// Whether its exit was reported already.
    reported_exit: bool,
}

impl Node {
    fn new(port: u16) -> Node {
        Node {
            port,
            process: None,
            reported_exit: false,
        }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// The nodes and the balancer of one running cluster; dropping it stops them all.
struct Cluster {
    binary: PathBuf,
    folder: PathBuf,
    settings: NodeSettings,
    nodes: Vec<Node>,
    balancer: Option<Child>,
    balancer_port: u16,
    stats_port: u16,
}

/// How long a node may take to say it is ready (connect, migrate, prove its subscription).
const NODE_READY_WITHIN: Duration = Duration::from_secs(30);

impl Cluster {
    /// Starts every node, waits until each is ready, then starts the balancer in front.
    fn start(&mut self) -> Result<()> {
        for index in 0..self.nodes.len() {
            self.start_node(index)?;
        }
        for index in 0..self.nodes.len() {
            self.wait_until_ready(index)?;
        }
        let configuration = haproxy::configuration(&haproxy::Layout {
            balancer_port: self.balancer_port,
            stats_port: self.stats_port,
            node_ports: &self.nodes.iter().map(|node| node.port).collect::<Vec<_>>(),
        });
        let configuration_path = self.folder.join("haproxy.cfg");
        std::fs::write(&configuration_path, configuration)?;
        let log = File::create(self.folder.join("haproxy.log"))?;
        let balancer = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&configuration_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("could not start haproxy")?;
        self.balancer = Some(balancer);
        let deadline = Instant::now() + Duration::from_secs(10);
        while http_status(&self.balancer_url(), "/readyz") != Some(200) {
            if let Some(balancer) = self.balancer.as_mut() {
                if let Ok(Some(status)) = balancer.try_wait() {
                    bail!(
                        "haproxy exited ({status}); see {}",
                        self.folder.join("haproxy.log").display()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the balancer on port {} never answered /readyz 200",
                    self.balancer_port
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn balancer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.balancer_port)
    }

    fn log_path(&self, index: usize) -> PathBuf {
        self.folder.join(format!("node-{}.log", index + 1))
    }

    fn start_node(&mut self, index: usize) -> Result<()> {
        if self.nodes[index].process.is_some() {
            bail!("node {} is running already", index + 1);
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path(index))?;
        let settings = &self.settings;
        let mut command = Command::new(&self.binary);
        command
            .env("LIVEVOTE_LISTEN", self.nodes[index].address())
            .env("LIVEVOTE_DATABASE_URL", &settings.database_url)
            .env("LIVEVOTE_BROKER_URL", &settings.redis)
            .env("LIVEVOTE_BROKER_PREFIX", &settings.prefix)
            .env("LIVEVOTE_JWT_SECRET", &settings.secrets.jwt_secret)
            .env("LIVEVOTE_API_KEY", &settings.secrets.api_key)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(assets) = &settings.demo_assets {
            command.arg("--demo").arg("--demo-assets").arg(assets);
            // One simulated worker per cluster: the first node runs it, the others serve.
            command.env("LIVEVOTE_DEMO_SIMULATION", (index == 0).to_string());
        }
        let process = command
            .spawn()
            .with_context(|| format!("could not start {}", self.binary.display()))?;
        self.nodes[index].process = Some(process);
        self.nodes[index].reported_exit = false;
        Ok(())
    }

    fn wait_until_ready(&mut self, index: usize) -> Result<()> {
        let url = format!("http://{}", self.nodes[index].address());
        let deadline = Instant::now() + NODE_READY_WITHIN;
        while http_status(&url, "/readyz") != Some(200) {
            if let Some(process) = self.nodes[index].process.as_mut() {
                if let Ok(Some(status)) = process.try_wait() {
                    self.nodes[index].process = None;
                    bail!(
                        "node {} exited ({status}); see {}",
                        index + 1,
                        self.log_path(index).display()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} was not ready within {NODE_READY_WITHIN:?}; see {}",
                    index + 1,
                    self.log_path(index).display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Stops a node: gracefully (SIGTERM: its sockets are told SERVER_RESTARTING and closed
    /// with 1012, and reconnect through the balancer to the others) or at once (SIGKILL).
    fn stop_node(&mut self, index: usize, graceful: bool) -> Result<()> {
        let Some(mut process) = self.nodes[index].process.take() else {
            bail!("node {} is not running", index + 1);
        };
        if graceful {
            let _ = Command::new("kill")
                .args(["-TERM", &process.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while process.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = process.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        } else {
            let _ = process.kill();
        }
        let _ = process.wait();
        Ok(())
    }

    fn print_summary(&self, demo: bool) {
        println!();
        println!(
            "livevote cluster: {} nodes behind HAProxy",
            self.nodes.len()
        );
        println!(
            "  the one URL for the SDK and the API: {} (socket: ws://127.0.0.1:{}/realtime)",
            self.balancer_url(),
            self.balancer_port
        );
        if demo {
            println!(
                "  the demo's pages:                    {}/",
                self.balancer_url()
            );
        }
        println!(
            "  HAProxy's view of the nodes:         http://127.0.0.1:{}/",
            self.stats_port
        );
        for (index, node) in self.nodes.iter().enumerate() {
            let pid = node.process.as_ref().map(Child::id).unwrap_or_default();
            println!(
                "  node {}: http://{}  pid {pid}  log {}",
                index + 1,
                node.address(),
                self.log_path(index).display()
            );
        }
        println!(
            "  database {}, Redis {} with prefix `{}`; secrets in {}",
            self.settings.database_url,
            self.settings.redis,
            self.settings.prefix,
            self.folder.join("secrets.env").display()
        );
        println!();
        println!("{COMMANDS}");
    }

    fn print_status(&mut self) {
        let states = http_text(&format!("http://127.0.0.1:{}", self.stats_port), "/;csv")
            .map(|csv| haproxy::node_states(&csv))
            .unwrap_or_default();
        for index in 0..self.nodes.len() {
            let name = format!("node{}", index + 1);
            let seen = states
                .iter()
                .find(|(server, _)| *server == name)
                .map_or("?", |(_, state)| state.as_str());
            let node = &self.nodes[index];
            let process = match &node.process {
                Some(process) => format!("running, pid {}", process.id()),
                None => "stopped".to_owned(),
            };
            let ready = http_status(&format!("http://{}", node.address()), "/readyz");
            println!(
                "  node {}: {process}; /readyz {}; HAProxy: {seen}",
                index + 1,
                ready.map_or("no answer".to_owned(), |status| status.to_string())
            );
        }
    }

    /// Reads commands from the terminal until `quit` (or Ctrl-C, which reaches the nodes too),
    /// and reports nodes that exit on their own.
    fn serve_commands(&mut self) -> Result<()> {
        let (lines, commands) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        loop {
            match commands.recv_timeout(Duration::from_millis(500)) {
                Ok(line) => {
                    if !self.obey(line.trim()) {
                        return Ok(());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // No terminal (started in the background): run until stopped.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
            self.report_exits();
        }
    }

    /// Carries out one typed command; `false` means quit.
    fn obey(&mut self, line: &str) -> bool {
        let mut words = line.split_whitespace();
        let verb = words.next().unwrap_or_default();
        let index = words
            .next()
            .and_then(|word| word.parse::<usize>().ok())
            .filter(|number| (1..=self.nodes.len()).contains(number))
            .map(|number| number - 1);
        let outcome = match (verb, index) {
            ("", _) => Ok(()),
            ("quit" | "exit", _) => return false,
            ("status", _) => {
                self.print_status();
                Ok(())
            }
            ("stop", Some(index)) => self.stop_node(index, true),
            ("kill", Some(index)) => self.stop_node(index, false),
            ("start", Some(index)) => self
                .start_node(index)
                .and_then(|()| self.wait_until_ready(index))
                .map(|()| println!("  node {} is ready", index + 1)),
            _ => {
                println!("{COMMANDS}");
                Ok(())
            }
        };
        if let Err(error) = outcome {
            println!("  {error:#}");
        }
        true
    }

    fn report_exits(&mut self) {
        for index in 0..self.nodes.len() {
            let node = &mut self.nodes[index];
            let Some(process) = node.process.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = process.try_wait() {
                if !node.reported_exit {
                    node.reported_exit = true;
                    println!(
                        "  node {} exited ({status}); `start {}` starts it again",
                        index + 1,
                        index + 1
                    );
                }
                node.process = None;
            }
        }
    }
}

const COMMANDS: &str =
    "commands: status | stop N (graceful: its sockets reconnect to the others) | \
                        kill N (SIGKILL) | start N | quit";

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            if self.nodes[index].process.is_some() {
                let _ = self.stop_node(index, true);
            }
        }
        if let Some(mut balancer) = self.balancer.take() {
            let _ = balancer.kill();
            let _ = balancer.wait();
        }
    }
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
