//! In-memory targets for unit tests: one shared `Host` that every target
//! handle writes to, so a test reconciles through `Targets` and then reads
//! what a node would hold.
use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    rc::Rc,
};

use ferry_common::{Route, ServiceKey, ServiceRange};

use super::{
    Targets,
    targets::{
        FileTarget, FlowTable, HealthServers, LinkTarget, NodeMapTarget, PortReservations,
        RouteMap, SocketTerminator, Table, TargetError, TargetResult,
    },
};
use crate::{
    config::PortRange,
    maps::routes::RouteStats,
    net::Ipv4Net,
    plan::{
        DesiredFrontend, HealthCheck, NodeAddress,
        network::{Attachment, KernelRoute, VxlanDevice},
    },
};

/// What a node holds, as the in-memory targets see it.
#[derive(Debug, Default)]
pub struct Host {
    pub frontends: BTreeMap<ServiceKey, DesiredFrontend>,
    /// Keys (as `{:?}` prints them) whose write fails, to test partial
    /// failure.
    pub poisoned: Vec<String>,
    pub node: Option<NodeAddress>,
    pub service_ranges: BTreeMap<Ipv4Net, ServiceRange>,
    pub routes: BTreeMap<Ipv4Net, Route>,
    pub kernel_routes: BTreeMap<Ipv4Net, KernelRoute>,
    /// Interfaces by name -> ifindex.
    pub interfaces: BTreeMap<String, u32>,
    pub vxlan_devices: BTreeMap<String, VxlanDevice>,
    /// Pinned network-side links.
    pub links: BTreeMap<String, Attachment>,
    pub files: BTreeMap<PathBuf, Vec<u8>>,
    pub health_checks: BTreeMap<u16, HealthCheck>,
    /// Every flow removal asked for.
    pub removed_flows: Vec<super::targets::StaleFlows>,
    /// Every socket termination asked for (the departed UDP flows).
    pub terminated_sockets: Vec<super::targets::StaleFlows>,
    pub reserved_ports: Vec<PortRange>,
    /// Every write, in order ("services upsert ...", "links detach ...").
    pub writes: Vec<String>,
}

/// A handle on the shared host; it is every target at once.
#[derive(Clone, Default)]
pub struct MemoryHost(pub Rc<RefCell<Host>>);

impl MemoryHost {
    /// A host with these interfaces (name, ifindex).
    pub fn with_interfaces(interfaces: &[(&str, u32)]) -> Self {
        let host = Self::default();
        host.0.borrow_mut().interfaces = interfaces
            .iter()
            .map(|(n, i)| (n.to_string(), *i))
            .collect();
        host
    }

    pub fn targets(&self) -> Targets {
        Targets {
            services: self.table("services", |h| &mut h.frontends),
            service_ranges: self.table("service ranges", |h| &mut h.service_ranges),
            node: Box::new(self.clone()),
            routes: Box::new(self.clone()),
            kernel_routes: self.table("kernel routes", |h| &mut h.kernel_routes),
            flows: Box::new(self.clone()),
            sockets: Box::new(self.clone()),
            links: Box::new(self.clone()),
            files: Box::new(self.clone()),
            health: Box::new(self.clone()),
            ports: Box::new(self.clone()),
        }
    }

    fn table<K, V>(
        &self,
        name: &'static str,
        table: fn(&mut Host) -> &mut BTreeMap<K, V>,
    ) -> Box<dyn Table<K, V>>
    where
        MemoryTable<K, V>: Table<K, V> + 'static,
    {
        let host = self.clone();
        Box::new(MemoryTable { host, name, table })
    }

    /// Record a write named `what` and make it.
    fn record<R>(&self, what: String, change: impl FnOnce(&mut Host) -> R) -> R {
        let mut host = self.0.borrow_mut();
        host.writes.push(what);
        change(&mut host)
    }

    /// Take the writes recorded so far.
    pub fn take_writes(&self) -> Vec<String> {
        std::mem::take(&mut self.0.borrow_mut().writes)
    }
}

impl NodeMapTarget for MemoryHost {
    fn set(&mut self, node: &NodeAddress) -> TargetResult<()> {
        if self.0.borrow().node.as_ref() != Some(node) {
            self.record(format!("node {node:?}"), |h| h.node = Some(*node));
        }
        Ok(())
    }
}

impl RouteMap for MemoryHost {
    fn sync(&mut self, desired: &BTreeMap<Ipv4Net, Route>) -> TargetResult<RouteStats> {
        let routes = self.0.borrow().routes.clone();
        let upserted = desired
            .iter()
            .filter(|(n, r)| routes.get(n) != Some(r))
            .count();
        let removed = routes.keys().filter(|n| !desired.contains_key(n)).count();
        if upserted + removed > 0 {
            let what = format!("route map {upserted} upserted {removed} removed");
            self.record(what, |h| h.routes = desired.clone());
        }
        Ok(RouteStats { upserted, removed })
    }
}

