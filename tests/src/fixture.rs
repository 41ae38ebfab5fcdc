//! A loaded copy of ferry's kernel programs with its maps pinned in a
//! directory of its own, removed again on drop (also when a test fails).
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use aya::{
    maps::{HashMap, Map, MapData},
    programs::{TestRun, TestRunOptions},
};
use ferry_agent::{
    loader::{Dataplane, unpin_all},
    maps::{Conntrack, Counters, ServiceTable},
};
use ferry_common::{
    Backend, Counter, MAP_POD_SOURCES, PodSource, SCOPE_CLUSTER_IP, ServiceKey, ServiceStats,
};

/// The ClusterIP frontend `addr:port` over `protocol`.
pub fn frontend(addr: std::net::Ipv4Addr, port: u16, protocol: u8) -> ServiceKey {
    ServiceKey {
        addr: addr.octets(),
        port,
        protocol,
        scope: SCOPE_CLUSTER_IP,
    }
}

/// The backend `addr:port`.
pub fn backend(addr: std::net::Ipv4Addr, port: u16) -> Backend {
    Backend {
        addr: addr.octets(),
        port,
        pad: [0; 2],
    }
}

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// This node's address on the fabric of the uplink tests (`Kernel::on_fabric`).
pub const FABRIC_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 11);
/// The other node, and the pods it holds.
pub const REMOTE_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 12);
pub const REMOTE_PODS: &str = "10.244.2.0/24";

/// The device BPF_PROG_TEST_RUN's skb comes in on: loopback. The from-pod
/// program takes it for the pod veth the packet came through.
pub const TEST_RUN_IFINDEX: u32 = 1;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A pin directory unique to this process and call, under /sys/fs/bpf.
pub fn unique_pin_dir(tag: &str) -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/ferry-test-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Removes a pin directory on drop.
pub struct PinDirGuard(pub PathBuf);

