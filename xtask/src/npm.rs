//! `cargo xtask npm`: builds the `livevote` npm package into npm/dist (release wasm with the
//! size profile, the pinned wasm-bindgen CLI, `wasm-opt -Oz` from the npm `binaryen` package,
//! then the JavaScript entries bundled by npm/build.mjs) and prints the sizes a page pays.
//! Also [`test_sdk`], every SDK test, for `cargo xtask test`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::workspace_root;

/// Features the optimised wasm may use: what the Rust target emits and Chromium 103 (OBS 30's
/// browser) and Node 20 run. wasm-opt refuses a module that needs anything else.
const WASM_FEATURES: &[&str] = &[
    "--enable-bulk-memory",
    "--enable-bulk-memory-opt",
    "--enable-call-indirect-overlong",
    "--enable-sign-ext",
    "--enable-mutable-globals",
    "--enable-nontrapping-float-to-int",
    "--enable-reference-types",
    "--enable-multivalue",
];

/// wasm-opt's passes: `-Oz` until nothing changes, assuming (as Rust's wasm32 layout
/// guarantees: the stack sits below the data at 1 MiB, the heap above) that the lowest 1 KiB of
/// memory is unused, which lets it fold more address arithmetic into loads and stores.
const WASM_OPT_PASSES: &[&str] = &["-Oz", "--converge", "--low-memory-unused"];

/// The default entry's budget: wasm and JavaScript together, gzipped (issue 12: ≤ 30 KB; the
/// same limit `npm/build.mjs` enforces).
const BUDGET_GZIP_BYTES: u64 = 30 * 1024;

/// `cargo xtask npm` builds the package; `cargo xtask npm test` builds it, then runs
/// [`test_sdk`].
pub fn run(arguments: &[String]) -> Result<()> {
    match arguments {
        [] => build(),
        [test] if test == "test" => {
            build()?;
            test_sdk()
        }
        _ => bail!("usage: cargo xtask npm [test]"),
    }
}

fn build() -> Result<()> {
    let root = workspace_root();
    ensure_node_modules(&root)?;
    let target_dir = target_dir(&root);

    println!("xtask npm: building livevote-sdk (wasm-release)");
    run_command(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&root)
            .args([
                "build",
                "-p",
                "livevote-sdk",
                "--lib",
                "--profile",
                "wasm-release",
                "--target",
                "wasm32-unknown-unknown",
            ]),
    )?;
    let compiled = target_dir.join("wasm32-unknown-unknown/wasm-release/livevote_sdk.wasm");

    let pinned = pinned_wasm_bindgen_version(&root)?;
    let version = output_of(Command::new("wasm-bindgen").arg("--version"))
        .context("the wasm-bindgen CLI is missing: cargo install wasm-bindgen-cli --version {pinned} --locked")?;
    if !version.split_whitespace().any(|word| word == pinned) {
        bail!(
            "wasm-bindgen CLI is `{}`, the workspace pins {pinned}",
            version.trim()
        );
    }
    let bindgen = target_dir.join("npm-build");
    if bindgen.exists() {
        std::fs::remove_dir_all(&bindgen)
            .with_context(|| format!("removing {}", bindgen.display()))?;
    }
    println!("xtask npm: wasm-bindgen {pinned}");
    run_command(
        Command::new("wasm-bindgen")
            .arg(&compiled)
            .arg("--out-dir")
            .arg(&bindgen)
            .args([
                "--out-name",
                "livevote_sdk",
                "--target",
                "web",
                "--no-typescript",
                // The entries say where the wasm comes from (inlined bytes, or a URL next to url.js).
                "--omit-default-module-path",
                // TextEncoder.encodeInto exists in every browser and Node the package supports.
                "--encode-into",
                "always",
            ]),
    )?;

    let wasm = bindgen.join("livevote_sdk_bg.wasm");
    let unoptimised_bytes = file_size(&wasm)?;
    let wasm_opt = root.join("node_modules/.bin/wasm-opt");
    println!("xtask npm: wasm-opt -Oz");
    run_command(
        Command::new(&wasm_opt)
            .arg(&wasm)
            .arg("-o")
            .arg(&wasm)
            .args(WASM_OPT_PASSES)
            .args([
                "--strip-debug",
                "--strip-producers",
                "--strip-target-features",
            ])
            .args(WASM_FEATURES),
    )?;
    // wasm-bindgen names every import `__wbg_<name>_<16 hex digits>` from module
    // `./livevote_sdk_bg.js`, and the glue spells each one out again: one- and two-letter names
    // instead save about 1 KB gzipped. wasm-opt prints the renaming; npm/build.mjs applies it to
    // the glue.
    println!("xtask npm: wasm-opt --minify-imports-and-exports-and-modules");
    let renaming = output_of(
        Command::new(&wasm_opt)
            .arg(&wasm)
            .arg("-o")
            .arg(&wasm)
            .arg("--minify-imports-and-exports-and-modules")
            .args(WASM_FEATURES),
    )?;
    std::fs::write(bindgen.join("minified-names.json"), renaming)
        .context("writing minified-names.json")?;

    println!("xtask npm: bundling the JavaScript entries");
    let dist = root.join("npm/dist");
    run_command(
        Command::new("node")
            .current_dir(&root)
            .arg("npm/build.mjs")
            .arg(&bindgen)
            .arg(&dist),
    )?;

    let wasm_size = Size::of(&dist.join("livevote_sdk_bg.wasm"))?;
    let glue_size = Size::of(&dist.join("url.js"))?;
    let default_size = Size::of(&dist.join("index.js"))?;
    let global_size = Size::of(&dist.join("livevote.global.js"))?;
    println!();
    println!("livevote npm package sizes (bytes; gzip -9):");
    println!("  wasm before wasm-opt          {unoptimised_bytes:>8} raw");
    println!("  wasm (livevote_sdk_bg.wasm)   {wasm_size}");
    println!("  JS glue + API (url.js)        {glue_size}");
    println!(
        "  wasm + JS glue                {:>8} raw {:>8} gzip",
        wasm_size.raw + glue_size.raw,
        wasm_size.gzip + glue_size.gzip
    );
    println!("  default entry (index.js, wasm inlined as base64)  {default_size}");
    println!("  classic script (livevote.global.js)               {global_size}");
    let kibibytes = default_size.gzip as f64 / 1024.0;
    if default_size.gzip > BUDGET_GZIP_BYTES {
        anyhow::bail!(
            "the default entry is {kibibytes:.1} KiB gzipped, over its {} KiB budget",
            BUDGET_GZIP_BYTES / 1024
        );
    }
    println!(
        "  default entry: {kibibytes:.1} KiB gzipped, within the {} KiB budget",
        BUDGET_GZIP_BYTES / 1024
    );
    Ok(())
}

