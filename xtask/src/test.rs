//! `cargo xtask test`: every tier, in order of cost, then one summary line.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    /// Add a libtest closing line: "test result: ok. 6 passed; 0 failed; ...".
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let n: u64 = n.parse().unwrap_or(0);
            match kind {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                _ => {}
            }
        }
    }
}

/// Run `cargo test <args>`, echoing its output and tallying its results.
fn cargo_test(args: &[&str], extra: &[String], tally: &mut Tally) -> Result<()> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.arg("test").args(args).stdout(Stdio::piped());
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    eprintln!("xtask: cargo test {}", args.join(" "));
    let mut child = cmd.spawn().context("running cargo test")?;
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        tally.add_line(&line);
    }
    let st = child.wait()?;
    if !st.success() {
        println!(
            "summary: {} passed, {} failed",
            tally.passed,
            tally.failed.max(1)
        );
        bail!("cargo test {} failed ({st})", args.join(" "));
    }
    Ok(())
}

pub fn run(extra: &[String]) -> Result<()> {
    crate::setup::run()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the kernel tests load BPF programs and need root: run `sudo -E cargo xtask test`");
    }
    let mut tally = Tally::default();
    // Tier 1: pure crates, no privileges needed.
    cargo_test(
        &["--workspace", "--exclude", "ferry-tests", "--tests"],
        extra,
        &mut tally,
    )?;
    // Tiers 2 and 3: the real programs in the kernel through
    // BPF_PROG_TEST_RUN, then end to end through the harness, which runs
    // the built binaries (ferry-agent, ferry-cni, ferry-echo).
    crate::build_bins(false)?;
    cargo_test(&["--package", "ferry-tests", "--tests"], extra, &mut tally)?;
    println!("summary: {} passed, {} failed", tally.passed, tally.failed);
    if tally.passed == 0 {
        bail!("no test ran: check the filter");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_libtest_closing_lines() {
        let mut t = Tally::default();
        t.add_line("test result: ok. 6 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.87s");
        t.add_line(
            "test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        t.add_line("running 3 tests");
        assert_eq!((t.passed, t.failed), (7, 2));
    }
}