impl Drop for PinDirGuard {
    fn drop(&mut self) {
        let _ = unpin_all(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Kernel {
    pub dataplane: Dataplane,
    pub services: ServiceTable,
    pub conntrack: Conntrack,
    pub counters: Counters,
    /// `ferry_pod_srcs`: which source the test-run device may carry.
    pub pod_sources: HashMap<MapData, u32, PodSource>,
    // Last, so the maps are closed before the pins go.
    pub pins: PinDirGuard,
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the kernel tests load BPF programs: run them as root (`cargo xtask test`)"
    );
}

impl Kernel {
    pub fn load() -> Self {
        Self::load_at(unique_pin_dir("k"))
    }

    pub fn load_at(pin_dir: PathBuf) -> Self {
        require_root();
        let pins = PinDirGuard(pin_dir);
        let dataplane = Dataplane::load(&pins.0).expect("load the kernel programs");
        Self::open(dataplane, pins)
    }

    /// `load` with the maps at `sizes` instead of the defaults.
    pub fn load_sized(sizes: &ferry_agent::loader::MapSizes) -> Self {
        require_root();
        let pins = PinDirGuard(unique_pin_dir("k"));
        let dataplane = Dataplane::load_sized(&pins.0, sizes).expect("load the kernel programs");
        Self::open(dataplane, pins)
    }

    fn open(dataplane: Dataplane, pins: PinDirGuard) -> Self {
        let services = ServiceTable::open(&pins.0).expect("open services");
        let conntrack = Conntrack::open(&pins.0).expect("open conntrack");
        let counters = Counters::open(&pins.0).expect("open counters");
        let pod_sources = MapData::from_pin(pins.0.join(MAP_POD_SOURCES))
            .map(Map::HashMap)
            .expect("open the pod sources map");
        Self {
            dataplane,
            services,
            conntrack,
            counters,
            pod_sources: pod_sources.try_into().expect("pod sources map type"),
            pins,
        }
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pins.0
    }

    /// Run the from-pod program once on `input`, sent by the pod that owns
    /// its source address through that pod's own veth; (verdict, output
    /// bytes).
    pub fn run(&mut self, input: &[u8]) -> (u32, Vec<u8>) {
        let owner = ipv4_source(input).unwrap_or(Ipv4Addr::UNSPECIFIED);
        self.run_as_pod(owner, input)
    }

    /// Run the from-pod program once on `input` as sent through the veth
    /// of the pod `owner` (whatever source address `input` carries).
    pub fn run_as_pod(&mut self, owner: Ipv4Addr, input: &[u8]) -> (u32, Vec<u8>) {
        self.set_sender(owner);
        self.run_program(ferry_agent::loader::PROG_FROM_POD, input)
    }

    /// Run the from-pod program once on `input` as `ferry-agent trace`
    /// does (the trace marker in the context), sent by the pod owning its
    /// source; (verdict, output bytes, the outcome handed back).
    pub fn run_traced(&mut self, input: &[u8]) -> (u32, Vec<u8>, Option<u32>) {
        self.set_sender(ipv4_source(input).unwrap_or(Ipv4Addr::UNSPECIFIED));
        self.run_traced_program(ferry_agent::loader::PROG_FROM_POD, input)
    }

    /// `run_traced` through the from-network program (`trace --on uplink`).
    pub fn run_traced_from_network(&mut self, input: &[u8]) -> (u32, Vec<u8>, Option<u32>) {
        self.run_traced_program(ferry_agent::loader::PROG_FROM_NETWORK, input)
    }

    /// The uplink's XDP program under the trace marker; (XDP action, the
    /// frame it leaves, the outcome handed back: None when left to tc).
    pub fn run_xdp_traced(&mut self, input: &[u8]) -> (u32, Vec<u8>, Option<u32>) {
        let ran = ferry_agent::trace::trace_run_xdp(self.dataplane.xdp_program(), 0, input)
            .expect("BPF_PROG_TEST_RUN (XDP trace)");
        (ran.action, ran.out, ran.outcome)
    }

    fn run_traced_program(&mut self, name: &str, input: &[u8]) -> (u32, Vec<u8>, Option<u32>) {
        let ran = ferry_agent::trace::trace_run_tc(self.dataplane.program(name), 0, input)
            .expect("BPF_PROG_TEST_RUN (trace)");
        (ran.action, ran.out, ran.outcome)
    }

    /// The test-run device becomes the veth of the pod `owner`.
    fn set_sender(&mut self, owner: Ipv4Addr) {
        self.pod_sources
            .insert(
                TEST_RUN_IFINDEX,
                PodSource {
                    addr: owner.octets(),
                },
                0,
            )
            .expect("record the test-run device's pod");
    }

    /// Every conntrack entry, printed and sorted (to compare states).
    pub fn flows(&self) -> Vec<String> {
        let mut flows: Vec<String> = self
            .conntrack
            .entries()
            .expect("read conntrack")
            .iter()
            .map(|e| format!("{e:?}"))
            .collect();
        flows.sort();
        flows
    }

    /// Run the from-pod program once on `input` as sent through a veth
    /// ferry-cni never recorded.
    pub fn run_from_unknown_veth(&mut self, input: &[u8]) -> (u32, Vec<u8>) {
        let _ = self.pod_sources.remove(&TEST_RUN_IFINDEX);
        self.run_program(ferry_agent::loader::PROG_FROM_POD, input)
    }

    /// Run the from-network program (uplink / VXLAN device) once on `input`.
    pub fn run_from_network(&mut self, input: &[u8]) -> (u32, Vec<u8>) {
        self.run_program(ferry_agent::loader::PROG_FROM_NETWORK, input)
    }

    /// Run the uplink's XDP program once on `input`; (XDP action, bytes).
    pub fn run_xdp(&mut self, input: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; input.len() + 256];
        let prog = self.dataplane.xdp_program();
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .expect("BPF_PROG_TEST_RUN (XDP)");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    fn run_program(&mut self, name: &str, input: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; input.len() + 256];
        let prog = self.dataplane.program(name);
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    pub fn counters(&self) -> Vec<Counter> {
        self.counters.read().expect("read counters")
    }

    /// This node on a fabric as the uplink tests have it: its address
    /// `FABRIC_NODE` (for source NAT) and a native route to the other
    /// node's pods, `REMOTE_PODS` via `REMOTE_NODE`.
    pub fn on_fabric(&self) {
        ferry_agent::maps::NodeMap::open(self.pin_dir())
            .expect("open the node map")
            .set_address(Some(FABRIC_NODE))
            .expect("write the node's address");
        let mut routes = std::collections::BTreeMap::new();
        routes.insert(
            REMOTE_PODS.parse().expect("a CIDR"),
            ferry_common::Route {
                node_addr: REMOTE_NODE.octets(),
                mode: ferry_common::ROUTE_MODE_NATIVE,
                ifindex: 1,
                vni: 0,
            },
        );
        ferry_agent::maps::Routes::open(self.pin_dir())
            .expect("open the routes")
            .sync(&routes)
            .expect("write the route");
    }

    /// Record `addr` as a pod of this node (as ferry-cni does).
    pub fn add_local_pod(&self, addr: Ipv4Addr) {
        ferry_agent::maps::Endpoints::open(self.pin_dir())
            .expect("open the endpoints")
            .insert(
                addr,
                ferry_common::Endpoint {
                    ifindex: 7,
                    flags: 0,
                    pod_mac: [2; 6],
                    host_mac: [3; 6],
                },
            )
            .expect("record the pod");
    }

    /// `ferry_svc_stats` of the frontend `service_id`, summed over CPUs.
    pub fn service_stats(&self, service_id: u32) -> ServiceStats {
        ferry_agent::maps::service_stats::ServiceStatsTable::open(self.pin_dir())
            .expect("open ferry_svc_stats")
            .read(service_id)
            .expect("read ferry_svc_stats")
    }
}

/// The IPv4 source address of an Ethernet frame, if it carries IPv4.
pub fn ipv4_source(frame: &[u8]) -> Option<Ipv4Addr> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let src: [u8; 4] = frame.get(26..30)?.try_into().ok()?;
    Some(Ipv4Addr::from(src))
}

/// A "client" pod and three backend pods ("b1".."b3") serving on 8080 on
/// `node`: the usual cast of the one-node end-to-end tests.
pub fn client_and_three_backends(
    node: &ferry_harness::Node,
) -> (ferry_harness::Pod, Vec<ferry_harness::Pod>) {
    let client = node.add_pod("client").unwrap();
    let backends = ["b1", "b2", "b3"]
        .into_iter()
        .map(|name| {
            let mut p = node.add_pod(name).unwrap();
            p.serve(8080).unwrap();
            p
        })
        .collect();
    (client, backends)
}

/// A node of a multi-node test: its name, its address on the fabric and
/// its podCIDR.
pub type NodeOnFabric = (&'static str, std::net::Ipv4Addr, &'static str);

/// Write the Node objects of `nodes` (with their addresses), then start
/// each on `fabric` with `--routing ROUTING` and `extra` agent arguments.
pub fn nodes_on_fabric(
    c: &ferry_harness::Cluster,
    fabric: &ferry_harness::Fabric,
    nodes: &[NodeOnFabric],
    routing: &str,
    extra: &[&str],
) -> Vec<ferry_harness::Node> {
    let objects: Vec<String> = nodes
        .iter()
        .map(|(name, addr, cidr)| ferry_harness::manifest::node_with_address(name, cidr, *addr))
        .collect();
    c.write_manifest(&ferry_harness::manifest::join(&objects))
        .expect("write the Node objects");
    nodes
        .iter()
        .map(|(name, addr, _)| {
            c.node_on_fabric_with(name, fabric, *addr, routing, extra)
                .unwrap_or_else(|e| panic!("node {name} ({routing}): {e:#}"))
        })
        .collect()
}
