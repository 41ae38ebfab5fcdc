//! The node's side of networking, from the configuration and the peers:
//! program attachments (XDP mode included), the route map, the kernel
//! routes for the node's own traffic, and the CNI conflist.
use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf};

use ferry_common::{PIN_PROG_FROM_NETWORK, PIN_PROG_XDP_UPLINK};

use super::{PlanConfig, nodes::PeerNode};
use crate::{
    config::{Overlay, Uplink, XdpMode},
    net::Ipv4Net,
};

/// The VXLAN device ferry creates in VXLAN mode.
pub const VXLAN_DEVICE: &str = "ferry-vxlan";

/// Where a program runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// tc ingress (tcx).
    TcIngress,
    Xdp(XdpMode),
}

/// A pinned program attached to an interface through a pinned link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The program's pin name.
    pub program: &'static str,
    pub interface: String,
    pub hook: Hook,
}

/// A collect-metadata VXLAN device (the kernel program sets each packet's
/// tunnel key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanDevice {
    pub name: String,
    pub port: u16,
}

/// What the node's network-side links should be.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Links {
    pub vxlan_device: Option<VxlanDevice>,
    /// By the link's pin name under the pin directory's `links-net/`.
    pub attachments: BTreeMap<String, Attachment>,
}

/// A route-map entry: another node's pod CIDR is reached through `device`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRoute {
    pub node_addr: Ipv4Addr,
    /// The uplink (native) or the VXLAN device; its ifindex goes into the
    /// map.
    pub device: String,
    /// The VNI, in VXLAN mode.
    pub vxlan_vni: Option<u32>,
}

/// A kernel route for the node's own traffic to another node's pods.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KernelRoute {
    /// `via GATEWAY dev DEVICE`
    Via { gateway: Ipv4Addr, device: String },
    /// `encap ip id VNI dst REMOTE dev DEVICE` (lightweight tunnel).
    Vxlan {
        vni: u32,
        remote: Ipv4Addr,
        device: String,
    },
}

/// The CNI conflist to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflist {
    pub dir: PathBuf,
    pub content: serde_json::Value,
}

/// bpffs refuses dots in names; interface names (VLANs: eth0.100) have them.
pub fn pin_name(ifname: &str) -> String {
    ifname.replace('.', "_")
}

/// One pin per XDP mode: a changed mode replaces the link (the kernel
/// cannot switch a link's mode in place).
pub fn xdp_pin_name(mode: XdpMode, ifname: &str) -> String {
    format!("xdp-{}-{}", mode.name(), pin_name(ifname))
}

/// The from-network program on the uplink (and the VXLAN device), and
/// XDP on the uplink when asked for (native routing only).
pub fn links(uplink: Option<&Uplink>) -> Links {
    let mut links = Links::default();
    let Some(uplink) = uplink else {
        return links;
    };
    let mut attach = |pin: String, program, interface: &str, hook| {
        let interface = interface.to_string();
        let attachment = Attachment {
            program,
            interface,
            hook,
        };
        links.attachments.insert(pin, attachment);
    };
    let from_network = |iface: &str| (pin_name(iface), PIN_PROG_FROM_NETWORK, Hook::TcIngress);
    let (pin, program, hook) = from_network(&uplink.interface);
    attach(pin, program, &uplink.interface, hook);
    match uplink.overlay {
        Overlay::Native { xdp: Some(mode) } => attach(
            xdp_pin_name(mode, &uplink.interface),
            PIN_PROG_XDP_UPLINK,
            &uplink.interface,
            Hook::Xdp(mode),
        ),
        Overlay::Native { xdp: None } => {}
        Overlay::Vxlan { port, .. } => {
            let (pin, program, hook) = from_network(VXLAN_DEVICE);
            attach(pin, program, VXLAN_DEVICE, hook);
            links.vxlan_device = Some(VxlanDevice {
                name: VXLAN_DEVICE.into(),
                port,
            });
        }
    }
    links
}

/// One value per peer's pod CIDR; none without an uplink.
fn per_peer<V>(
    peers: &BTreeMap<Ipv4Net, PeerNode>,
    uplink: Option<&Uplink>,
    value: impl Fn(&PeerNode, &Uplink) -> V,
) -> BTreeMap<Ipv4Net, V> {
    let Some(uplink) = uplink else {
        return BTreeMap::new();
    };
    peers
        .iter()
        .map(|(net, peer)| (*net, value(peer, uplink)))
        .collect()
}

/// Route-map entries: each peer's pod CIDR -> the peer, through the uplink
/// or the VXLAN device.
pub fn peer_routes(
    peers: &BTreeMap<Ipv4Net, PeerNode>,
    uplink: Option<&Uplink>,
) -> BTreeMap<Ipv4Net, PeerRoute> {
    per_peer(peers, uplink, |peer, uplink| {
        let (device, vxlan_vni) = match uplink.overlay {
            Overlay::Native { .. } => (uplink.interface.clone(), None),
            Overlay::Vxlan { vni, .. } => (VXLAN_DEVICE.to_string(), Some(vni)),
        };
        PeerRoute {
            node_addr: peer.addr,
            device,
            vxlan_vni,
        }
    })
}

/// Kernel routes for the peers' pod CIDRs, so the node's own traffic
/// (host-network pods, the kubelet, replies from host-network endpoints)
/// reaches them the way ferry sends pod traffic.
pub fn kernel_routes(
    peers: &BTreeMap<Ipv4Net, PeerNode>,
    uplink: Option<&Uplink>,
) -> BTreeMap<Ipv4Net, KernelRoute> {
    per_peer(peers, uplink, |peer, uplink| match uplink.overlay {
        Overlay::Native { .. } => KernelRoute::Via {
            gateway: peer.addr,
            device: uplink.interface.clone(),
        },
        Overlay::Vxlan { vni, .. } => KernelRoute::Vxlan {
            vni,
            remote: peer.addr,
            device: VXLAN_DEVICE.into(),
        },
    })
}

/// The conflist for this node's pod CIDR, when the agent writes one.
pub fn conflist(cfg: &PlanConfig, pod_cidr: Option<Ipv4Net>) -> Option<Conflist> {
    let cni = cfg.cni.as_ref()?;
    let mtu = cfg
        .uplink
        .as_ref()
        .map_or(cfg.mtu, |u| u.overlay.pod_mtu(cfg.mtu));
    Some(Conflist {
        dir: cni.conf_dir.clone(),
        content: crate::cni::conflist(&pod_cidr?, &cfg.pin_dir, &cni.data_dir, mtu),
    })
}
