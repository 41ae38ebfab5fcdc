//! ferry-cni: the CNI 1.0 plugin that wires a pod into ferry's dataplane.
//!
//! ADD creates a veth pair (pod side `CNI_IFNAME` in the pod's namespace,
//! host side `fry<hash>` in the node's), gives the pod an address from the
//! node's pod CIDR with a /32 and a default route through a link-local
//! gateway (169.254.1.1, answered by a permanent neighbour entry, so no ARP
//! and no host address are needed), routes the address to the host veth,
//! attaches ferry's from-pod program to the host veth's tc ingress (a tcx
//! link pinned under the pin directory) and records the endpoint in the
//! pinned `ferry_endpoints` map, and records where the pod's network
//! namespace is for the agent (`podns`). DEL undoes all of it and is
//! idempotent.
pub mod ipam;
pub mod podns;

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    net::{Ipv4Net, format_mac},
    rtnl::{self, NextHop, RtnlError},
};

/// The network name of the conflist the agent writes (and so the
/// directory of the IPAM store and the pod namespace records).
pub const NETWORK_NAME: &str = "ferry";

/// CNI versions whose configuration and result this plugin speaks.
pub const SUPPORTED_VERSIONS: [&str; 2] = ["1.0.0", "1.1.0"];
/// The pod's default gateway: link-local, never on the wire.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// CNI error codes (spec section "Error").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    /// Plugin-specific: the address pool is exhausted.
    pub const POOL_EXHAUSTED: u32 = 100;
    /// Plugin-specific: ferry's dataplane (pinned maps/program) is missing.
    pub const DATAPLANE_MISSING: u32 = 101;
}

/// An error as the CNI spec wants it on stdout.
#[derive(Debug, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

impl From<RtnlError> for CniError {
    fn from(e: RtnlError) -> Self {
        CniError::new(
            code::IO_FAILURE,
            "configuring the pod network failed",
            e.to_string(),
        )
    }
}

/// ferry's plugin configuration, as the runtime hands it over (the
/// conflist's plugin entry with `name` and `cniVersion` added).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// Directory of ferry's pinned maps and program.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    pub ipam: IpamConf,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub prev_result: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamConf {
    /// The node's pod CIDR.
    pub subnet: String,
    /// Where allocations are kept.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from(crate::DEFAULT_PIN_DIR)
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/cni/networks")
}

/// The CNI_* environment of one invocation.
#[derive(Debug, Default, Clone)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
}

impl Env {
    pub fn from_vars(vars: &HashMap<String, String>) -> Self {
        let get = |k: &str| vars.get(k).cloned().unwrap_or_default();
        Self {
            command: get("CNI_COMMAND"),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
        }
    }

    fn require(&self, needs_netns: bool) -> Result<(), CniError> {
        let mut missing = Vec::new();
        if self.container_id.is_empty() {
            missing.push("CNI_CONTAINERID");
        }
        if self.ifname.is_empty() {
            missing.push("CNI_IFNAME");
        }
        if needs_netns && self.netns.is_empty() {
            missing.push("CNI_NETNS");
        }
        if !missing.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                "missing CNI environment variables",
                missing.join(", "),
            ));
        }
        if !valid_name(&self.container_id) {
            return Err(CniError::new(
                code::INVALID_ENV,
                "CNI_CONTAINERID is invalid",
                "the CNI spec allows letters, digits, '_', '.' and '-' only",
            ));
        }
        if !valid_ifname(&self.ifname) {
            return Err(CniError::new(
                code::INVALID_ENV,
                "CNI_IFNAME is invalid",
                "an interface name has 1 to 15 characters, none of '/', ':' or white space, and is not '.' or '..'",
            ));
        }
        Ok(())
    }
}

/// A container id or network name as the CNI spec allows them: letters,
/// digits, `_`, `.` and `-`. Both end up in file names and in the IPAM
/// owner record (one per line), so nothing else may pass: no `/`, no `..`
/// path, no newline.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// An interface name the kernel takes (`dev_valid_name`).
pub fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// Host-side veth name: stable per (container, interface), 14 characters.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    // FNV-1a: tiny, stable across versions and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("fry{:011x}", h & 0xfff_ffff_ffff)
}

