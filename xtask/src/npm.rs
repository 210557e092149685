//! cargo xtask npm (being built).

use anyhow::Result;

pub fn run(_arguments: &[String]) -> Result<()> {
    anyhow::bail!("cargo xtask npm is not built yet")
}
