//! The consumer-project packaging tests (`tests/packaging/consumers/`): installs their
//! packages (Next.js, webpack, React 18 and 19, Vue, Svelte, Jest, ws) with `npm ci` from their
//! lockfiles, builds the npm package if it is out of date, and runs every test file there.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};

use crate::{npm, tools};

/// Folders under tests/packaging/consumers with a package.json and a package-lock.json.
const INSTALLS: &[&str] = &[
    "tests/packaging/consumers",
    "tests/packaging/consumers/react18",
];

pub fn run(root: &Path) -> Result<()> {
    if crate::demo::package_needs_build(root) {
        npm::run(&[])?;
    }
    for folder in INSTALLS {
        tools::run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(root.join(folder)),
        )?;
    }
    let folder = root.join("tests/packaging/consumers");
    let mut files: Vec<String> = std::fs::read_dir(&folder)?
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.ends_with(".test.mjs"))
        .map(|name| format!("tests/packaging/consumers/{name}"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no tests/packaging/consumers/*.test.mjs files found");
    }
    // One file at a time: each starts Chromium or a bundler, and the machine is small.
    tools::run(
        Command::new("node")
            .args(["--test", "--test-concurrency=1"])
            .args(&files)
            .current_dir(root),
    )
}