/// Parse and check the configuration.
pub fn parse_conf(stdin: &str) -> Result<NetConf, CniError> {
    let conf: NetConf = serde_json::from_str(stdin).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            "cannot decode the network configuration",
            e.to_string(),
        )
    })?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("CNI version {} is not supported", conf.cni_version),
            format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    if !valid_name(&conf.name) {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "the network name is invalid",
            "the CNI spec allows letters, digits, '_', '.' and '-' only",
        ));
    }
    conf.ipam.subnet.parse::<Ipv4Net>().map_err(|e| {
        CniError::new(
            code::INVALID_CONFIG,
            "ipam.subnet is invalid",
            e.to_string(),
        )
    })?;
    Ok(conf)
}

pub fn version_result(cni_version: &str) -> Value {
    json!({
        "cniVersion": cni_version,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

/// Run one CNI command. Returns the JSON to print on success (None for DEL,
/// which prints nothing).
pub fn run(env: &Env, stdin: &str) -> Result<Option<Value>, CniError> {
    match env.command.as_str() {
        "VERSION" => {
            let version = serde_json::from_str::<Value>(stdin)
                .ok()
                .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
                .unwrap_or_else(|| SUPPORTED_VERSIONS[0].to_string());
            Ok(Some(version_result(&version)))
        }
        "ADD" => {
            let conf = parse_conf(stdin)?;
            env.require(true)?;
            add(env, &conf).map(Some)
        }
        "DEL" => {
            let conf = parse_conf(stdin)?;
            env.require(false)?;
            del(env, &conf).map(|()| None)
        }
        "CHECK" => {
            let conf = parse_conf(stdin)?;
            env.require(true)?;
            check(env, &conf).map(|()| None)
        }
        "" => Err(CniError::new(
            code::INVALID_ENV,
            "CNI_COMMAND is not set",
            "ferry-cni is run by a container runtime with CNI_COMMAND=ADD|DEL|CHECK|VERSION",
        )),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {other}"),
            "expected ADD, DEL, CHECK or VERSION",
        )),
    }
}

fn ipam_of(conf: &NetConf) -> ipam::Ipam {
    let subnet: Ipv4Net = conf.ipam.subnet.parse().expect("checked in parse_conf");
    ipam::Ipam::new(&conf.ipam.data_dir, &conf.name, subnet)
}

/// Where this network's pod namespace records are.
fn podns_dir(conf: &NetConf) -> PathBuf {
    podns::records_dir(&conf.ipam.data_dir, &conf.name)
}

fn podns_error(what: &str, e: std::io::Error, dir: &Path) -> CniError {
    CniError::new(
        code::IO_FAILURE,
        format!("{what} the pod's network namespace record failed"),
        format!(
            "{}: {e}; check that the directory is writable",
            dir.display()
        ),
    )
}

/// Record the pod's namespace for the agent (`podns`): its path and what
/// it names now.
fn record_netns(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let dir = podns_dir(conf);
    let id = podns::NetnsId::of_path(Path::new(&env.netns)).map_err(|e| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            "the pod's network namespace is gone",
            format!("{}: {e}", env.netns),
        )
    })?;
    let record = podns::PodNetns {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: PathBuf::from(&env.netns),
        id,
    };
    podns::write(&dir, &host_ifname(&env.container_id, &env.ifname), &record)
        .map_err(|e| podns_error("writing", e, &dir))
}

fn ipam_error(e: ipam::IpamError) -> CniError {
    let code = match e {
        ipam::IpamError::Exhausted { .. } => code::POOL_EXHAUSTED,
        ipam::IpamError::TooSmall { .. } => code::INVALID_CONFIG,
        ipam::IpamError::Io { .. } => code::IO_FAILURE,
    };
    CniError::new(code, "address allocation failed", e.to_string())
}

