//! `tidy`: the conventions the build keeps instead of memory. Every tracked source file opens
//! with a line saying what it is for; no source file outside tests runs past
//! [`MAX_LINES`] without a reason written at its top; and within each crate no top-level module
//! imports (through `crate::…`) one that imports it back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Longer than this, a file is usually doing two jobs; a longer one says why near its top.
pub const MAX_LINES: usize = 600;

/// The marker that excuses a long file, followed by the reason, within its first lines.
const LONG_FILE_MARKER: &str = "tidy: long file:";

/// What one check found wrong, as `path: problem`.
type Problems = Vec<String>;

pub fn run(root: &Path) -> Result<()> {
    let files = tracked_sources(root)?;
    let mut problems = Problems::new();
    for path in &files {
        let text =
            std::fs::read_to_string(root.join(path)).with_context(|| format!("reading {path}"))?;
        check_opening_line(path, &text, &mut problems);
        check_length(path, &text, &mut problems);
    }
    problems.extend(module_cycles(root, &files)?);
    if problems.is_empty() {
        println!("tidy: {} files checked", files.len());
        return Ok(());
    }
    for problem in &problems {
        eprintln!("tidy: {problem}");
    }
    bail!("{} tidy problem(s)", problems.len())
}

/// Rust and JavaScript sources under version control (the fuzz corpus and lock files aside).
fn tracked_sources(root: &Path) -> Result<Vec<String>> {
    let output = Command::new("git")
        .args([
            "ls-files", "*.rs", "*.js", "*.mjs", "*.cjs", "*.ts", "*.tsx",
        ])
        .current_dir(root)
        .output()
        .context("running git ls-files")?;
    if !output.status.success() {
        bail!("git ls-files failed");
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|path| !path.contains("node_modules/") && !path.contains("/corpus/"))
        .map(str::to_owned)
        .collect())
}

fn check_opening_line(path: &str, text: &str, problems: &mut Problems) {
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    let opens_with_purpose = if path.ends_with(".rs") {
        first.starts_with("//!") && first.trim_start_matches("//!").trim().len() > 3
    } else if first.trim() == "/**" || first.trim() == "/*" {
        // A block comment whose text starts on the next line.
        lines
            .next()
            .is_some_and(|second| second.trim_start_matches([' ', '*']).trim().len() > 3)
    } else {
        (first.starts_with("//") || first.starts_with("/*")) && first.len() > 6
    };
    if !opens_with_purpose {
        let expected = if path.ends_with(".rs") {
            "`//!`"
        } else {
            "`//` or `/*`"
        };
        problems.push(format!(
            "{path}: the first line must be a {expected} comment saying what the file is for"
        ));
    }
}

/// Test files (a `tests/` folder, `tests.rs`, a `.test.` script) may be long: one file per
/// boundary keeps its fixtures together.
fn is_test_file(path: &str) -> bool {
    path.split('/').any(|part| part == "tests")
        || path.ends_with("/tests.rs")
        || path.contains(".test.")
}

fn check_length(path: &str, text: &str, problems: &mut Problems) {
    let lines = text.lines().count();
    if lines <= MAX_LINES || is_test_file(path) {
        return;
    }
    let excused = text
        .lines()
        .take(20)
        .any(|line| line.contains(LONG_FILE_MARKER));
    if !excused {
        problems.push(format!(
            "{path}: {lines} lines (over {MAX_LINES}); split it, or say why near the top with \
             `{LONG_FILE_MARKER} <reason>`"
        ));
    }
}

/// Per crate (a folder holding `src/lib.rs` or `src/main.rs`), the graph of its top-level
/// modules by `crate::NAME` references, and any cycle in it. The crate root itself is wiring
/// and is left out.
fn module_cycles(root: &Path, files: &[String]) -> Result<Problems> {
    let mut graphs: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for path in files.iter().filter(|path| path.ends_with(".rs")) {
        let Some((crate_folder, module)) = top_level_module(path) else {
            continue;
        };
        let text = std::fs::read_to_string(root.join(path))?;
        let edges = graphs
            .entry(crate_folder)
            .or_default()
            .entry(module.clone())
            .or_default();
        for used in crate_references(&text) {
            if used != module {
                edges.insert(used);
            }
        }
    }
    let mut problems = Problems::new();
    for (crate_folder, graph) in &graphs {
        if let Some(cycle) = find_cycle(graph) {
            problems.push(format!(
                "{crate_folder}: modules import each other: {}",
                cycle.join(" -> ")
            ));
        }
    }
    Ok(problems)
}

