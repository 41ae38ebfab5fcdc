//! Builds the kernel programs (dataplane-ebpf) with nightly for
//! bpfel-unknown-none, with BTF, and hands the object to the agent, which
//! embeds it. Set FERRY_EBPF_OBJECT to use a prebuilt object instead.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap();
    let ebpf_dir = root.join("dataplane-ebpf");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let object = out_dir.join("ferry-dataplane.o");

    println!("cargo:rerun-if-env-changed=FERRY_EBPF_OBJECT");
    if let Some(prebuilt) = env::var_os("FERRY_EBPF_OBJECT") {
        println!("cargo:rerun-if-changed={}", Path::new(&prebuilt).display());
        std::fs::copy(&prebuilt, &object).expect("copy FERRY_EBPF_OBJECT");
    } else {
        for p in ["src", "Cargo.toml", "Cargo.lock"] {
            println!("cargo:rerun-if-changed={}", ebpf_dir.join(p).display());
        }
        println!(
            "cargo:rerun-if-changed={}",
            root.join("common/src").display()
        );
        build_ebpf(root, &ebpf_dir, &object);
    }
    println!("cargo:rustc-env=FERRY_EBPF_OBJECT={}", object.display());
}

fn build_ebpf(root: &Path, ebpf_dir: &Path, object: &Path) {
    let target_dir = root.join("target").join("bpf");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(ebpf_dir)
        .args(["+nightly", "build", "--release", "-Z", "build-std=core"])
        .args(["--target", "bpfel-unknown-none"])
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer cargo's settings are for the host build, not this one; and
    // rustup's RUSTUP_TOOLCHAIN would pin the inner cargo to stable.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_MAKEFLAGS",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    // BTF for the maps and programs, so bpftool prints named fields.
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        ["-C", "debuginfo=2", "-C", "link-arg=--btf"].join("\x1f"),
    );
    let status = cmd.status().unwrap_or_else(|e| {
        panic!(
            "cannot run cargo +nightly to build the kernel programs ({e}); run `cargo xtask setup`"
        )
    });
    if !status.success() {
        panic!(
            "building dataplane-ebpf failed ({status}); if nightly, rust-src or bpf-linker is missing, run `cargo xtask setup`"
        );
    }
    let built = target_dir.join("bpfel-unknown-none/release/ferry-dataplane");
    std::fs::copy(&built, object)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", built.display(), object.display()));
}
