//! Driving `ferry-load` from a client namespace, and reducing its samples.
use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use ferry_harness::{Cgroup, Netns};
use serde_json::Value;

use super::Opts;

/// Run `ferry-load args` inside the namespace at `client_ns`; its JSON.
/// It runs in the harness's own cgroup, outside every node's cgroup tree,
/// so no socket program of a node sees it.
pub fn load_json(client_ns: &Path, load: &Path, args: &[String]) -> Result<Value> {
    load_json_in(client_ns, None, load, args)
}

/// `load_json`, the process placed in `cgroup` (a pod's, below its node's
/// `--cgroup-root`) before it runs, when given: where a node's socket
/// programs act on it.
pub fn load_json_in(
    client_ns: &Path,
    cgroup: Option<&Cgroup>,
    load: &Path,
    args: &[String],
) -> Result<Value> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", client_ns.display()))
        .arg("--")
        .arg(load)
        .args(args);
    if let Some(cgroup) = cgroup {
        cgroup.enter_on_spawn(&mut cmd);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        bail!(
            "ferry-load {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `ferry-load MODE TARGET CLIENTS SECONDS` (crr, udp): `opts.clients`
/// concurrent clients for `opts.seconds`.
pub fn concurrent(
    client_ns: &Path,
    load: &Path,
    mode: &str,
    target: impl ToString,
    opts: &Opts,
) -> Result<Value> {
    concurrent_in(client_ns, None, load, mode, target, opts)
}

/// `concurrent`, in `cgroup` when given (`load_json_in`).
pub fn concurrent_in(
    client_ns: &Path,
    cgroup: Option<&Cgroup>,
    load: &Path,
    mode: &str,
    target: impl ToString,
    opts: &Opts,
) -> Result<Value> {
    load_json_in(
        client_ns,
        cgroup,
        load,
        &[
            mode.into(),
            target.to_string(),
            opts.clients.to_string(),
            opts.seconds.to_string(),
        ],
    )
}

/// A number from ferry-load's JSON; NaN if it is missing, so a broken
/// sample shows as NaN in the report rather than as zero.
pub fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

/// ferry-load's first connection error, if any connection failed.
pub fn first_error(v: &Value) -> Option<&str> {
    v["first_error"].as_str().filter(|e| !e.is_empty())
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// Half the range of `v` as a share of its median: how far rounds spread.
/// NaN for fewer than two values (nothing to spread).
pub fn spread(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return f64::NAN;
    }
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        });
    (hi - lo) / 2.0 / median(v.to_vec())
}

/// Wait until `target` answers from `client_ns` (rules and maps in place).
pub fn wait_reachable(client_ns: &Path, load: &Path, target: SocketAddr) -> Result<()> {
    wait_reachable_in(client_ns, None, load, target)
}

/// `wait_reachable`, in `cgroup` when given (`load_json_in`).
pub fn wait_reachable_in(
    client_ns: &Path,
    cgroup: Option<&Cgroup>,
    load: &Path,
    target: SocketAddr,
) -> Result<()> {
    let start = Instant::now();
    loop {
        let ok = load_json_in(
            client_ns,
            cgroup,
            load,
            &["rr".into(), target.to_string(), "0.05".into()],
        );
        if ok.is_ok() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!(
                "{target} never answered from {}: {ok:?}",
                client_ns.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Client sockets close first and land in TIME_WAIT; let connect reuse
/// them, and use the whole port range, so the rate measures the path
/// rather than port exhaustion.
pub fn tune_client(ns: &Netns) -> Result<()> {
    ns.exec(&["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"])?;
    ns.exec(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_half_the_range_against_the_median() {
        assert!((spread(&[9.0, 12.0, 10.0]) - 0.15).abs() < 1e-12);
        assert_eq!(spread(&[5.0, 5.0]), 0.0);
        assert!(spread(&[5.0]).is_nan());
        assert!(spread(&[]).is_nan());
    }
}
