//! The node plan: Kubernetes objects plus the agent's configuration in, one
//! value out that says everything this node's dataplane should hold. Pure
//! and unit-tested without a kernel; the reconciler makes it so.
//!
//! A Service goes through it in kube-proxy's order: `services` parses each
//! Service and its ports once; `endpoints` reads each port's endpoints once;
//! `categorize` decides which endpoints serve which traffic (readiness,
//! terminating fallback, traffic policies); `frontends` and `health` build
//! what the maps and the health-check servers hold. `nodes` reads this node
//! and its peers; `network` turns them and the configuration into links,
//! routes and the CNI conflist.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
};

use ferry_common::{
    Backend, SERVICE_RANGE_ALLOCATED, SERVICE_RANGE_UNALLOCATED, ServiceKey, ServiceRange,
};
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
    networking::v1::ServiceCIDR,
};

pub mod categorize;
pub mod endpoints;
pub mod frontends;
pub mod health;
pub mod incremental;
pub mod network;
pub mod nodes;
pub mod objects;
pub mod problem;
pub mod service_cidrs;
pub mod services;
pub mod unsupported;

pub use frontends::DesiredFrontend;
pub use health::HealthCheck;
pub use incremental::{Changed, NeedsEverything, Planner, ServiceId};
pub use nodes::PeerNode;
pub use objects::{ServiceObject, SliceObject};
pub use problem::Problem;

use crate::{
    config::{CniConfig, PortRange, Uplink},
    net::Ipv4Net,
};

/// Everything the agent reads: Services and EndpointSlices as ferry keeps
/// them (shared with the source that holds them, not copied), the few
/// Nodes and ServiceCIDRs as the API gives them.
#[derive(Debug, Default, Clone)]
pub struct Objects {
    pub services: Vec<Arc<ServiceObject>>,
    pub slices: Vec<Arc<SliceObject>>,
    pub nodes: Vec<Node>,
    /// `networking.k8s.io/v1` ServiceCIDRs (none from an API server that
    /// does not serve them).
    pub service_cidrs: Vec<ServiceCIDR>,
}

impl Objects {
    /// Keep `svc` as ferry does.
    pub fn add_service(&mut self, svc: &Service) {
        self.services.push(Arc::new(ServiceObject::new(svc)));
    }

    /// Keep `slice` as ferry does.
    pub fn add_slice(&mut self, slice: &EndpointSlice) {
        self.slices.push(Arc::new(SliceObject::new(slice)));
    }
}

pub const DEFAULT_NODEPORT_RANGE: PortRange = PortRange::new(30000, 32767);
pub const DEFAULT_SNAT_PORTS: PortRange = PortRange::new(61000, 65535);

/// What the plan needs to know beyond the objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanConfig {
    pub node_name: String,
    /// The addresses NodePorts answer on (kube-proxy's
    /// --nodeport-addresses); None: this node's InternalIPs.
    pub nodeport_addresses: Option<Vec<Ipv4Addr>>,
    /// The cluster's NodePort range (the apiserver's
    /// --service-node-port-range).
    pub nodeport_range: PortRange,
    /// Source ports for external traffic sent to other nodes' backends.
    pub snat_ports: PortRange,
    /// Cross-node networking (None: this node's pods only).
    pub uplink: Option<Uplink>,
    /// Where the CNI conflist goes (None: not written).
    pub cni: Option<CniConfig>,
    /// Where ferry's maps, programs and links are pinned.
    pub pin_dir: PathBuf,
    /// The uplink's MTU.
    pub mtu: u32,
    /// `--service-cidr`: with the ServiceCIDR objects' ranges, the
    /// cluster's service CIDRs. Inside them, an address no Service holds is
    /// dropped and a ClusterIP's unserved port rejected; with none at all,
    /// such packets pass as any other.
    pub service_cidrs: Vec<Ipv4Net>,
    /// Serve every NodePort on 127.0.0.1 to the node's own processes (the
    /// socket programs only; needs socket LB).
    pub node_ports_on_loopback: bool,
}

