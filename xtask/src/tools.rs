//! Installing what the build and the tests need on a fresh machine (the wasm target, the pinned
//! wasm-bindgen CLI, Debian's Chromium, the root node_modules), and small helpers for running
//! commands. Every installer checks first and does nothing when the tool is already there, so
//! that a warm run costs a few milliseconds.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};

/// The `cargo` that runs xtask (cargo sets `CARGO` for the programs it runs), so that nested
/// builds use the same toolchain.
pub fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    Command::new(program)
}

/// Prints a command the way a person would type it, runs it with inherited output, and fails
/// with the command's name when it exits non-zero.
pub fn run(command: &mut Command) -> Result<()> {
    println!("$ {}", describe(command));
    let status = command
        .status()
        .with_context(|| format!("could not start `{}`", describe(command)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(command));
    }
    Ok(())
}

/// Runs a command quietly and returns its standard output, or `None` when it cannot start or
/// fails (used to ask a tool for its version).
pub fn output_of(program: impl AsRef<OsStr>, arguments: &[&str]) -> Option<String> {
    let output = Command::new(program)
        .args(arguments)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for argument in command.get_args() {
        text.push(' ');
        text.push_str(&argument.to_string_lossy());
    }
    text
}

/// `rustup target add wasm32-unknown-unknown` unless the target is installed already.
pub fn ensure_wasm_target() -> Result<()> {
    let installed = output_of("rustup", &["target", "list", "--installed"]).unwrap_or_default();
    if installed
        .lines()
        .any(|line| line.trim() == "wasm32-unknown-unknown")
    {
        println!("wasm32-unknown-unknown target: installed");
        return Ok(());
    }
    run(Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"]))
}

/// The exact wasm-bindgen version pinned in the root Cargo.toml (`wasm-bindgen = "=X"`): the
/// CLI must match the library byte for byte or the generated glue refuses to load.
pub fn pinned_wasm_bindgen_version(root: &Path) -> Result<String> {
    let manifest_path = root.join("Cargo.toml");
    let manifest = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    parse_wasm_bindgen_pin(&manifest).with_context(|| {
        format!(
            "{} has no `wasm-bindgen = \"=X.Y.Z\"` pin",
            manifest_path.display()
        )
    })
}

fn parse_wasm_bindgen_pin(manifest: &str) -> Option<String> {
    manifest.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        if key.trim() != "wasm-bindgen" {
            return None;
        }
        // Either `"=0.2.130"` or `{ version = "=0.2.130", ... }`.
        let start = value.find("\"=")? + 2;
        let length = value[start..].find('"')?;
        Some(value[start..start + length].to_owned())
    })
}

/// `cargo install wasm-bindgen-cli --version =X` unless `wasm-bindgen --version` already says X.
pub fn ensure_wasm_bindgen_cli(root: &Path) -> Result<()> {
    let version = pinned_wasm_bindgen_version(root)?;
    let installed = output_of("wasm-bindgen", &["--version"]).unwrap_or_default();
    if installed.split_whitespace().nth(1) == Some(version.as_str()) {
        println!("wasm-bindgen CLI {version}: installed");
        return Ok(());
    }
    run(cargo().args([
        "install",
        "wasm-bindgen-cli",
        "--version",
        &format!("={version}"),
    ]))
}

/// Debian's Chromium and ChromeDriver (the browser tests never download a browser of their own).
pub fn ensure_chromium() -> Result<()> {
    if Path::new("/usr/bin/chromium").exists() && Path::new("/usr/bin/chromedriver").exists() {
        println!("chromium and chromedriver: installed");
        return Ok(());
    }
    run(Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "chromium", "chromium-driver"])
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// `npm ci` at the root when node_modules is missing or older than package-lock.json.
pub fn ensure_node_modules(root: &Path) -> Result<()> {
    let lock = root.join("package-lock.json");
    let modules = root.join("node_modules");
    if !lock.exists() {
        println!("no package-lock.json yet: nothing to install with npm");
        return Ok(());
    }
    let fresh = match (modified(&modules), modified(&lock)) {
        (Some(modules_time), Some(lock_time)) => modules_time >= lock_time,
        _ => false,
    };
    if fresh {
        println!("node_modules: up to date with package-lock.json");
        return Ok(());
    }
    run(Command::new("npm")
        .arg("ci")
        .arg("--no-audit")
        .arg("--no-fund")
        .current_dir(root))?;
    // npm ci may keep the folder's own time; touch it so that the next run sees it as fresh.
    touch(&modules)
}

/// When a file or folder was last changed, or `None` when it does not exist.
pub fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path)
        .and_then(|metadata| metadata.modified())
        .ok()
}

fn touch(path: &Path) -> Result<()> {
    let folder =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    folder
        .set_modified(SystemTime::now())
        .with_context(|| format!("touching {}", path.display()))
}

/// The newest modification time of any file under `path`, skipping folders named in `skip`
/// (for "is the build older than its sources?").
pub fn newest_file_time(path: &Path, skip: &[&str]) -> Option<SystemTime> {
    let mut newest: Option<SystemTime> = None;
    visit_files(path, skip, &mut |_, time| {
        newest = Some(newest.map_or(time, |current| current.max(time)))
    });
    newest
}

/// The oldest modification time of any file under `path` (the moment a build output was
/// complete, at the latest).
pub fn oldest_file_time(path: &Path) -> Option<SystemTime> {
    let mut oldest: Option<SystemTime> = None;
    visit_files(path, &[], &mut |_, time| {
        oldest = Some(oldest.map_or(time, |current| current.min(time)))
    });
    oldest
}

fn visit_files(path: &Path, skip: &[&str], visit: &mut dyn FnMut(&Path, SystemTime)) {
    let Ok(metadata) = std::fs::metadata(path) else {
        return;
    };
    if metadata.is_file() {
        if let Ok(time) = metadata.modified() {
            visit(path, time);
        }
        return;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return;
    };
    for entry in entries.flatten() {
        let child: PathBuf = entry.path();
        let name = entry.file_name();
        if skip.iter().any(|skipped| name == OsStr::new(skipped)) {
            continue;
        }
        visit_files(&child, skip, visit);
    }
}

/// The target folder cargo builds into (`CARGO_TARGET_DIR` or `<root>/target`).
pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_wasm_bindgen_pin() {
        let manifest = "[workspace.dependencies]\nwasm-bindgen-futures = \"0.4\"\nwasm-bindgen = \"=0.2.130\"\n";
        assert_eq!(parse_wasm_bindgen_pin(manifest).as_deref(), Some("0.2.130"));
        let table = "wasm-bindgen = { version = \"=0.2.99\", default-features = false }\n";
        assert_eq!(parse_wasm_bindgen_pin(table).as_deref(), Some("0.2.99"));
        assert_eq!(parse_wasm_bindgen_pin("wasm-bindgen = \"0.2\"\n"), None);
    }
}
