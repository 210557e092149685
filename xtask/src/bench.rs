//! cargo xtask bench (being built).

use anyhow::Result;

pub fn run(_arguments: &[String]) -> Result<()> {
    anyhow::bail!("cargo xtask bench is not built yet")
}
