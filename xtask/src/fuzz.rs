//! `cargo xtask fuzz [SECONDS]`: runs every cargo-fuzz target in fuzz/ for SECONDS each (60 by
//! default), one after the other on one job, installing cargo-fuzz when it is missing. Stable
//! Rust is enough: `RUSTC_BOOTSTRAP=1` lets it accept the sanitizer flags cargo-fuzz passes,
//! for this build only.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::{tools, workspace_root};

/// The targets, in the order they run (`fuzz/Cargo.toml`'s `[[bin]]`s).
const TARGETS: &[&str] = &[
    "client_command",
    "channel_name",
    "event_validation",
    "http_bodies",
    "sdk_merge",
];

pub fn run(arguments: &[String]) -> Result<()> {
    let seconds: u64 = match arguments.first() {
        Some(text) => text
            .parse()
            .with_context(|| format!("SECONDS must be a whole number, not {text:?}"))?,
        None => 60,
    };
    let root = workspace_root();
    ensure_cargo_fuzz()?;
    for target in TARGETS {
        run_target(&root, target, seconds)?;
    }
    Ok(())
}

fn run_target(root: &Path, target: &str, seconds: u64) -> Result<()> {
    let corpus = root.join("fuzz").join("corpus").join(target);
    tools::run(
        tools::cargo()
            .args(["fuzz", "run", "--sanitizer", "none", target])
            .arg(&corpus)
            .args(["--", "-jobs=1", "-workers=1"])
            .arg(format!("-max_total_time={seconds}"))
            .env("RUSTC_BOOTSTRAP", "1")
            .current_dir(root.join("fuzz")),
    )
}

/// `cargo install cargo-fuzz` unless `cargo fuzz --version` answers already.
fn ensure_cargo_fuzz() -> Result<()> {
    let installed = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["fuzz", "--version"])
        .output()
        .map(|output| output.status.success())
        .unwrap_or(false);
    if installed {
        println!("cargo-fuzz: installed");
        return Ok(());
    }
    tools::run(tools::cargo().args(["install", "cargo-fuzz"]))
}
