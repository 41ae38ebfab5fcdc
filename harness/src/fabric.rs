//! The L2 network between nodes: a namespace of its own holding one Linux
//! bridge, with a veth port per attached namespace. Deleting the namespace
//! (on drop) removes the bridge and every port, and with the ports their
//! peers in the attached namespaces.
use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result};

use crate::netns::Netns;

/// The bridge inside the fabric namespace.
pub const BRIDGE: &str = "br0";

/// A network namespace `fry-<run_id>-fabric` with a bridge `br0` (up) that
/// every attached namespace has a port on.
pub struct Fabric {
    next_port: AtomicU32,
    pub netns: Netns,
}

impl Fabric {
    pub fn create(run_id: &str) -> Result<Self> {
        let netns = Netns::create(&format!("fry-{run_id}-fabric"))?;
        netns
            .exec(&["ip", "link", "add", BRIDGE, "type", "bridge"])
            .context("creating the fabric bridge")?;
        netns.exec(&["ip", "link", "set", BRIDGE, "up"])?;
        Ok(Self {
            next_port: AtomicU32::new(0),
            netns,
        })
    }

    /// Attach `ns` to the bridge: a veth pair whose fabric end (`p<n>`) is a
    /// port of `br0` and whose other end is moved into `ns` as
    /// `ifname_in_ns`, addressed `addr/prefix` and up.
    pub fn connect(
        &self,
        ns: &Netns,
        ifname_in_ns: &str,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<()> {
        let port = format!("p{}", self.next_port.fetch_add(1, Ordering::Relaxed));
        self.netns
            .exec(&[
                "ip",
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                ifname_in_ns,
                "netns",
                &ns.name,
            ])
            .with_context(|| format!("connecting {} to the fabric", ns.name))?;
        self.netns
            .exec(&["ip", "link", "set", &port, "master", BRIDGE, "up"])?;
        // A veth takes frames sent back by XDP on its peer (XDP_TX on a
        // node's uplink) only with NAPI on, which GRO turns on; a physical
        // switch port needs nothing of the kind.
        self.netns
            .exec(&["ethtool", "-K", &port, "gro", "on"])
            .context("enabling GRO on the fabric port (is ethtool installed? cargo xtask setup installs it)")?;
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{addr}/{prefix}"),
            "dev",
            ifname_in_ns,
        ])?;
        ns.exec(&["ip", "link", "set", ifname_in_ns, "up"])?;
        Ok(())
    }
}
