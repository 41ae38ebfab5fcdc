//! The real targets: the pinned maps, route netlink for the VXLAN device
//! and kernel routes, pinned tcx/XDP links, files, the health-check servers and
//! the node's /proc/sys.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use ferry_common::{Route, ServiceKey, ServiceRange};

use super::targets::{
    FileTarget, FlowTable, HealthServers, LinkTarget, NodeMapTarget, PortReservations, RouteMap,
    Table, TargetError, TargetResult,
};
use crate::{
    config::PortRange,
    healthcheck::HealthChecks,
    maps::{Conntrack, NodeMap, Routes, ServiceRanges, ServiceTable, routes::RouteStats},
    net::Ipv4Net,
    plan::{
        DesiredFrontend, HealthCheck, NodeAddress,
        network::{Attachment, Hook, KernelRoute, VxlanDevice},
    },
    reserved_ports::{self, Reserved},
    rtnl::{self, NextHop},
    tc,
};

/// Where the network-side links are pinned, under the pin directory.
pub const NET_LINKS_DIR: &str = "links-net";

impl Table<ServiceKey, DesiredFrontend> for ServiceTable {
    fn current(&self) -> TargetResult<BTreeMap<ServiceKey, DesiredFrontend>> {
        let records = self.list().map_err(TargetError::new)?;
        Ok(records
            .into_iter()
            .map(|r| {
                // The options' own flags are read back as the options.
                let frontend = DesiredFrontend {
                    backends: r.backends.into(),
                    name: r.name.into(),
                    flags: r.value.flags & !r.options.flags(),
                    options: r.options,
                };
                (r.frontend, frontend)
            })
            .collect())
    }

    fn upsert(&mut self, key: &ServiceKey, frontend: &DesiredFrontend) -> TargetResult<()> {
        let (backends, name) = (&frontend.backends, &frontend.name);
        self.upsert_with_options(*key, backends, name, frontend.flags, &frontend.options)
            .map(|_| ())
            .map_err(TargetError::new)
    }

    fn remove(&mut self, key: &ServiceKey) -> TargetResult<()> {
        ServiceTable::remove(self, key).map_err(TargetError::new)
    }

    fn apply(
        &mut self,
        upserts: &[(ServiceKey, &DesiredFrontend)],
        removes: &[ServiceKey],
    ) -> Vec<(ServiceKey, TargetError)> {
        match ServiceTable::apply(self, upserts, removes) {
            Ok(failed) => failed
                .into_iter()
                .map(|(k, e)| (k, TargetError::new(e)))
                .collect(),
            Err(e) => {
                // Unreadable maps: nothing was written.
                let e = e.to_string();
                let keys = upserts
                    .iter()
                    .map(|(k, _)| *k)
                    .chain(removes.iter().copied());
                keys.map(|k| (k, TargetError::msg(e.clone()))).collect()
            }
        }
    }
}

impl Table<Ipv4Net, ServiceRange> for ServiceRanges {
    fn current(&self) -> TargetResult<BTreeMap<Ipv4Net, ServiceRange>> {
        self.list().map_err(TargetError::new)
    }

    fn upsert(&mut self, net: &Ipv4Net, range: &ServiceRange) -> TargetResult<()> {
        self.insert(net, *range).map_err(TargetError::new)
    }

    fn remove(&mut self, net: &Ipv4Net) -> TargetResult<()> {
        ServiceRanges::remove(self, net).map_err(TargetError::new)
    }
}

impl RouteMap for Routes {
    fn sync(&mut self, desired: &BTreeMap<Ipv4Net, Route>) -> TargetResult<RouteStats> {
        Routes::sync(self, desired).map_err(TargetError::new)
    }
}

impl NodeMapTarget for NodeMap {
    fn set(&mut self, node: &NodeAddress) -> TargetResult<()> {
        let ports = (node.snat_ports.first, node.snat_ports.last);
        NodeMap::set(self, node.addr, ports).map_err(TargetError::new)
    }
}

impl FlowTable for Conntrack {
    fn remove_flows(&mut self, stale: &[super::targets::StaleFlows]) -> TargetResult<usize> {
        let entries = self.entries().map_err(TargetError::new)?;
        let doomed = crate::maps::conntrack::flows_to(&entries, stale);
        let flows = doomed.len();
        // Both entries of each flow, whatever their state (their backend
        // left): one batch delete.
        let keys: Vec<_> = doomed
            .into_iter()
            .flat_map(|(original, reply)| std::iter::once(original).chain(reply))
            .collect();
        self.remove_many(&keys).map_err(TargetError::new)?;
        Ok(flows)
    }

    fn collect_garbage(
        &mut self,
        now_ns: u64,
        steps_per_pass: u32,
    ) -> TargetResult<super::targets::GcReport> {
        let slice = crate::maps::conntrack::gc_slice(self.max_entries(), steps_per_pass);
        self.collect_garbage_slice(now_ns, slice)
            .map_err(TargetError::new)
    }
}

/// The node's routes to other nodes' pod CIDRs, through route netlink.
/// What an earlier sync of this process installed (and the kernel still
/// has) is what is observed: routes of nodes that left while no agent ran
/// stay until the node reboots.
#[derive(Default)]
pub struct KernelRoutes {
    installed: BTreeMap<Ipv4Net, KernelRoute>,
}

/// `net` with its host bits cleared, as the kernel keeps a destination.
fn network(net: &Ipv4Net) -> Ipv4Net {
    Ipv4Net {
        addr: net.network(),
        prefix: net.prefix,
    }
}

