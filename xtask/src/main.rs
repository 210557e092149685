//! livevote's build system: `cargo xtask test | demo | npm | bench | fuzz`. CI is a thin wrapper
//! around `cargo xtask test`.

mod bench;
mod bench_cluster;
mod cluster;
mod demo;
mod fuzz;
mod npm;
mod packaging;
mod supply_chain;
mod test;
mod tidy;
mod tools;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;

fn main() -> ExitCode {
    put_cargo_binaries_on_path();
    let mut arguments = std::env::args().skip(1);
    let command = arguments.next().unwrap_or_default();
    let rest: Vec<String> = arguments.collect();
    let outcome = match command.as_str() {
        "test" => test::run(&rest),
        "demo" => demo::run(&rest),
        "npm" => npm::run(&rest),
        "bench" if rest.iter().any(|argument| argument == "--cluster") => {
            let rest: Vec<String> = rest
                .into_iter()
                .filter(|argument| argument != "--cluster")
                .collect();
            bench_cluster::run(&rest)
        }
        "bench" => bench::run(&rest),
        "cluster" => cluster::run(&rest),
        "fuzz" => fuzz::run(&rest),
        _ => Err(anyhow!(
            "usage: cargo xtask <command>\n\n  test   install what is missing, then run every check and test (what CI runs)\n  demo   build the SDK and start the server with a live demo on SQLite\n  npm    build the `livevote` npm package into npm/dist\n  bench  run the short benchmark suite and write bench/RESULTS.md (--cluster: bench/RESULTS-cluster.md)\n  cluster  run several nodes on Postgres and Redis behind HAProxy (--check: its smoke test)\n  fuzz   run every fuzz target for SECONDS (default 60) each"
        )),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The chain of causes is the useful part; a backtrace of xtask itself is noise.
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo install` puts tools (the wasm-bindgen CLI) in `$CARGO_HOME/bin`; a machine whose PATH
/// lacks that folder (a fresh CARGO_HOME, a CI image) would install them and then not find them.
fn put_cargo_binaries_on_path() {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    let Some(binaries) = cargo_home.map(|home| home.join("bin")) else {
        return;
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut folders: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if !folders.contains(&binaries) {
        folders.insert(0, binaries);
        if let Ok(joined) = std::env::join_paths(folders) {
            // Set once at start-up, before any thread exists.
            std::env::set_var("PATH", joined);
        }
    }
}

/// The workspace root (the folder holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}