/// One of the host's keyed tables.
struct MemoryTable<K, V> {
    host: MemoryHost,
    name: &'static str,
    table: fn(&mut Host) -> &mut BTreeMap<K, V>,
}

impl<K: Ord + Clone + std::fmt::Debug, V: Clone> Table<K, V> for MemoryTable<K, V> {
    fn current(&self) -> TargetResult<BTreeMap<K, V>> {
        Ok((self.table)(&mut self.host.0.borrow_mut()).clone())
    }

    fn upsert(&mut self, key: &K, value: &V) -> TargetResult<()> {
        let what = format!("{} upsert {key:?}", self.name);
        if self.host.0.borrow().poisoned.contains(&format!("{key:?}")) {
            return Err(TargetError::msg(format!("{what}: poisoned")));
        }
        let table = self.table;
        self.host
            .record(what, |h| table(h).insert(key.clone(), value.clone()));
        Ok(())
    }

    fn remove(&mut self, key: &K) -> TargetResult<()> {
        let table = self.table;
        let what = format!("{} remove {key:?}", self.name);
        self.host.record(what, |h| table(h).remove(key));
        Ok(())
    }
}

impl FlowTable for MemoryHost {
    fn remove_flows(&mut self, stale: &[super::targets::StaleFlows]) -> TargetResult<usize> {
        let what = format!("flows remove {}", stale.len());
        self.record(what, |h| h.removed_flows.extend_from_slice(stale));
        Ok(stale.len())
    }

    fn collect_garbage(
        &mut self,
        _now_ns: u64,
        _steps_per_pass: u32,
    ) -> TargetResult<super::targets::GcReport> {
        Ok(Default::default())
    }
}

impl SocketTerminator for MemoryHost {
    fn terminate(&mut self, stale: &[super::targets::StaleFlows]) -> TargetResult<usize> {
        let what = format!("sockets terminate {}", stale.len());
        self.record(what, |h| h.terminated_sockets.extend_from_slice(stale));
        Ok(stale.len())
    }
}

impl LinkTarget for MemoryHost {
    fn ifindex(&self, name: &str) -> Option<u32> {
        self.0.borrow().interfaces.get(name).copied()
    }

    fn ensure_vxlan_device(&mut self, device: &VxlanDevice) -> TargetResult<()> {
        if self.ifindex(&device.name).is_none() {
            self.record(format!("device add {}", device.name), |h| {
                let index = 100 + h.interfaces.len() as u32;
                h.interfaces.insert(device.name.clone(), index);
                h.vxlan_devices.insert(device.name.clone(), device.clone());
            });
        }
        Ok(())
    }

    fn remove_device(&mut self, name: &str) -> TargetResult<()> {
        if self.ifindex(name).is_some() {
            self.record(format!("device del {name}"), |h| {
                h.interfaces.remove(name);
                h.vxlan_devices.remove(name)
            });
        }
        Ok(())
    }

    fn pinned(&self) -> TargetResult<BTreeSet<String>> {
        Ok(self.0.borrow().links.keys().cloned().collect())
    }

    fn attach(&mut self, pin: &str, attachment: &Attachment) -> TargetResult<()> {
        let what = format!("links attach {pin}");
        self.record(what, |h| {
            h.links.insert(pin.to_string(), attachment.clone())
        });
        Ok(())
    }

    fn detach(&mut self, pin: &str) -> TargetResult<()> {
        self.record(format!("links detach {pin}"), |h| h.links.remove(pin));
        Ok(())
    }
}

impl FileTarget for MemoryHost {
    fn read(&self, path: &Path) -> Option<Vec<u8>> {
        self.0.borrow().files.get(path).cloned()
    }

    fn write_conflist(&mut self, dir: &Path, content: &serde_json::Value) -> TargetResult<PathBuf> {
        let path = dir.join(crate::cni::CONFLIST_NAME);
        let bytes = serde_json::to_vec_pretty(content).map_err(TargetError::new)?;
        let what = format!("file {}", path.display());
        self.record(what, |h| h.files.insert(path.clone(), bytes));
        Ok(path)
    }
}

impl HealthServers for MemoryHost {
    fn serve(&mut self, checks: &BTreeMap<u16, HealthCheck>) {
        if &self.0.borrow().health_checks != checks {
            let what = format!("health checks {:?}", checks.keys());
            self.record(what, |h| h.health_checks = checks.clone());
        }
    }
}

impl PortReservations for MemoryHost {
    fn reserve(&mut self, ranges: &[PortRange]) -> TargetResult<Option<String>> {
        let reserved = self.0.borrow().reserved_ports.clone();
        let new: Vec<PortRange> = ranges
            .iter()
            .filter(|r| !reserved.contains(r))
            .copied()
            .collect();
        if new.is_empty() {
            return Ok(None);
        }
        let now = self.record(format!("reserve {new:?}"), |h| {
            h.reserved_ports.extend(new);
            format!("{:?}", h.reserved_ports)
        });
        Ok(Some(now))
    }
}
