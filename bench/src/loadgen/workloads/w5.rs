//! w5 (being built).

use std::sync::Arc;

use crate::context::Bench;
use crate::report::Report;

#[derive(Debug, Clone, clap::Args)]
pub struct Options {}

pub async fn run(bench: &Arc<Bench>, _options: &Options, label: &str) -> anyhow::Result<Report> {
    bench.require_livevote("w5")?;
    Ok(Report::new("w5", label))
}