fn dataplane_error(what: &str, e: impl std::fmt::Display, pin_dir: &Path) -> CniError {
    CniError::new(
        code::DATAPLANE_MISSING,
        format!("ferry's dataplane is not ready: {what}"),
        format!(
            "{e}; is ferry-agent running with --pin-dir {}?",
            pin_dir.display()
        ),
    )
}

use crate::tc::link_pin_path;

fn add(env: &Env, conf: &NetConf) -> Result<Value, CniError> {
    let netns = Path::new(&env.netns);
    if !netns.exists() {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            "the pod's network namespace does not exist",
            env.netns.clone(),
        ));
    }
    let ipam = ipam_of(conf);
    let ip = ipam
        .allocate(&env.container_id, &env.ifname)
        .map_err(ipam_error)?;
    match wire_pod(env, conf, ip).and_then(|result| record_netns(env, conf).map(|()| result)) {
        Ok(result) => Ok(result),
        Err(e) => {
            // Leave nothing half-made behind: the runtime will retry ADD.
            let _ = del(env, conf);
            Err(e)
        }
    }
}

fn wire_pod(env: &Env, conf: &NetConf, ip: Ipv4Addr) -> Result<Value, CniError> {
    let host_if = host_ifname(&env.container_id, &env.ifname);
    let (host, pod_mac) = wire_links(env, &host_if, conf.mtu.unwrap_or(1500), ip)?;
    let (host_index, host_mac) = (host.index, host.mac);
    attach_program(&conf.pin_dir, &host_if)?;
    let mut endpoints = crate::maps::Endpoints::open(&conf.pin_dir)
        .map_err(|e| dataplane_error("endpoints map", e, &conf.pin_dir))?;
    endpoints
        .insert(
            ip,
            ferry_common::Endpoint {
                ifindex: host_index,
                flags: 0,
                pod_mac,
                host_mac,
            },
        )
        .map_err(|e| {
            CniError::new(
                code::IO_FAILURE,
                "recording the endpoint failed",
                format!("{e}; the endpoints map may be full"),
            )
        })?;
    Ok(json!({
        "cniVersion": conf.cni_version,
        "interfaces": [
            {"name": host_if, "mac": format_mac(&host_mac)},
            {"name": env.ifname, "mac": format_mac(&pod_mac), "sandbox": env.netns},
        ],
        "ips": [{"address": format!("{ip}/32"), "gateway": GATEWAY.to_string(), "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": GATEWAY.to_string()}],
        "dns": {},
    }))
}

/// The veth pair, the pod's side configured in its namespace and the
/// host's routed: the host veth and the pod veth's MAC.
fn wire_links(
    env: &Env,
    host_if: &str,
    mtu: u32,
    ip: Ipv4Addr,
) -> Result<(rtnl::Link, [u8; 6]), CniError> {
    let netns_path = Path::new(&env.netns);
    let netns = rtnl::open_netns(netns_path)?;
    let ifname = env.ifname.as_str();
    let pod_addr = Ipv4Net {
        addr: ip,
        prefix: 32,
    };
    let gateway = Ipv4Net {
        addr: GATEWAY,
        prefix: 32,
    };
    let wired = rtnl::run(|node| async move {
        // An earlier, interrupted ADD may have left the pair: start clean.
        rtnl::delete_link(&node, host_if).await?;
        rtnl::add_veth(&node, host_if, ifname, mtu, &netns).await?;
        let host = rtnl::link(&node, host_if).await?;
        let pod = rtnl::connect_in(&netns, netns_path)?;
        let pod_link = rtnl::link(&pod, ifname).await?;
        rtnl::set_up(&pod, "lo").await?;
        rtnl::add_host_address(&pod, pod_link.index, ip, ifname).await?;
        rtnl::set_up(&pod, ifname).await?;
        rtnl::add_route(&pod, gateway, NextHop::Link(pod_link.index)).await?;
        rtnl::add_default_route(&pod, GATEWAY, pod_link.index).await?;
        // The gateway is answered from this entry alone: the host side has
        // no address and no ARP answer for it.
        rtnl::replace_permanent_neighbour(&pod, pod_link.index, GATEWAY, host.mac).await?;
        rtnl::set_up(&node, host_if).await?;
        rtnl::replace_route(&node, pod_addr, NextHop::Link(host.index)).await?;
        Ok((host, pod_link.mac))
    })?;
    Ok(wired)
}

