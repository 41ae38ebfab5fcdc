//! `cargo xtask test`: every tier, in order of cost.
use std::process::Command;

use anyhow::{Context, Result, bail};

fn cargo(args: &[&str], extra: &[String]) -> Result<()> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(args);
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    eprintln!("xtask: cargo {}", args.join(" "));
    let st = cmd
        .status()
        .with_context(|| format!("running cargo {args:?}"))?;
    if !st.success() {
        bail!("cargo {} failed ({st})", args.join(" "));
    }
    Ok(())
}

pub fn run(extra: &[String]) -> Result<()> {
    crate::setup::run()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the kernel tests load BPF programs and need root: run `sudo -E cargo xtask test`");
    }
    // Tier 1: pure crates, no privileges needed.
    cargo(&["test", "--workspace", "--exclude", "ferry-tests"], extra)?;
    // Tier 2: the real programs in the kernel through BPF_PROG_TEST_RUN.
    cargo(&["test", "--package", "ferry-tests"], extra)?;
    Ok(())
}
