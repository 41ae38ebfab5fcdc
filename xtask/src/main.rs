//! `cargo xtask <command>`: everything a developer or CI runs.
mod demo;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "ferry developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (idempotent): nightly's
    /// rust-src, bpf-linker built against nightly's LLVM, Debian packages,
    /// the BPF filesystem.
    Setup,
    /// Run every test tier: unit tests, kernel tests (BPF_PROG_TEST_RUN).
    /// Needs root for the kernel tiers.
    /// One node, four pods, a ClusterIP from examples/demo.yaml served by
    /// ferry; shows requests landing on different backends. Ctrl-C tears
    /// it down.
    Demo {
        /// Leave it running after showing it (remove with `cargo xtask down`).
        #[arg(long)]
        keep: bool,
    },
    /// Remove what a kept demo or a killed test run left behind.
    Down,
    Test {
        /// Extra arguments for the test binaries (a name filter, --nocapture).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

/// Build the binaries the harness runs, into target/debug.
pub fn build_bins() -> anyhow::Result<()> {
    let st = std::process::Command::new(env!("CARGO"))
        .args(["build", "--bins", "--workspace", "--exclude", "xtask"])
        .status()?;
    anyhow::ensure!(st.success(), "cargo build --bins failed");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Test { args } => test::run(&args),
        Command::Demo { keep } => demo::run(keep),
        Command::Down => demo::down(),
    }
}