/// Attach the pinned from-pod program to `host_if`'s tc ingress as a tcx
/// link, pinned so it outlives this process and can be replaced atomically.
fn attach_program(pin_dir: &Path, host_if: &str) -> Result<(), CniError> {
    crate::tc::attach_pinned(pin_dir, ferry_common::PIN_PROG_FROM_POD, host_if).map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            "attaching ferry's program failed",
            e.to_string(),
        )
    })
}

fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let host_if = host_ifname(&env.container_id, &env.ifname);
    let ipam = ipam_of(conf);
    let ip = ipam
        .lookup(&env.container_id, &env.ifname)
        .map_err(ipam_error)?;
    if let Some(ip) = ip {
        // The dataplane may be gone (agent uninstalled): DEL still succeeds.
        if let Ok(mut endpoints) = crate::maps::Endpoints::open(&conf.pin_dir) {
            endpoints.remove(ip).map_err(|e| {
                CniError::new(
                    code::IO_FAILURE,
                    "removing the endpoint failed",
                    e.to_string(),
                )
            })?;
        }
    }
    let name = host_if.as_str();
    rtnl::run(|node| async move { rtnl::delete_link(&node, name).await })?;
    match std::fs::remove_file(link_pin_path(&conf.pin_dir, &host_if)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(CniError::new(
                code::IO_FAILURE,
                "removing the pinned tc link failed",
                e.to_string(),
            ));
        }
        _ => {}
    }
    let records = podns_dir(conf);
    podns::remove(&records, &host_if).map_err(|e| podns_error("removing", e, &records))?;
    ipam.release(&env.container_id, &env.ifname)
        .map_err(ipam_error)?;
    Ok(())
}

fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let netns = Path::new(&env.netns);
    let host_if = host_ifname(&env.container_id, &env.ifname);
    let ip = ipam_of(conf)
        .lookup(&env.container_id, &env.ifname)
        .map_err(ipam_error)?
        .ok_or_else(|| {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                "no address is allocated to this container",
                env.container_id.clone(),
            )
        })?;
    let name = host_if.as_str();
    let host = rtnl::run(|node| async move { rtnl::find_link(&node, name).await })?;
    let host_index = host
        .ok_or_else(|| {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                "the host veth is missing",
                host_if.clone(),
            )
        })?
        .index;
    let ifname = env.ifname.as_str();
    let pod_ns = rtnl::open_netns(netns)?;
    let addrs = rtnl::run(|_| async {
        let pod = rtnl::connect_in(&pod_ns, netns)?;
        match rtnl::find_link(&pod, ifname).await? {
            Some(link) => rtnl::ipv4_addresses(&pod, link.index).await.map(Some),
            None => Ok(None),
        }
    })?
    .ok_or_else(|| {
        CniError::new(
            code::IO_FAILURE,
            format!("{ifname} is missing in the pod"),
            env.netns.clone(),
        )
    })?;
    if !addrs.contains(&ip) {
        return Err(CniError::new(
            code::IO_FAILURE,
            format!("{ifname} in the pod lacks {ip}"),
            format!("it has {addrs:?}"),
        ));
    }
    let endpoints = crate::maps::Endpoints::open(&conf.pin_dir)
        .map_err(|e| dataplane_error("endpoints map", e, &conf.pin_dir))?;
    match endpoints.get(ip) {
        Ok(Some(ep)) if ep.ifindex == host_index => {}
        other => {
            return Err(CniError::new(
                code::IO_FAILURE,
                format!("ferry's endpoint entry for {ip} is missing or stale"),
                format!("{other:?}"),
            ));
        }
    }
    if !link_pin_path(&conf.pin_dir, &host_if).exists() {
        return Err(CniError::new(
            code::IO_FAILURE,
            format!("ferry's program is not attached to {host_if}"),
            "the pinned tc link is missing",
        ));
    }
    Ok(())
}

