//! cargo xtask demo (being built).

use anyhow::Result;

pub fn run(_arguments: &[String]) -> Result<()> {
    anyhow::bail!("cargo xtask demo is not built yet")
}
