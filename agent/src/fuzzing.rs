//! The bodies of the parsers' fuzz targets (`fuzz/`, run by cargo-fuzz),
//! kept in the library so that a plain test (`tests/parser_fuzz.rs`) runs
//! them over a seeded corpus without libFuzzer and they cannot rot.
//! Each takes any bytes; only a panic, a hang or a blow-up is a finding.
use std::{net::Ipv4Addr, path::PathBuf};

use crate::{
    cni,
    config::{CniConfig, Overlay, Uplink},
    plan::{self, PlanConfig},
    source::file::parse_manifest,
};

/// The node the manifest target plans for: named like the test manifests'
/// nodes, with an uplink, service CIDRs and the CNI conflist, so that
/// every part of the planner runs.
fn plan_config() -> PlanConfig {
    PlanConfig {
        nodeport_addresses: Some(vec![Ipv4Addr::new(192, 168, 77, 11)]),
        uplink: Some(Uplink {
            interface: "eth0".into(),
            overlay: Overlay::Native { xdp: None },
        }),
        cni: Some(CniConfig {
            conf_dir: PathBuf::from("/nonexistent/net.d"),
            data_dir: PathBuf::from("/nonexistent/networks"),
        }),
        service_cidrs: vec!["10.96.0.0/16".parse().expect("a CIDR")],
        ..PlanConfig::for_node("n1")
    }
}

/// The file source's manifest parser (`parse_manifest`), then the planner
/// on the objects it read.
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((objects, _problems)) = parse_manifest(text) {
        let _ = plan::plan(&objects, &plan_config());
    }
}

/// The CNI plugin's network configuration parser (`parse_conf`), and the
/// one command that reads nothing but stdin (VERSION).
pub fn cni_conf(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = cni::parse_conf(text);
    let version = cni::Env {
        command: "VERSION".into(),
        ..cni::Env::default()
    };
    let _ = cni::run(&version, text);
}
