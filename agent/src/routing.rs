//! Reaching pods on other nodes. The agent attaches the from-network
//! program to the node's uplink (and, in VXLAN mode, to a collect-metadata
//! VXLAN device it creates) and fills the route map from Node objects:
//! each other node's pod CIDR -> its InternalIP.
use std::{collections::BTreeMap, path::Path};

use ferry_common::{
    PIN_PROG_FROM_NETWORK, PIN_PROG_XDP_UPLINK, ROUTE_MODE_NATIVE, ROUTE_MODE_VXLAN, Route,
};

use crate::{
    ipcmd,
    model::PeerNode,
    net::Ipv4Net,
    tc::{AttachError, Hook, ensure_attached},
};

/// The VXLAN device ferry creates in VXLAN mode.
pub const VXLAN_DEVICE: &str = "ferry-vxlan";
/// Outer IPv4 + UDP + VXLAN + inner Ethernet: what encapsulation adds.
pub const VXLAN_OVERHEAD: u32 = 50;
/// Where the network-side links are pinned, under the pin directory.
const NET_LINKS_DIR: &str = "links-net";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RoutingMode {
    /// Pod packets leave the uplink unchanged, next hop the owning node.
    Native,
    /// Pod packets are encapsulated in VXLAN to the owning node.
    Vxlan,
}

