//! A running local cluster: its nodes' processes (started, stopped gracefully or killed,
//! restarted), the balancer in front, and the commands typed at it.

use std::fs::File;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{haproxy, http_status, http_text, Secrets};

/// What every node is started with.
#[derive(Debug, Clone)]
pub(super) struct NodeSettings {
    pub(super) database_url: String,
    pub(super) redis: String,
    pub(super) prefix: String,
    pub(super) secrets: Secrets,
    /// With `--demo`: the workspace root, whose examples the nodes serve.
    pub(super) demo_assets: Option<PathBuf>,
}

/// One node: its port and, while it runs, its process.
#[derive(Debug)]
pub(super) struct Node {
    pub(super) port: u16,
    pub(super) process: Option<Child>,
    /// Whether its exit was reported already.
    pub(super) reported_exit: bool,
}

impl Node {
    pub(super) fn new(port: u16) -> Node {
        Node {
            port,
            process: None,
            reported_exit: false,
        }
    }

    pub(super) fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// The nodes and the balancer of one running cluster; dropping it stops them all.
pub(super) struct Cluster {
    pub(super) binary: PathBuf,
    pub(super) folder: PathBuf,
    pub(super) settings: NodeSettings,
    pub(super) nodes: Vec<Node>,
    pub(super) balancer: Option<Child>,
    pub(super) balancer_port: u16,
    pub(super) stats_port: u16,
}

/// How long a node may take to say it is ready (connect, migrate, prove its subscription).
const NODE_READY_WITHIN: Duration = Duration::from_secs(30);

impl Cluster {
    /// Starts every node, waits until each is ready, then starts the balancer in front.
    pub(super) fn start(&mut self) -> Result<()> {
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

    pub(super) fn balancer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.balancer_port)
    }

    pub(super) fn log_path(&self, index: usize) -> PathBuf {
        self.folder.join(format!("node-{}.log", index + 1))
    }

    pub(super) fn start_node(&mut self, index: usize) -> Result<()> {
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

    pub(super) fn wait_until_ready(&mut self, index: usize) -> Result<()> {
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
    pub(super) fn stop_node(&mut self, index: usize, graceful: bool) -> Result<()> {
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

    pub(super) fn print_summary(&self, demo: bool) {
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

    pub(super) fn print_status(&mut self) {
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
    pub(super) fn serve_commands(&mut self) -> Result<()> {
        let (lines, commands) = mpsc::channel();
        // A signal is a `quit`: the loop returns and dropping the cluster stops every node
        // and the balancer, so that nothing is left holding the ports. Without this a SIGTERM
        // (a service manager, `timeout`, a CI job's end) killed only this process.
        let signalled = lines.clone();
        if let Err(error) = ctrlc::set_handler(move || {
            let _ = signalled.send("quit".to_owned());
        }) {
            println!("  signals will not stop the cluster cleanly: {error}");
        }
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
    pub(super) fn obey(&mut self, line: &str) -> bool {
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

    pub(super) fn report_exits(&mut self) {
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