/// Every SDK test: the wasm merge tests in headless Chromium, the packaging tests (Vite
/// project, plain pages, `tsc --strict` on a consumer file) and the end-to-end tests against
/// the real server. Expects `cargo xtask npm` to have run and Chromium and chromedriver to be
/// installed.
pub fn test_sdk() -> Result<()> {
    let root = workspace_root();
    ensure_node_modules(&root)?;
    if !root.join("npm/dist/index.js").exists() {
        bail!("npm/dist is missing: run `cargo xtask npm` first");
    }
    println!("xtask test-sdk: livevote-sdk unit tests (native)");
    run_command(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&root)
            .args(["test", "-p", "livevote-sdk"]),
    )?;
    println!("xtask test-sdk: wasm-bindgen tests in headless Chromium");
    run_command(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root.join("sdk-wasm"))
            .args([
                "test",
                "-p",
                "livevote-sdk",
                "--target",
                "wasm32-unknown-unknown",
                "--tests",
            ])
            .env(
                "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER",
                "wasm-bindgen-test-runner",
            )
            .env(
                "CHROMEDRIVER",
                std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into()),
            )
            .env("WASM_BINDGEN_TEST_TIMEOUT", "180")
            .env_remove("GECKODRIVER")
            .env_remove("SAFARIDRIVER"),
    )?;
    println!("xtask test-sdk: packaging and end-to-end tests");
    let mut files = Vec::new();
    for folder in ["tests/packaging", "tests/e2e"] {
        for entry in
            std::fs::read_dir(root.join(folder)).with_context(|| format!("reading {folder}"))?
        {
            let name = entry?.file_name().to_string_lossy().into_owned();
            // Only test files: sdk-harness.mjs and other helpers hold no tests.
            let wanted =
                name.ends_with(".test.mjs") && (folder != "tests/e2e" || name.starts_with("sdk"));
            if wanted {
                files.push(format!("{folder}/{name}"));
            }
        }
    }
    files.sort();
    // One file at a time: each starts Chromium, some a server, and the machine is small.
    run_command(
        Command::new("node")
            .current_dir(&root)
            .args(["--test", "--test-concurrency=1"])
            .args(&files),
    )
}

/// Installs the JavaScript tooling (`npm ci`) when node_modules lacks it.
fn ensure_node_modules(root: &Path) -> Result<()> {
    let wanted = [
        "node_modules/.bin/wasm-opt",
        "node_modules/.bin/vite",
        "node_modules/playwright-core",
        "node_modules/.bin/tsc",
    ];
    if wanted.iter().all(|path| root.join(path).exists()) {
        return Ok(());
    }
    println!("xtask: npm ci (JavaScript tooling)");
    run_command(
        Command::new("npm")
            .current_dir(root)
            .args(["ci", "--no-audit", "--no-fund"]),
    )
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// The version in the root Cargo.toml's `wasm-bindgen = "=X.Y.Z"`.
fn pinned_wasm_bindgen_version(root: &Path) -> Result<String> {
    let manifest =
        std::fs::read_to_string(root.join("Cargo.toml")).context("reading Cargo.toml")?;
    manifest
        .lines()
        .find_map(|line| line.trim().strip_prefix("wasm-bindgen = \"="))
        .and_then(|rest| rest.split('"').next())
        .map(str::to_owned)
        .context("Cargo.toml does not pin wasm-bindgen = \"=X.Y.Z\"")
}

fn run_command(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

fn output_of(command: &mut Command) -> Result<String> {
    let output = command
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn file_size(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len())
}

/// A file's size as shipped and as gzip -9 sends it.
struct Size {
    raw: u64,
    gzip: u64,
}

impl Size {
    fn of(path: &Path) -> Result<Size> {
        let output = Command::new("gzip")
            .args(["-9", "-c"])
            .arg(path)
            .stderr(Stdio::inherit())
            .output()
            .context("running gzip")?;
        if !output.status.success() {
            bail!("gzip {} failed", path.display());
        }
        Ok(Size {
            raw: file_size(path)?,
            gzip: output.stdout.len() as u64,
        })
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{:>8} raw {:>8} gzip", self.raw, self.gzip)
    }
}
