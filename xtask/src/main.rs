//! `cargo xtask <command>`: everything a developer or CI runs.
mod bench;
mod demo;
mod fuzz;
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
    /// One node, four pods, a ClusterIP from examples/demo.yaml served by
    /// ferry; shows requests landing on different backends. Ctrl-C tears
    /// it down.
    Demo {
        /// Leave it running after showing it (remove with `cargo xtask down`).
        #[arg(long)]
        keep: bool,
        /// Three nodes on a fabric instead: a NodePort served from every
        /// node (examples/demo-nodes.yaml), asked from outside the cluster.
        #[arg(long)]
        nodes: bool,
    },
    /// Remove what a kept demo or a killed test run left behind.
    Down,
    /// Connection rate and latency: ferry against the direct pod-IP path
    /// and kube-proxy-shaped iptables and nftables rule sets, as ratios;
    /// the agent's full-sync time. Needs root.
    Bench(bench::Opts),
    /// Run every test tier: unit tests, kernel tests (BPF_PROG_TEST_RUN),
    /// end-to-end tests through veth. Needs root for the kernel tiers.
    Test {
        /// Extra arguments for the test binaries (a name filter, --nocapture).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// A long seeded fuzz of the kernel programs through BPF_PROG_TEST_RUN
    /// (the fuzz tier, longer), and with --targets-for the parsers'
    /// cargo-fuzz targets. Needs root for the kernel part.
    Fuzz(fuzz::Opts),
}

/// Build the binaries the harness runs, into target/debug or, for
/// benchmarks, target/release.
pub fn build_bins(release: bool) -> anyhow::Result<()> {
    let mut cmd = std::process::Command::new(env!("CARGO"));
    cmd.args(["build", "--bins", "--workspace", "--exclude", "xtask"]);
    if release {
        cmd.arg("--release");
    }
    let st = cmd.status()?;
    anyhow::ensure!(st.success(), "cargo build --bins failed");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Test { args } => test::run(&args),
        Command::Demo { keep, nodes } => demo::run(keep, nodes),
        Command::Down => demo::down(),
        Command::Bench(opts) => bench::run(&opts),
        Command::Fuzz(opts) => fuzz::run(&opts),
    }
}
