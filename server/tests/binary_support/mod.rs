//! The real `livevote-server` binary for process-level tests: started with a clean environment
//! (no `LIVEVOTE_*` variable of the test's own leaks in), its stderr appended to a log, and its
//! `listening on http://ADDRESS` line awaited, bounded.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

pub const BINARY: &str = env!("CARGO_BIN_EXE_livevote-server");

/// Starts the binary with `arguments`, its stderr appended to `log`. Returns the child and the
/// address it announced, or `None` for the address when no `listening on` line came within
/// `deadline` (the caller says why, with the log's tail).
pub fn spawn(arguments: &[String], log: &Path, deadline: Duration) -> (Child, Option<String>) {
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the server's log");
    let mut command = Command::new(BINARY);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LIVEVOTE_") {
            command.env_remove(name);
        }
    }
    command
        .args(arguments)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file));
    let mut child = command.spawn().expect("the binary starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let (announced, announcement) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let Ok(line) = line else { return };
            if let Some(address) = line.strip_prefix("listening on http://") {
                let _ = announced.send(address.trim().to_owned());
                break;
            }
        }
        // Keep draining so that the server never blocks on a full pipe.
        for _ in lines {}
    });
    (child, announcement.recv_timeout(deadline).ok())
}

/// A token for `user` from the `/api/auth` of the server at `address` (`host:port`), valid for
/// an hour.
pub async fn mint_token(
    http: &reqwest::Client,
    address: &str,
    api_key: &str,
    user: Uuid,
    role: &str,
    streamer: Option<Uuid>,
) -> String {
    let mut body = json!({"apiKey": api_key, "userId": user, "role": role, "ttlSeconds": 3600});
    if let Some(streamer) = streamer {
        body["streamerId"] = json!(streamer);
    }
    let answer: Value = http
        .post(format!("http://{address}/api/auth"))
        .json(&body)
        .send()
        .await
        .expect("mint a token")
        .json()
        .await
        .expect("a token body");
    answer["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {answer}"))
        .to_owned()
}