/// `server/src/realtime/mod.rs` → (`server`, `realtime`); the crate roots give `None`.
fn top_level_module(path: &str) -> Option<(String, String)> {
    let (crate_folder, inside) = path.split_once("/src/")?;
    let first = inside.split('/').next()?;
    let module = first.strip_suffix(".rs").unwrap_or(first);
    // The crate roots are wiring; binaries under src/bin are crates of their own.
    if matches!(module, "lib" | "main" | "bin") {
        return None;
    }
    Some((crate_folder.to_owned(), module.to_owned()))
}

/// Every `NAME` in `crate::NAME` (in `use` lines and in paths), comments excluded.
fn crate_references(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + "crate::".len()..];
            if before.is_some_and(|character| character.is_alphanumeric() || character == '_') {
                continue;
            }
            let name: String = rest
                .chars()
                .take_while(|character| character.is_alphanumeric() || *character == '_')
                .collect();
            if !name.is_empty() {
                used.insert(name);
            }
            // `use crate::{a, b::c}` names several modules at once.
            if let Some(grouped) = rest.strip_prefix('{') {
                let group = grouped.split('}').next().unwrap_or_default();
                for item in group.split(',') {
                    let module = item.trim().split("::").next().unwrap_or_default();
                    if !module.is_empty() {
                        used.insert(module.to_owned());
                    }
                }
            }
        }
    }
    used
}

/// A cycle among the graph's modules, as the path that closes it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        module: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(module) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = path.iter().position(|step| step == module)?;
                let mut cycle = path[start..].to_vec();
                cycle.push(module.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(module.to_owned(), Mark::Visiting);
        path.push(module.to_owned());
        for next in graph.get(module).into_iter().flatten() {
            // Names that are not modules of this crate (macros, re-exported items) end here.
            if graph.contains_key(next) {
                if let Some(cycle) = visit(next, graph, marks, path) {
                    return Some(cycle);
                }
            }
        }
        path.pop();
        marks.insert(module.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for module in graph.keys() {
        if let Some(cycle) = visit(module, graph, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        edges
            .iter()
            .map(|(from, to)| {
                (
                    from.to_string(),
                    to.iter().map(|name| name.to_string()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn a_cycle_is_found_and_a_tree_is_not() {
        let cyclic = graph(&[
            ("state", &["timers"]),
            ("timers", &["state"]),
            ("node", &["state"]),
        ]);
        let cycle = find_cycle(&cyclic).unwrap();
        assert_eq!(cycle.first(), cycle.last());
        assert!(cycle.contains(&"timers".to_string()));
        let tree = graph(&[
            ("state", &["timers"]),
            ("timers", &["clock"]),
            ("clock", &[]),
        ]);
        assert_eq!(find_cycle(&tree), None);
    }

    #[test]
    fn crate_references_read_paths_groups_and_skip_comments() {
        let text = "use crate::{auth::Claims, clock};\nuse crate::state::AppState;\n\
                    // crate::ignored\nlet x = crate::timers::CloseAttempt::Settled;\n\
                    use livevote_crate::other;";
        let used = crate_references(text);
        let names: Vec<&str> = used.iter().map(String::as_str).collect();
        assert_eq!(names, ["auth", "clock", "state", "timers"]);
    }

    #[test]
    fn top_level_modules_come_from_the_first_folder_or_file_under_src() {
        assert_eq!(
            top_level_module("server/src/realtime/event_cache.rs"),
            Some(("server".into(), "realtime".into()))
        );
        assert_eq!(
            top_level_module("server/src/node.rs"),
            Some(("server".into(), "node".into()))
        );
        assert_eq!(top_level_module("server/src/lib.rs"), None);
        assert_eq!(top_level_module("server/tests/http_api.rs"), None);
    }
}
