//! `cargo xtask fuzz`: a long seeded fuzz of the kernel programs (the fuzz
//! tier's test with more frames), and on request the parsers' cargo-fuzz
//! targets under libFuzzer.
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

/// The cargo-fuzz targets in fuzz/fuzz_targets, with the directories
/// (from the repository root) whose files seed their corpus: valid inputs
/// get libFuzzer past the parsers' first bytes at once.
const TARGETS: [(&str, &[&str]); 2] = [
    ("manifest", &["agent/testdata", "examples"]),
    ("cni_conf", &["fuzz/seeds/cni_conf"]),
];

#[derive(clap::Args)]
pub struct Opts {
    /// Frames to send through the kernel programs (0: none).
    #[arg(long, default_value_t = 1_000_000)]
    frames: u64,
    /// The seed (decimal or 0x-hex); random if not given. The run prints
    /// it; the same seed gives the same frames.
    #[arg(long)]
    seed: Option<String>,
    /// Also run each cargo-fuzz target (fuzz/) for this many seconds,
    /// installing cargo-fuzz first if it is missing. Needs nightly.
    #[arg(long, value_name = "SECS")]
    targets_for: Option<u64>,
}

pub fn run(opts: &Opts) -> Result<()> {
    if opts.frames > 0 {
        kernel(opts)?;
    }
    if let Some(secs) = opts.targets_for {
        targets(secs)?;
    }
    Ok(())
}

fn kernel(opts: &Opts) -> Result<()> {
    crate::setup::run()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the fuzz loads BPF programs and needs root: run `sudo -E cargo xtask fuzz`");
    }
    let seed = match &opts.seed {
        Some(s) => s.clone(),
        None => format!("{:#x}", random_seed()),
    };
    eprintln!(
        "xtask: kernel fuzz, seed {seed}, {} frames (reproduce: cargo xtask fuzz --seed {seed} --frames {})",
        opts.frames, opts.frames
    );
    // Output shown as it comes (--nocapture), the tables whatever happens.
    let st = Command::new(env!("CARGO"))
        .args([
            "test",
            "--package",
            "ferry-tests",
            "--test",
            "kernel_fuzz",
            "--",
            "--nocapture",
        ])
        .env("FERRY_FUZZ_SEED", &seed)
        .env("FERRY_FUZZ_FRAMES", opts.frames.to_string())
        .status()
        .context("running cargo test")?;
    ensure!(st.success(), "the kernel fuzz failed (seed {seed})");
    Ok(())
}

fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// A cargo of the nightly toolchain (cargo-fuzz needs -Z flags), without
/// the outer cargo's settings for this build.
fn nightly_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly");
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn targets(secs: u64) -> Result<()> {
    let have = nightly_cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("xtask: installing cargo-fuzz");
        let st = Command::new("cargo")
            .args(["install", "--locked", "cargo-fuzz"])
            .env_remove("RUSTUP_TOOLCHAIN")
            .status()
            .context("cargo install cargo-fuzz")?;
        ensure!(st.success(), "cargo install cargo-fuzz failed");
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace");
    for (target, seeds) in TARGETS {
        eprintln!("xtask: cargo fuzz run {target} for {secs} s");
        // New inputs go to the first directory; the others only seed.
        let corpus = format!("fuzz/corpus/{target}");
        std::fs::create_dir_all(root.join(&corpus))?;
        let st = nightly_cargo()
            .current_dir(root)
            .args(["fuzz", "run", target, &corpus])
            .args(seeds)
            .arg("--")
            .arg(format!("-max_total_time={secs}"))
            // Inputs above 1 MiB are the hostile-YAML test's business.
            .arg("-max_len=65536")
            .status()
            .with_context(|| format!("cargo fuzz run {target}"))?;
        ensure!(
            st.success(),
            "fuzz target {target} failed: see fuzz/artifacts/{target}"
        );
    }
    Ok(())
}
