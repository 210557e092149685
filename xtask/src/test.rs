//! `cargo xtask test`: what CI runs and what a developer runs before pushing. It installs what
//! a fresh machine is missing, then runs every check and test in order, prints each step's
//! duration, stops at the first failure and ends with a summary.
//!
//! `cargo xtask test WORD...` runs only the steps whose name contains one of the words (the
//! installs always run), e.g. `cargo xtask test e2e`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{npm, tools, workspace_root};

/// What a step does, given the workspace root.
type Action = Box<dyn Fn(&Path) -> Result<()>>;

/// One named check; steps run in the order they are listed.
struct Step {
    name: &'static str,
    action: Action,
}

fn step(name: &'static str, action: impl Fn(&Path) -> Result<()> + 'static) -> Step {
    Step {
        name,
        action: Box::new(action),
    }
}

fn cargo_step(name: &'static str, arguments: &'static [&'static str]) -> Step {
    step(name, move |root| {
        tools::run(tools::cargo().args(arguments).current_dir(root))
    })
}

fn steps() -> Vec<Step> {
    vec![
        step("install: wasm32 target", |_| tools::ensure_wasm_target()),
        step("install: wasm-bindgen CLI", tools::ensure_wasm_bindgen_cli),
        step("install: chromium", |_| tools::ensure_chromium()),
        step("install: node_modules", tools::ensure_node_modules),
        step("install: cargo-deny", |_| {
            crate::supply_chain::ensure_cargo_deny()
        }),
        step("install: haproxy", |_| crate::cluster::ensure_haproxy()),
        cargo_step("fmt", &["fmt", "--all", "--", "--check"]),
        step("tidy", crate::tidy::run),
        step("supply chain", crate::supply_chain::run),
        cargo_step(
            "clippy",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ),
        cargo_step(
            "clippy sdk (wasm32)",
            &[
                "clippy",
                "-p",
                "livevote-sdk",
                "--target",
                "wasm32-unknown-unknown",
                "--",
                "-D",
                "warnings",
            ],
        ),
        // Broken intra-doc links and malformed docs fail the build, not a later reader.
        step("docs", |root| {
            tools::run(
                tools::cargo()
                    .args(["doc", "--no-deps", "--workspace"])
                    .env("RUSTDOCFLAGS", "-D warnings")
                    .current_dir(root),
            )
        }),
        // The default members: every native crate but the SDK, whose native tests (merge,
        // backoff, clock, channels against the fixtures) run with its Chromium tests in the
        // "sdk tests" step.
        cargo_step("cargo test", &["test"]),
        // Three real nodes behind HAProxy, one stopped and one killed under it (skips, saying
        // why, without PostgreSQL or Redis).
        step("cluster check", |_| {
            crate::cluster::run(&["--check".to_owned()])
        }),
        cargo_step(
            "protocol (wasm32)",
            &[
                "check",
                "--target",
                "wasm32-unknown-unknown",
                "-p",
                "livevote-protocol",
            ],
        ),
        // Every fuzz target over its committed corpus (fuzz/ is its own workspace): stable Rust,
        // no cargo-fuzz, no libFuzzer. A target folder of its own: fuzz/ has its own lock file,
        // and sharing the workspace's folder let one build overwrite the other's rlibs of the
        // same crates (same names and hashes, other dependency versions), which rustc then
        // reported as two versions of livevote_protocol in one graph.
        step("fuzz corpus replay", |root| {
            let target = tools::target_dir(root).join("fuzz-replay");
            tools::run(
                tools::cargo()
                    .args(["test", "--no-default-features", "--target-dir"])
                    .arg(&target)
                    .current_dir(root.join("fuzz")),
            )
        }),
        step("npm package build", |_| npm::run(&[])),
        step("sdk tests", |_| npm::test_sdk()),
        step("packaging consumers", crate::packaging::run),
        step("examples e2e", examples_end_to_end),
    ]
}

/// The examples' browser tests: the overlay and the viewer page against a real demo server.
fn examples_end_to_end(root: &Path) -> Result<()> {
    // The pages import npm/dist; when this step runs alone (`cargo xtask test examples`) the
    // package may not have been built yet.
    if crate::demo::package_needs_build(root) {
        npm::run(&[])?;
    }
    // The tests start the server and the worker example themselves; build them first so that
    // they never time out waiting for a compile.
    tools::run(
        tools::cargo()
            .args([
                "build",
                "-p",
                "livevote-server",
                "-p",
                "livevote-worker-example",
            ])
            .current_dir(root),
    )?;
    let binaries = tools::target_dir(root).join("debug");
    let files = example_test_files(root)?;
    // Node 20's test runner takes no glob, so the files are listed here.
    let mut command = Command::new("node");
    command
        .arg("--test")
        .args(&files)
        .current_dir(root)
        .env("LIVEVOTE_SERVER_BIN", binaries.join("livevote-server"))
        .env(
            "LIVEVOTE_WORKER_BIN",
            binaries.join("livevote-worker-example"),
        );
    tools::run(&mut command)
}

fn example_test_files(root: &Path) -> Result<Vec<PathBuf>> {
    let folder = root.join("tests").join("e2e");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
        .with_context(|| format!("reading {}", folder.display()))?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path
                .file_name()
                .and_then(|name| name.to_str())
                .unwrap_or_default();
            name.starts_with("examples") && name.ends_with(".mjs")
        })
        .map(|path| {
            path.strip_prefix(root)
                .map(Path::to_path_buf)
                .unwrap_or(path)
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no tests/e2e/examples*.mjs files found");
    }
    Ok(files)
}

pub fn run(arguments: &[String]) -> Result<()> {
    let root = workspace_root();
    let filters: Vec<&str> = arguments.iter().map(String::as_str).collect();
    let selected: Vec<Step> = steps()
        .into_iter()
        .filter(|step| {
            step.name.starts_with("install:")
                || filters.is_empty()
                || filters.iter().any(|word| step.name.contains(word))
        })
        .collect();

    let started = Instant::now();
    let mut finished: Vec<(&'static str, Duration, bool)> = Vec::new();
    let mut failure = None;
    for step in &selected {
        println!("\n==> {}", step.name);
        let step_started = Instant::now();
        let outcome = (step.action)(&root);
        let elapsed = step_started.elapsed();
        println!(
            "<== {} ({}) in {}",
            step.name,
            if outcome.is_ok() { "ok" } else { "FAILED" },
            format_duration(elapsed)
        );
        finished.push((step.name, elapsed, outcome.is_ok()));
        if let Err(error) = outcome {
            failure = Some(error.context(format!("step `{}` failed", step.name)));
            break;
        }
    }

    println!("\nsummary");
    for (name, elapsed, ok) in &finished {
        println!(
            "  {:<28} {:>9}  {}",
            name,
            format_duration(*elapsed),
            if *ok { "ok" } else { "FAILED" }
        );
    }
    for step in selected.iter().skip(finished.len()) {
        println!("  {:<28} {:>9}  not run", step.name, "-");
    }
    println!(
        "  {:<28} {:>9}",
        "total",
        format_duration(started.elapsed())
    );
    let passed = finished.iter().filter(|(_, _, ok)| *ok).count();
    let failed = finished.len() - passed;
    println!("steps: {passed} passed, {failed} failed");
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs_f64();
    if seconds < 60.0 {
        format!("{seconds:.1}s")
    } else {
        format!(
            "{}m{:02}s",
            duration.as_secs() / 60,
            duration.as_secs() % 60
        )
    }
}