impl Table<Ipv4Net, KernelRoute> for KernelRoutes {
    /// What this process installed and the kernel still has: a route
    /// something else removed (a link flap, a DHCP renew) is put back at
    /// the next sync or resync.
    fn current(&self) -> TargetResult<BTreeMap<Ipv4Net, KernelRoute>> {
        if self.installed.is_empty() {
            return Ok(BTreeMap::new());
        }
        let present = rtnl::run(|h| async move { rtnl::main_table_ipv4_destinations(&h).await })
            .map_err(TargetError::new)?;
        Ok(self
            .installed
            .iter()
            .filter(|(net, _)| present.contains(&network(net)))
            .map(|(net, route)| (*net, route.clone()))
            .collect())
    }

    fn upsert(&mut self, net: &Ipv4Net, route: &KernelRoute) -> TargetResult<()> {
        let dst = network(net);
        rtnl::run(|h| async move {
            let hop = match route {
                KernelRoute::Via { gateway, device } => {
                    NextHop::Via(*gateway, rtnl::index(&h, device).await?)
                }
                KernelRoute::Vxlan {
                    vni,
                    remote,
                    device,
                } => NextHop::Vxlan {
                    vni: *vni,
                    remote: *remote,
                    device: rtnl::index(&h, device).await?,
                },
            };
            rtnl::replace_route(&h, dst, hop).await
        })
        .map_err(TargetError::new)?;
        self.installed.insert(*net, route.clone());
        Ok(())
    }

    fn remove(&mut self, net: &Ipv4Net) -> TargetResult<()> {
        let dst = network(net);
        // A route already gone is removed all the same.
        rtnl::run(|h| async move { rtnl::delete_route(&h, dst).await })
            .map_err(TargetError::new)?;
        self.installed.remove(net);
        Ok(())
    }
}

/// Devices and the network-side links pinned under `links-net/`.
pub struct SystemLinks {
    pub pin_dir: PathBuf,
}

impl SystemLinks {
    fn links_dir(&self) -> PathBuf {
        self.pin_dir.join(NET_LINKS_DIR)
    }
}

fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: c is a valid C string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

impl LinkTarget for SystemLinks {
    fn ifindex(&self, name: &str) -> Option<u32> {
        ifindex(name)
    }

    fn ensure_vxlan_device(&mut self, device: &VxlanDevice) -> TargetResult<()> {
        let (name, port) = (device.name.as_str(), device.port);
        let exists = ifindex(name).is_some();
        rtnl::run(|h| async move {
            if !exists {
                rtnl::add_vxlan(&h, name, port).await?;
            }
            // No ARP over the tunnel: the node's own packets routed into it
            // (to other nodes' pods) would wait forever for an answer. The
            // far side delivers on IP alone.
            rtnl::set_noarp_up(&h, name).await
        })
        .map_err(TargetError::new)
    }

    fn remove_device(&mut self, name: &str) -> TargetResult<()> {
        rtnl::run(|h| async move { rtnl::delete_link(&h, name).await })
            .map(|_| ())
            .map_err(TargetError::new)
    }

    fn pinned(&self) -> TargetResult<BTreeSet<String>> {
        let dir = match std::fs::read_dir(self.links_dir()) {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
            Err(e) => return Err(TargetError::new(e)),
        };
        Ok(dir
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect())
    }

    fn attach(&mut self, pin: &str, a: &Attachment) -> TargetResult<()> {
        let hook = match a.hook {
            Hook::TcIngress => tc::Hook::TcIngress,
            Hook::Xdp(crate::config::XdpMode::Generic) => {
                tc::Hook::Xdp(aya::programs::XdpMode::Skb)
            }
            Hook::Xdp(crate::config::XdpMode::Native) => {
                tc::Hook::Xdp(aya::programs::XdpMode::Driver)
            }
        };
        let link = self.links_dir().join(pin);
        tc::ensure_attached(&self.pin_dir, a.program, &a.interface, &link, hook)
            .map_err(TargetError::new)
    }

    fn detach(&mut self, pin: &str) -> TargetResult<()> {
        std::fs::remove_file(self.links_dir().join(pin)).map_err(TargetError::new)
    }
}

/// Files on the node's filesystem.
pub struct SystemFiles;

impl FileTarget for SystemFiles {
    fn read(&self, path: &Path) -> Option<Vec<u8>> {
        std::fs::read(path).ok()
    }

    fn write_conflist(&mut self, dir: &Path, content: &serde_json::Value) -> TargetResult<PathBuf> {
        crate::cni::write_conflist(dir, content).map_err(|e| {
            TargetError::msg(format!(
                "writing the CNI config into {}: {e}; check that the directory is writable",
                dir.display()
            ))
        })
    }
}

impl HealthServers for HealthChecks {
    fn serve(&mut self, checks: &BTreeMap<u16, HealthCheck>) {
        self.sync(checks);
    }
}

/// `net.ipv4.ip_local_reserved_ports` under the node's /proc/sys.
pub struct ProcSys(pub PathBuf);

impl PortReservations for ProcSys {
    fn reserve(&mut self, ranges: &[PortRange]) -> TargetResult<Option<String>> {
        let ranges: Vec<(u16, u16)> = ranges.iter().map(|r| (r.first, r.last)).collect();
        match reserved_ports::reserve(&self.0, &ranges).map_err(TargetError::new)? {
            Reserved::Already => Ok(None),
            Reserved::Added(now) => Ok(Some(now)),
        }
    }
}
