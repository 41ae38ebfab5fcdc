//! Node objects: who this node is (its address and pod CIDR) and where the
//! other nodes' pods live.
use std::{collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::api::core::v1::Node;

use super::problem::{ObjectProblems, Problem, object_name};
use crate::net::Ipv4Net;

/// The label topology hints are matched against.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Another node, as far as routing to its pods goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNode {
    pub name: String,
    /// Its InternalIP.
    pub addr: Ipv4Addr,
}

/// This node and its peers, from the Node objects.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Nodes {
    /// This node's IPv4 InternalIPs (the first is its address).
    pub own_ips: Vec<Ipv4Addr>,
    /// This node's pod CIDR.
    pub pod_cidr: Option<Ipv4Net>,
    /// This node's `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
    /// Other nodes by pod CIDR: where their pods are reached.
    pub peers: BTreeMap<Ipv4Net, PeerNode>,
}

impl Nodes {
    /// This node's address (its first IPv4 InternalIP).
    pub fn own_addr(&self) -> Option<Ipv4Addr> {
        self.own_ips.first().copied()
    }
}

fn ipv4_internal_ips(node: &Node) -> impl Iterator<Item = &str> {
    node.status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter(|a| a.type_ == "InternalIP" && !a.address.contains(':'))
        .map(|a| a.address.as_str())
}

/// The node's IPv4 pod CIDR (`spec.podCIDRs`, else `spec.podCIDR`).
fn ipv4_pod_cidr(node: &Node) -> Option<&str> {
    let spec = node.spec.as_ref()?;
    match &spec.pod_cidrs {
        Some(cidrs) => cidrs.iter().map(String::as_str).find(|c| !c.contains(':')),
        None => spec.pod_cidr.as_deref().filter(|c| !c.contains(':')),
    }
}

/// Read every Node: this node's identity, and each other node with a pod
/// CIDR and an InternalIP as a peer. A node claiming this node's own CIDR is
/// never routed to.
pub fn nodes(objects: &[Node], node_name: &str, problems: &mut Vec<Problem>) -> Nodes {
    let mut out = Nodes::default();
    for node in objects {
        let Some(name) = node.metadata.name.as_deref() else {
            continue;
        };
        let mut problems = ObjectProblems {
            kind: "Node",
            namespace: None,
            name: Some(name),
            sink: problems,
        };
        if name == node_name {
            out.own_ips = ipv4_internal_ips(node)
                .filter_map(|a| a.parse().ok())
                .collect();
            out.zone = node
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(ZONE_LABEL))
                .cloned();
        }
        let cidr = match ipv4_pod_cidr(node).map(str::parse::<Ipv4Net>) {
            Some(Ok(net)) => net,
            Some(Err(e)) => {
                problems.push("spec.podCIDR", e.to_string());
                continue;
            }
            None => continue,
        };
        if name == node_name {
            out.pod_cidr = Some(cidr);
            continue;
        }
        match ipv4_internal_ips(node).next().map(str::parse::<Ipv4Addr>) {
            Some(Ok(addr)) => {
                let peer = PeerNode {
                    name: name.to_string(),
                    addr,
                };
                out.peers.insert(cidr, peer);
            }
            Some(Err(e)) => problems.push(
                "status.addresses",
                format!("InternalIP is not an IPv4 address: {e}"),
            ),
            None => problems.push(
                "status.addresses",
                "no IPv4 InternalIP: its pods cannot be routed to",
            ),
        }
    }
    // Our own CIDR is never routed elsewhere, whatever another Node claims.
    if let Some(own) = out.pod_cidr
        && let Some(peer) = out.peers.remove(&own)
    {
        problems.push(Problem {
            object: object_name("Node", None, Some(&peer.name)),
            field: "spec.podCIDR".into(),
            message: format!("{own} is this node's own pod CIDR; not routed"),
        });
    }
    out
}
