//! The two outputs of a workload run: a Markdown section for people (stdout, pasted into
//! bench/RESULTS.md) and `key value` lines for programs (`--summary FILE`, read by
//! `cargo xtask bench` to compute ratios between livevote and the reference).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

#[derive(Debug, Default)]
pub struct Report {
    title: String,
    rows: Vec<(String, String)>,
    notes: Vec<String>,
    summary: Vec<(String, String)>,
    summary_prefix: String,
}

impl Report {
    pub fn new(title: impl Into<String>, summary_prefix: impl Into<String>) -> Self {
        Report {
            title: title.into(),
            summary_prefix: summary_prefix.into(),
            ..Report::default()
        }
    }

    /// A row of the table.
    pub fn row(&mut self, metric: impl Into<String>, value: impl Into<String>) {
        self.rows.push((metric.into(), value.into()));
    }

    /// A number for programs: `PREFIX.key value`.
    pub fn key(&mut self, key: &str, value: impl ToString) {
        self.summary
            .push((format!("{}.{key}", self.summary_prefix), value.to_string()));
    }

    /// A row and a summary key at once.
    pub fn metric(&mut self, metric: impl Into<String>, key: &str, value: f64, decimals: usize) {
        self.row(metric, format!("{value:.decimals$}"));
        self.key(key, format!("{value:.decimals$}"));
    }

    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        eprintln!("note: {note}");
        self.notes.push(note);
    }

    pub fn markdown(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "### {}\n", self.title);
        let arguments: Vec<String> = std::env::args()
            .map(|argument| shell_quote(&argument))
            .collect();
        let _ = writeln!(text, "Command: `{}`\n", arguments.join(" "));
        let _ = writeln!(text, "| metric | value |\n| --- | --- |");
        for (metric, value) in &self.rows {
            let _ = writeln!(text, "| {metric} | {value} |");
        }
        if !self.notes.is_empty() {
            text.push('\n');
            for note in &self.notes {
                let _ = writeln!(text, "- {note}");
            }
        }
        text
    }

    /// Prints the Markdown and appends the summary keys to `summary_file`, if any.
    pub fn finish(&self, summary_file: Option<&PathBuf>) -> anyhow::Result<()> {
        println!("{}", self.markdown());
        if let Some(path) = summary_file {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            for (key, value) in &self.summary {
                writeln!(file, "{key} {value}")?;
            }
        }
        Ok(())
    }
}

fn shell_quote(argument: &str) -> String {
    if !argument.is_empty()
        && argument
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || "-_./:=@,+".contains(character))
    {
        argument.to_owned()
    } else {
        format!("'{}'", argument.replace('\'', r"'\''"))
    }
}
