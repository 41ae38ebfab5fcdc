//! The one-node test bed: five nodes side by side, each with a client pod
//! and a server pod at the same addresses, so only what sits between the
//! pods differs. The pod-to-Service, programming and program-cost
//! scenarios all run on it.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use ferry_harness::{Binaries, Cluster, Netns, Node, PlainNode, PlainPod, Pod, manifest};

use super::{CLIENT_IP, SERVER_IP, ServiceSpec, as_strs, serve_args, traffic::tune_client};

const POD_CIDR: &str = "10.244.1.0/24";

/// The five nodes. Fields drop in order: the nodes (in the reverse order
/// of their creation), then the run whose id names the plain ones.
pub struct Testbed {
    /// (c): ferry with the large Service set.
    pub ferry_large: FerryNode,
    /// (b): ferry with 10 Services.
    pub ferry_small: FerryNode,
    /// (e): kube-proxy's nftables rule set.
    pub nftables: PlainSetup,
    /// (d): kube-proxy's iptables rule set.
    pub iptables: PlainSetup,
    /// (a): no ferry, the kernel's own routing.
    pub direct: PlainSetup,
    _plain_run: Cluster,
}

impl Testbed {
    /// The bed; ferry-large's maps sized for `services` Services of
    /// ENDPOINTS_PER_SERVICE endpoints (ferry-10's at the defaults).
    pub fn create(bins: &Binaries, load: &Path, services: usize) -> Result<Self> {
        let plain_run = Cluster::new(bins.clone())?;
        let direct = PlainSetup::create(&plain_run.run_id, "direct", load)?;
        let iptables = PlainSetup::create(&plain_run.run_id, "kp-ipt", load)?;
        let nftables = PlainSetup::create(&plain_run.run_id, "kp-nft", load)?;
        let ferry_small = FerryNode::create(bins, load, "ferry-10", &[])?;
        let ferry_large = FerryNode::create(bins, load, "ferry-large", &map_size_args(services))?;
        Ok(Self {
            ferry_large,
            ferry_small,
            nftables,
            iptables,
            direct,
            _plain_run: plain_run,
        })
    }
}

/// The agent options that size the maps for `services` Services (one
/// frontend each) of ENDPOINTS_PER_SERVICE endpoints, both backend runs
/// in use, with a quarter to spare; never below the defaults.
pub(super) fn map_size_args(services: usize) -> Vec<String> {
    let frontends = (services + services / 4).max(ferry_common::SERVICES_MAX_ENTRIES as usize);
    let backends = (2 * super::ENDPOINTS_PER_SERVICE * frontends)
        .max(ferry_common::BACKENDS_MAX_ENTRIES as usize);
    vec![
        format!("--max-frontends={frontends}"),
        format!("--max-backends={backends}"),
    ]
}

/// A ferry node, its own cluster and manifest, a client and a server pod.
/// Its agent runs with `--socket-lb on`: a client started in the client
/// pod's cgroup (`client.cgroup`) is translated at connect(), one started
/// outside the node's cgroup tree (as `traffic::load_json` starts it) is
/// translated by tc, so both paths run against the same maps.
/// Fields drop in order: pods, then the node, then the cluster's files.
pub struct FerryNode {
    pub client: Pod,
    _server: Pod,
    pub node: Node,
    pub cluster: Cluster,
}

impl FerryNode {
    fn create(bins: &Binaries, load: &Path, name: &str, extra: &[String]) -> Result<Self> {
        let cluster = Cluster::new(bins.clone())?;
        cluster.write_manifest(&manifest::node(name, POD_CIDR))?;
        let mut args = vec!["--socket-lb=on".to_string()];
        args.extend_from_slice(extra);
        let node = cluster.node_with(name, &as_strs(&args))?;
        let client = node.add_pod("client")?;
        let mut server = node.add_pod("server")?;
        if (client.ip, server.ip) != (CLIENT_IP, SERVER_IP) {
            bail!(
                "ferry-cni gave {} and {}, the bench expects {CLIENT_IP} and {SERVER_IP}",
                client.ip,
                server.ip
            );
        }
        serve_to(|args| server.spawn(load, args), &client.netns)?;
        Ok(Self {
            client,
            _server: server,
            node,
            cluster,
        })
    }

    /// Write `services` and wait for the agent's sync; its log line.
    pub fn load_services(&self, services: &[ServiceSpec]) -> Result<SyncLine> {
        let before = sync_lines(&self.node.log).len();
        self.cluster
            .write_manifest(&ferry_manifest(&self.node.name, services))?;
        let start = Instant::now();
        loop {
            let lines = sync_lines(&self.node.log);
            if lines.len() > before {
                return Ok(lines[before].clone());
            }
            if start.elapsed() > Duration::from_secs(300) {
                bail!(
                    "ferry-agent did not sync {} services within 300 s:\n{}",
                    services.len(),
                    self.node.agent_log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Start `ferry-load serve` through `spawn` and tune the client for it.
fn serve_to(spawn: impl FnOnce(&[&str]) -> Result<()>, client_ns: &Netns) -> Result<()> {
    spawn(&as_strs(&serve_args()))?;
    tune_client(client_ns)
}

fn ferry_manifest(node: &str, services: &[ServiceSpec]) -> String {
    let mut docs = vec![manifest::node(node, POD_CIDR)];
    docs.extend(services.iter().flat_map(|s| s.docs(node)));
    manifest::join(&docs)
}

/// The agent's "synced" log fields: `key=value` pairs.
#[derive(Clone, Debug)]
pub struct SyncLine(Vec<(String, String)>);

impl SyncLine {
    /// A duration field in milliseconds; NaN if it is missing.
    pub fn ms(&self, key: &str) -> f64 {
        self.field(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    }

    /// A field as logged.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

pub(super) fn sync_lines(log: &Path) -> Vec<SyncLine> {
    lines_marked(log, &[" synced "])
}

/// The agent's "synced" and "resynced" lines (a resync, timed, reads the
/// objects as they are then, so it programs any change pending too).
pub(super) fn sync_and_resync_lines(log: &Path) -> Vec<SyncLine> {
    lines_marked(log, &[" synced ", " resynced "])
}

fn lines_marked(log: &Path, markers: &[&str]) -> Vec<SyncLine> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| markers.iter().any(|m| l.contains(m)))
        .map(|l| {
            SyncLine(
                l.split_whitespace()
                    .filter_map(|w| w.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        })
        .collect()
}

/// A node without ferry, a client and a server pod; optionally a rule set.
pub struct PlainSetup {
    pub client: PlainPod,
    _server: PlainPod,
    pub node: PlainNode,
}

impl PlainSetup {
    fn create(run_id: &str, name: &str, load: &Path) -> Result<Self> {
        let mut node = PlainNode::create(run_id, name)?;
        let client = node.add_pod("client", CLIENT_IP)?;
        let mut server = node.add_pod("server", SERVER_IP)?;
        serve_to(|args| server.spawn(load, args), &client.netns)?;
        Ok(Self {
            client,
            _server: server,
            node,
        })
    }
}
