//! The server under test: either one already running (address and optionally its pid) or one
//! this load generator spawns from a command line, reads `listening on http://ADDR` from, and
//! stops (SIGTERM, then SIGKILL) when the workload ends.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// How long a spawned server may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a spawned server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

pub struct SpawnedServer {
    child: Child,
    pub address: SocketAddr,
    pub pid: u32,
}

impl SpawnedServer {
    /// Starts `command` (program and arguments) with stdout and stderr going to `log`, and waits
    /// for its `listening on http://ADDR` line.
    pub async fn start(command: &[String], log: &Path) -> anyhow::Result<SpawnedServer> {
        let (program, arguments) = command
            .split_first()
            .ok_or_else(|| anyhow!("empty server command"))?;
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(program)
            .args(arguments)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file.try_clone()?))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("{program} exited at once"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let mut log_writer = tokio::fs::File::from_std(log_file);
        let find_address = async {
            while let Some(line) = lines.next_line().await? {
                log_writer.write_all(line.as_bytes()).await?;
                log_writer.write_all(b"\n").await?;
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let address: SocketAddr = rest
                        .trim()
                        .trim_end_matches('/')
                        .parse()
                        .with_context(|| format!("parsing `{line}`"))?;
                    return Ok(address);
                }
            }
            bail!(
                "{program} closed its stdout without printing `listening on http://ADDR`; see {}",
                log.display()
            )
        };
        let address = tokio::time::timeout(START_TIMEOUT, find_address)
            .await
            .map_err(|_| anyhow!("{program} printed no address within {START_TIMEOUT:?}"))??;
        // Keep draining stdout into the log so the server never blocks on a full pipe; the task
        // ends when the server closes stdout, i.e. when it exits.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if log_writer.write_all(line.as_bytes()).await.is_err()
                    || log_writer.write_all(b"\n").await.is_err()
                {
                    break;
                }
            }
        });
        Ok(SpawnedServer {
            child,
            address,
            pid,
        })
    }

    /// SIGTERM, then SIGKILL if it has not exited in time. Returns the exit description.
    pub async fn stop(mut self) -> String {
        let pid = i32::try_from(self.pid).unwrap_or(0);
        if pid > 0 {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(error)) => format!("wait failed: {error}"),
            Err(_) => {
                let _ = self.child.kill().await;
                format!("did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed")
            }
        }
    }
}
