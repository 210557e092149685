//! cargo xtask test (being built).

use anyhow::Result;

pub fn run(_arguments: &[String]) -> Result<()> {
    anyhow::bail!("cargo xtask test is not built yet")
}
