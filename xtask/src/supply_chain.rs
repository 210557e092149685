//! The "supply chain" step: `cargo deny` over the dependency tree we build (bans, licences,
//! sources always; advisories against RustSec's database when it can be fetched, else against
//! the copy already on the machine, else skipped with the reason printed). The policy is
//! `deny.toml` at the root.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::tools::{self, output_of};

/// cargo-deny's version, pinned so a new release cannot change the verdict of an old commit.
const CARGO_DENY_VERSION: &str = "0.20.2";

pub fn ensure_cargo_deny() -> Result<()> {
    let installed = output_of("cargo-deny", &["--version"]).unwrap_or_default();
    if installed.split_whitespace().nth(1) == Some(CARGO_DENY_VERSION) {
        println!("cargo-deny {CARGO_DENY_VERSION}: installed");
        return Ok(());
    }
    tools::run(tools::cargo().args([
        "install",
        "cargo-deny",
        "--locked",
        "--version",
        &format!("={CARGO_DENY_VERSION}"),
    ]))
}

pub fn run(root: &Path) -> Result<()> {
    tools::run(
        tools::cargo()
            .args(["deny", "check", "bans", "licenses", "sources"])
            .current_dir(root),
    )?;
    advisories(root)
}

fn advisories(root: &Path) -> Result<()> {
    let fetched = Command::new("cargo")
        .args(["deny", "check", "advisories"])
        .current_dir(root)
        .output()
        .context("running cargo deny check advisories")?;
    let report = String::from_utf8_lossy(&fetched.stderr);
    if fetched.status.success() {
        println!("advisories ok (database as of {})", database_date());
        return Ok(());
    }
    // A finding names its advisory; anything else is the database that could not be had.
    if names_an_advisory(&report) {
        eprintln!("{report}");
        bail!("cargo deny found advisories");
    }
    // No network to RustSec: a database already on this machine still says something.
    let local = Command::new("cargo")
        .args(["deny", "--offline", "check", "advisories"])
        .current_dir(root)
        .output()
        .context("running cargo deny --offline check advisories")?;
    let local_report = String::from_utf8_lossy(&local.stderr);
    if local.status.success() {
        println!(
            "advisories ok against the database already on this machine, as of {} (RustSec \
             unreachable)",
            database_date()
        );
        return Ok(());
    }
    if names_an_advisory(&local_report) {
        eprintln!("{local_report}");
        bail!("cargo deny found advisories (local database)");
    }
    println!(
        "advisories skipped: RustSec's database cannot be fetched here and none is on this \
         machine ({})",
        first_error_line(&report)
    );
    Ok(())
}

/// cargo-deny reports a finding as a diagnostic (`error[vulnerability]`, `error[yanked]`…);
/// a database it could not fetch or open is a log line (`[ERROR]`) instead.
fn names_an_advisory(report: &str) -> bool {
    report.contains("RUSTSEC-") || report.contains("error[")
}

fn first_error_line(report: &str) -> &str {
    report
        .lines()
        .find(|line| line.contains("ERROR") || line.contains("fatal"))
        .unwrap_or("no error line")
        .trim()
}

/// The newest commit date among the advisory databases cargo-deny keeps under CARGO_HOME.
fn database_date() -> String {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")));
    let Some(databases) = cargo_home.map(|home| home.join("advisory-dbs")) else {
        return "an unknown date".into();
    };
    std::fs::read_dir(databases)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let folder = entry.path();
            let folder = folder.to_str()?;
            output_of("git", &["-C", folder, "log", "-1", "--format=%cs"])
                .map(|date| date.trim().to_owned())
        })
        .max()
        .unwrap_or_else(|| "an unknown date".into())
}