/// The conflist the agent writes for this node, as flannel does: the
/// runtime picks it up from its CNI configuration directory.
pub fn conflist(pod_cidr: &Ipv4Net, pin_dir: &Path, data_dir: &Path, mtu: u32) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "plugins": [{
            "type": "ferry-cni",
            "pinDir": pin_dir,
            "mtu": mtu,
            "ipam": {"subnet": pod_cidr.to_string(), "dataDir": data_dir},
        }],
    })
}

/// File name of the conflist in the CNI configuration directory.
pub const CONFLIST_NAME: &str = "10-ferry.conflist";

/// Write the conflist atomically (temp file + rename), so a runtime never
/// reads half of it.
pub fn write_conflist(dir: &Path, conflist: &Value) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(CONFLIST_NAME);
    let tmp = dir.join(format!(".{CONFLIST_NAME}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(conflist)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(command: &str) -> Env {
        Env {
            command: command.into(),
            container_id: "abc".into(),
            netns: "/var/run/netns/x".into(),
            ifname: "eth0".into(),
        }
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"ferry","type":"ferry-cni",
        "ipam":{"subnet":"10.244.1.0/24","dataDir":"/tmp/x"}}"#;

    #[test]
    fn version_lists_what_is_supported() {
        let v = run(&env("VERSION"), r#"{"cniVersion":"1.0.0"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["supportedVersions"], json!(["1.0.0", "1.1.0"]));
    }

    #[test]
    fn config_errors_carry_spec_codes() {
        let bad_version = CONF.replace("1.0.0", "0.3.1");
        assert_eq!(
            run(&env("ADD"), &bad_version).unwrap_err().code,
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            run(&env("ADD"), "{not json").unwrap_err().code,
            code::DECODE_FAILURE
        );
        let bad_subnet = CONF.replace("10.244.1.0/24", "10.244.1.0");
        assert_eq!(
            run(&env("ADD"), &bad_subnet).unwrap_err().code,
            code::INVALID_CONFIG
        );
        let mut no_id = env("ADD");
        no_id.container_id.clear();
        let e = run(&no_id, CONF).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.details.contains("CNI_CONTAINERID"));
        assert_eq!(run(&env("FROB"), CONF).unwrap_err().code, code::INVALID_ENV);
        let e = run(&env("ADD"), CONF).unwrap_err();
        assert_eq!(e.code, code::UNKNOWN_CONTAINER, "netns path does not exist");
    }

    #[test]
    fn host_names_are_stable_short_and_distinct() {
        let a = host_ifname("abc", "eth0");
        assert_eq!(a, host_ifname("abc", "eth0"));
        assert_eq!(a.len(), 14);
        assert_ne!(a, host_ifname("abc", "eth1"));
        assert_ne!(a, host_ifname("abd", "eth0"));
    }

    #[test]
    fn errors_serialise_as_the_spec_says() {
        let e = CniError::new(7, "bad", "worse");
        assert_eq!(
            e.to_json("1.0.0"),
            json!({"cniVersion":"1.0.0","code":7,"msg":"bad","details":"worse"})
        );
    }

    #[test]
    fn names_that_could_break_the_owner_record_or_leave_the_data_dir_are_refused() {
        for ok in ["abc123", "k8s_pod.web-1"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a\nb", "../x", "a/b", "a b"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(valid_ifname("eth0"));
        for bad in ["", "..", "b\nc", "a/b", "a:b", "sixteen-chars-xx"] {
            assert!(!valid_ifname(bad), "{bad:?}");
        }
        let env = Env {
            command: "ADD".into(),
            container_id: "a\nb".into(),
            netns: "/run/netns/x".into(),
            ifname: "c".into(),
        };
        let err = env.require(true).unwrap_err();
        assert!(format!("{err:?}").contains("CNI_CONTAINERID"), "{err:?}");
    }
}
