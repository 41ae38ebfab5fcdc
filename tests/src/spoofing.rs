//! The cast of the anti-spoofing end-to-end tests: on one node a victim,
//! an attacker and a server behind the ClusterIP Service "web", and the
//! frames the attacker writes straight onto its veth.
use std::net::Ipv4Addr;

use ferry_harness::{Binaries, Cluster, Node, Pod, manifest, packet::Packet};

const CIDR: &str = "10.244.1.0/24";

pub struct Cast {
    pub victim: Pod,
    pub attacker: Pod,
    pub server: Pod,
    // Dropped after the pods, before the cluster.
    pub node: Node,
    pub cluster: Cluster,
}

/// The cast, "web" (`vip`:80 -> server:8080) programmed on the node.
pub fn cast(vip: Ipv4Addr) -> Cast {
    crate::fixture::require_root();
    let cluster = Cluster::new(Binaries::locate().expect("binaries")).expect("cluster");
    cluster.write_manifest(&manifest::node("n1", CIDR)).unwrap();
    let node = cluster.node("n1").unwrap();
    let victim = node.add_pod("victim").unwrap();
    let attacker = node.add_pod("attacker").unwrap();
    let mut server = node.add_pod("server").unwrap();
    server.serve(8080).unwrap();
    cluster
        .write_manifest(&manifest::join(&[
            manifest::node("n1", CIDR),
            manifest::service("web", vip, &[("http", 80, "TCP", 8080)]),
            manifest::endpoint_slice("web", "n1", &[server.ip], &[("http", 8080, "TCP")]),
        ]))
        .unwrap();
    Cast {
        victim,
        attacker,
        server,
        node,
        cluster,
    }
}

fn mac(pod: &Pod, interface: usize) -> [u8; 6] {
    let text = pod.result["interfaces"][interface]["mac"]
        .as_str()
        .expect("CNI result lists the interface's MAC");
    let bytes: Vec<u8> = text
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

/// `packet` as `pod` would put it on its eth0 towards the node: from its
/// own MAC to its veth's host side (the CNI result lists the host side
/// first, the pod's interface second).
pub fn on_the_wire(pod: &Pod, packet: Packet) -> Vec<u8> {
    packet.with_macs(mac(pod, 0), mac(pod, 1)).bytes()
}