#[derive(Clone, Debug)]
pub struct Routing {
    pub mode: RoutingMode,
    /// The interface other nodes are reached through.
    pub uplink: String,
    pub vni: u32,
    pub vxlan_port: u16,
    /// Attach the XDP program to the uplink (native routing only), and how.
    pub xdp: Option<XdpMode>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpMode {
    /// Generic XDP: runs in the kernel's receive path, on any driver.
    Generic,
    /// The driver's native XDP (faster; needs driver support, and on veth
    /// a peer with NAPI for transmitted frames).
    Native,
}

#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error(
        "the uplink {0} does not exist in this network namespace; pass --uplink with the node's interface towards the other nodes"
    )]
    NoUplink(String),
    #[error("creating the VXLAN device {VXLAN_DEVICE} failed: {0}")]
    Vxlan(#[from] ipcmd::IpError),
    #[error(transparent)]
    Attach(#[from] AttachError),
}

/// bpffs refuses dots in names; interface names (VLANs: eth0.100) have them.
fn pin_name(ifname: &str) -> String {
    ifname.replace('.', "_")
}

fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: c is a valid C string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

impl Routing {
    /// Attach the from-network program (and create the VXLAN device);
    /// idempotent, and safe while traffic flows. Returns the ifindex the
    /// routes send through: the uplink, or the VXLAN device.
    pub fn setup(&self, pin_dir: &Path) -> Result<u32, RoutingError> {
        let uplink_index =
            ifindex(&self.uplink).ok_or_else(|| RoutingError::NoUplink(self.uplink.clone()))?;
        let links = pin_dir.join(NET_LINKS_DIR);
        ensure_attached(
            pin_dir,
            PIN_PROG_FROM_NETWORK,
            &self.uplink,
            &links.join(pin_name(&self.uplink)),
            Hook::TcIngress,
        )?;
        match self.mode {
            RoutingMode::Native => {
                // External traffic for other nodes' backends turns around
                // in XDP; it needs native routing (no encapsulation).
                // One pin per mode: a changed mode replaces the link (the
                // kernel cannot switch a link's mode in place).
                let xdp_link =
                    |mode: &str| links.join(format!("xdp-{mode}-{}", pin_name(&self.uplink)));
                let wanted = self.xdp.map(|m| match m {
                    XdpMode::Generic => "generic",
                    XdpMode::Native => "native",
                });
                for mode in ["generic", "native"] {
                    if Some(mode) != wanted {
                        // Detaches a link an earlier run pinned.
                        let _ = std::fs::remove_file(xdp_link(mode));
                    }
                }
                if let Some(mode) = self.xdp {
                    ensure_attached(
                        pin_dir,
                        PIN_PROG_XDP_UPLINK,
                        &self.uplink,
                        &xdp_link(wanted.unwrap_or_default()),
                        Hook::Xdp(match mode {
                            XdpMode::Generic => aya::programs::XdpMode::Skb,
                            XdpMode::Native => aya::programs::XdpMode::Driver,
                        }),
                    )?;
                }
                Ok(uplink_index)
            }
            RoutingMode::Vxlan => {
                // No XDP path in VXLAN mode.
                for mode in ["generic", "native"] {
                    let _ = std::fs::remove_file(
                        links.join(format!("xdp-{mode}-{}", pin_name(&self.uplink))),
                    );
                }
                if ifindex(VXLAN_DEVICE).is_none() {
                    ipcmd::ip(&[
                        "link",
                        "add",
                        VXLAN_DEVICE,
                        "type",
                        "vxlan",
                        "external",
                        "dstport",
                        &self.vxlan_port.to_string(),
                    ])?;
                }
                // No ARP over the tunnel: the node's own packets routed into
                // it (to other nodes' pods) would wait forever for an answer.
                // The far side delivers on IP alone.
                ipcmd::ip(&["link", "set", VXLAN_DEVICE, "arp", "off", "up"])?;
                ensure_attached(
                    pin_dir,
                    PIN_PROG_FROM_NETWORK,
                    VXLAN_DEVICE,
                    &links.join(pin_name(VXLAN_DEVICE)),
                    Hook::TcIngress,
                )?;
                ifindex(VXLAN_DEVICE)
                    .ok_or_else(|| RoutingError::NoUplink(VXLAN_DEVICE.to_string()))
            }
        }
    }

    /// Pod MTU for this mode, given the uplink's.
    pub fn pod_mtu(&self, uplink_mtu: u32) -> u32 {
        match self.mode {
            RoutingMode::Native => uplink_mtu,
            RoutingMode::Vxlan => uplink_mtu - VXLAN_OVERHEAD,
        }
    }

    /// Kernel routes for the other nodes' pod CIDRs, so the node's own
    /// traffic (host-network pods, the kubelet, replies from host-network
    /// endpoints) reaches them the same way ferry sends pod traffic.
    /// `installed` is what an earlier call put in place; routes for nodes
    /// that are gone are removed.
    pub fn sync_kernel_routes(
        &self,
        peers: &BTreeMap<Ipv4Net, PeerNode>,
        installed: &mut std::collections::BTreeSet<Ipv4Net>,
    ) -> Result<(), ipcmd::IpError> {
        for (net, peer) in peers {
            let cidr = format!("{}/{}", net.network(), net.prefix);
            let node = peer.addr.to_string();
            match self.mode {
                RoutingMode::Native => {
                    ipcmd::ip(&["route", "replace", &cidr, "via", &node, "dev", &self.uplink])?
                }
                RoutingMode::Vxlan => ipcmd::ip(&[
                    "route",
                    "replace",
                    &cidr,
                    "encap",
                    "ip",
                    "id",
                    &self.vni.to_string(),
                    "dst",
                    &node,
                    "dev",
                    VXLAN_DEVICE,
                ])?,
            };
            installed.insert(*net);
        }
        let gone: Vec<Ipv4Net> = installed
            .iter()
            .filter(|n| !peers.contains_key(n))
            .copied()
            .collect();
        for net in gone {
            match ipcmd::ip(&["route", "del", &format!("{}/{}", net.network(), net.prefix)]) {
                Err(e) if !e.is_missing() && !e.to_string().contains("No such process") => {
                    return Err(e);
                }
                _ => {
                    installed.remove(&net);
                }
            }
        }
        Ok(())
    }

    /// The route map's desired contents.
    pub fn routes(
        &self,
        peers: &BTreeMap<Ipv4Net, PeerNode>,
        ifindex: u32,
    ) -> BTreeMap<Ipv4Net, Route> {
        peers
            .iter()
            .map(|(net, peer)| {
                let route = Route {
                    node_addr: peer.addr.octets(),
                    mode: match self.mode {
                        RoutingMode::Native => ROUTE_MODE_NATIVE,
                        RoutingMode::Vxlan => ROUTE_MODE_VXLAN,
                    },
                    ifindex,
                    vni: match self.mode {
                        RoutingMode::Native => 0,
                        RoutingMode::Vxlan => self.vni,
                    },
                };
                (*net, route)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_carry_mode_node_and_vni() {
        let mut peers = BTreeMap::new();
        peers.insert(
            "10.244.2.0/24".parse().unwrap(),
            PeerNode {
                name: "n2".into(),
                addr: "192.168.77.12".parse().unwrap(),
            },
        );
        let vx = Routing {
            mode: RoutingMode::Vxlan,
            uplink: "eth0".into(),
            vni: 7,
            vxlan_port: 4789,
            xdp: Some(XdpMode::Generic),
        };
        let r = vx.routes(&peers, 42);
        let route = r[&"10.244.2.0/24".parse().unwrap()];
        assert_eq!(
            route,
            Route {
                node_addr: [192, 168, 77, 12],
                mode: ROUTE_MODE_VXLAN,
                ifindex: 42,
                vni: 7
            }
        );
        let native = Routing {
            mode: RoutingMode::Native,
            ..vx
        };
        let route = native.routes(&peers, 3)[&"10.244.2.0/24".parse().unwrap()];
        assert_eq!(
            (route.mode, route.vni, route.ifindex),
            (ROUTE_MODE_NATIVE, 0, 3)
        );
        assert_eq!(native.pod_mtu(1500), 1500);
        assert_eq!(
            Routing {
                mode: RoutingMode::Vxlan,
                ..native
            }
            .pod_mtu(1500),
            1450
        );
    }
}
