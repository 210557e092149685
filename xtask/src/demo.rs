//! `cargo xtask demo`: the README's first command. It builds the `livevote` npm package when it
//! is missing or older than its sources (the overlay and viewer pages import it), then starts
//! the release server in demo mode, which serves those pages and simulates a worker and a few
//! hundred viewers. Extra arguments go to the server, e.g. `cargo xtask demo --listen
//! 127.0.0.1:9000`.

use std::path::Path;

use anyhow::Result;

use crate::{npm, tools, workspace_root};

pub fn run(arguments: &[String]) -> Result<()> {
    let root = workspace_root();
    if package_needs_build(&root) {
        println!("building the livevote npm package (the overlay and viewer pages import it)");
        tools::ensure_wasm_target()?;
        tools::ensure_wasm_bindgen_cli(&root)?;
        tools::ensure_node_modules(&root)?;
        npm::run(&[])?;
    } else {
        println!("npm/dist is up to date");
    }

    let mut command = tools::cargo();
    command
        .args([
            "run",
            "--release",
            "-p",
            "livevote-server",
            "--",
            "--demo",
            "--demo-assets",
        ])
        .arg(&root)
        .args(arguments)
        .current_dir(&root);
    start_server(command)
}

/// Whether npm/dist is missing or older than anything it is built from.
pub fn package_needs_build(root: &Path) -> bool {
    let Some(built) = tools::oldest_file_time(&root.join("npm").join("dist")) else {
        return true;
    };
    let sources = [
        tools::newest_file_time(&root.join("sdk-wasm"), &["target"]),
        tools::newest_file_time(&root.join("protocol").join("src"), &[]),
        tools::newest_file_time(&root.join("npm"), &["dist", "node_modules"]),
    ];
    sources.into_iter().flatten().any(|source| source > built)
}

/// Replaces this process with the server on Unix, so that Ctrl-C reaches the server alone and
/// the shell prompt comes back only after its graceful shutdown.
#[cfg(unix)]
fn start_server(mut command: std::process::Command) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let error = command.exec();
    Err(anyhow::Error::new(error).context("could not start `cargo run -p livevote-server`"))
}

#[cfg(not(unix))]
fn start_server(mut command: std::process::Command) -> Result<()> {
    tools::run(&mut command)
}