impl PlanConfig {
    /// The network-side links: they follow the configuration alone.
    pub fn links(&self) -> network::Links {
        network::links(self.uplink.as_ref())
    }

    /// The ranges kept from the node's own automatic port choice.
    pub fn reserved_ports(&self) -> Vec<PortRange> {
        vec![self.snat_ports, self.nodeport_range]
    }

    /// A single node with default ranges and no uplink.
    pub fn for_node(node_name: &str) -> Self {
        Self {
            node_name: node_name.to_string(),
            nodeport_addresses: None,
            nodeport_range: DEFAULT_NODEPORT_RANGE,
            snat_ports: DEFAULT_SNAT_PORTS,
            uplink: None,
            cni: None,
            pin_dir: crate::DEFAULT_PIN_DIR.into(),
            mtu: 1500,
            service_cidrs: Vec::new(),
            node_ports_on_loopback: false,
        }
    }
}

/// This node's entry in the node map: its address for source NAT and the
/// ports to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAddress {
    pub addr: Option<Ipv4Addr>,
    pub snat_ports: PortRange,
}

/// Everything this node's dataplane should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    pub frontends: BTreeMap<ServiceKey, DesiredFrontend>,
    /// `ferry_svc_cidrs`: the service CIDRs, and each allocated ClusterIP
    /// as a /32 (empty without service CIDRs).
    pub service_ranges: BTreeMap<Ipv4Net, ServiceRange>,
    /// healthCheckNodePorts to answer, by port.
    pub health_checks: BTreeMap<u16, HealthCheck>,
    pub node: NodeAddress,
    /// This node's pod CIDR, from its Node object.
    pub pod_cidr: Option<Ipv4Net>,
    pub peers: BTreeMap<Ipv4Net, PeerNode>,
    pub links: network::Links,
    pub routes: BTreeMap<Ipv4Net, network::PeerRoute>,
    pub kernel_routes: BTreeMap<Ipv4Net, network::KernelRoute>,
    pub conflist: Option<network::Conflist>,
    /// Kept from the node's own automatic port choice.
    pub reserved_ports: Vec<PortRange>,
    /// Terminating endpoints: no new flows, but their established ones
    /// (UDP too) are not removed while the endpoint is listed.
    pub draining: BTreeSet<Backend>,
}

/// The service CIDRs and, as /32 entries, every ClusterIP of a proxied
/// Service whatever its ports (kube-proxy's cluster-IP set); nothing
/// without service CIDRs, so such packets pass as before.
pub(crate) fn service_ranges(
    cidrs: &BTreeSet<Ipv4Net>,
    cluster_ips: &BTreeSet<Ipv4Addr>,
) -> BTreeMap<Ipv4Net, ServiceRange> {
    if cidrs.is_empty() {
        return BTreeMap::new();
    }
    let range = |kind| ServiceRange { kind };
    // `service_cidrs::service_cidrs` already refused CIDRs with host bits
    // set: the trie's diff must see each range under one key.
    let nets = cidrs
        .iter()
        .map(|net| (*net, range(SERVICE_RANGE_UNALLOCATED)));
    let ips = cluster_ips.iter().map(|ip| {
        (
            Ipv4Net {
                addr: *ip,
                prefix: 32,
            },
            range(SERVICE_RANGE_ALLOCATED),
        )
    });
    nets.chain(ips).collect()
}

/// This node's plan, and what in the objects could not be used: the
/// incremental planner run once over everything.
pub fn plan(objects: &Objects, cfg: &PlanConfig) -> (NodePlan, Vec<Problem>) {
    let mut planner = Planner::new(cfg);
    planner
        .update(objects, &Changed::Everything)
        .expect("a full update needs nothing more");
    let problems = planner.problems();
    (planner.into_plan(), problems)
}

#[cfg(test)]
mod tests;
