//! In-memory targets for unit tests: one shared `Host` that every target
//! handle writes to, so a test reconciles through `Targets` and then reads
//! what a node would hold.
use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    rc::Rc,
};

use ferry_common::{Route, ServiceKey};

use super::{
    Targets,
    targets::{
        FileTarget, HealthServers, LinkTarget, NodeMapTarget, PortReservations, RouteMap, Table,
        TargetError, TargetResult,
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
    /// Frontends whose write fails, to test partial failure.
    pub poisoned: Vec<ServiceKey>,
    pub node: Option<NodeAddress>,
    pub routes: BTreeMap<Ipv4Net, Route>,
    pub kernel_routes: BTreeMap<Ipv4Net, KernelRoute>,
    /// Interfaces by name -> ifindex.
    pub interfaces: BTreeMap<String, u32>,
    pub vxlan_devices: BTreeMap<String, VxlanDevice>,
    /// Pinned network-side links.
    pub links: BTreeMap<String, Attachment>,
    pub files: BTreeMap<PathBuf, Vec<u8>>,
    pub health_checks: BTreeMap<u16, HealthCheck>,
    pub reserved_ports: Vec<PortRange>,
    /// Every write, in order ("services upsert ...", "links detach ...").
    pub writes: Vec<String>,
}

impl Host {
    fn write(&mut self, what: String) {
        self.writes.push(what);
    }
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
            services: Box::new(self.clone()),
            node: Box::new(self.clone()),
            routes: Box::new(self.clone()),
            kernel_routes: Box::new(self.clone()),
            links: Box::new(self.clone()),
            files: Box::new(self.clone()),
            health: Box::new(self.clone()),
            ports: Box::new(self.clone()),
        }
    }

    /// Take the writes recorded so far.
    pub fn take_writes(&self) -> Vec<String> {
        std::mem::take(&mut self.0.borrow_mut().writes)
    }
}

impl Table<ServiceKey, DesiredFrontend> for MemoryHost {
    fn current(&self) -> TargetResult<BTreeMap<ServiceKey, DesiredFrontend>> {
        Ok(self.0.borrow().frontends.clone())
    }

    fn upsert(&mut self, key: &ServiceKey, frontend: &DesiredFrontend) -> TargetResult<()> {
        let mut host = self.0.borrow_mut();
        if host.poisoned.contains(key) {
            return Err(TargetError::msg(format!("{} is poisoned", frontend.name)));
        }
        host.write(format!("services upsert {}", frontend.name));
        host.frontends.insert(*key, frontend.clone());
        Ok(())
    }

    fn remove(&mut self, key: &ServiceKey) -> TargetResult<()> {
        let mut host = self.0.borrow_mut();
        host.write(format!("services remove {key:?}"));
        host.frontends.remove(key);
        Ok(())
    }
}

impl NodeMapTarget for MemoryHost {
    fn set(&mut self, node: &NodeAddress) -> TargetResult<()> {
        let mut host = self.0.borrow_mut();
        if host.node.as_ref() != Some(node) {
            host.write(format!("node {node:?}"));
            host.node = Some(*node);
        }
        Ok(())
    }
}

impl RouteMap for MemoryHost {
    fn sync(&mut self, desired: &BTreeMap<Ipv4Net, Route>) -> TargetResult<RouteStats> {
        let mut host = self.0.borrow_mut();
        let upserted = desired
            .iter()
            .filter(|(n, r)| host.routes.get(n) != Some(r))
            .count();
        let removed = host
            .routes
            .keys()
            .filter(|n| !desired.contains_key(n))
            .count();
        if upserted + removed > 0 {
            host.write(format!("route map {upserted} upserted {removed} removed"));
        }
        host.routes = desired.clone();
        Ok(RouteStats { upserted, removed })
    }
}

impl Table<Ipv4Net, KernelRoute> for MemoryHost {
    fn current(&self) -> TargetResult<BTreeMap<Ipv4Net, KernelRoute>> {
        Ok(self.0.borrow().kernel_routes.clone())
    }

    fn upsert(&mut self, net: &Ipv4Net, route: &KernelRoute) -> TargetResult<()> {
        let mut host = self.0.borrow_mut();
        host.write(format!("kernel route replace {net}"));
        host.kernel_routes.insert(*net, route.clone());
        Ok(())
    }

    fn remove(&mut self, net: &Ipv4Net) -> TargetResult<()> {
        let mut host = self.0.borrow_mut();
        host.write(format!("kernel route del {net}"));
        host.kernel_routes.remove(net);
        Ok(())
    }
}

impl LinkTarget for MemoryHost {
    fn ifindex(&self, name: &str) -> Option<u32> {
        self.0.borrow().interfaces.get(name).copied()
    }

    fn ensure_vxlan_device(&mut self, device: &VxlanDevice) -> TargetResult<()> {
        let mut host = self.0.borrow_mut();
        if !host.interfaces.contains_key(&device.name) {
            host.write(format!("device add {}", device.name));
            let index = 100 + host.interfaces.len() as u32;
            host.interfaces.insert(device.name.clone(), index);
            host.vxlan_devices
                .insert(device.name.clone(), device.clone());
        }
        Ok(())
    }

    fn pinned(&self) -> TargetResult<BTreeSet<String>> {
        Ok(self.0.borrow().links.keys().cloned().collect())
    }

    fn attach(&mut self, pin: &str, attachment: &Attachment) -> TargetResult<()> {
        let mut host = self.0.borrow_mut();
        host.write(format!("links attach {pin}"));
        host.links.insert(pin.to_string(), attachment.clone());
        Ok(())
    }

    fn detach(&mut self, pin: &str) -> TargetResult<()> {
        let mut host = self.0.borrow_mut();
        host.write(format!("links detach {pin}"));
        host.links.remove(pin);
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
        let mut host = self.0.borrow_mut();
        host.write(format!("file {}", path.display()));
        host.files.insert(path.clone(), bytes);
        Ok(path)
    }
}

impl HealthServers for MemoryHost {
    fn serve(&mut self, checks: &BTreeMap<u16, HealthCheck>) {
        let mut host = self.0.borrow_mut();
        if &host.health_checks != checks {
            host.write(format!("health checks {:?}", checks.keys()));
            host.health_checks = checks.clone();
        }
    }
}

impl PortReservations for MemoryHost {
    fn reserve(&mut self, ranges: &[PortRange]) -> TargetResult<Option<String>> {
        let mut host = self.0.borrow_mut();
        let new: Vec<PortRange> = ranges
            .iter()
            .filter(|r| !host.reserved_ports.contains(r))
            .copied()
            .collect();
        if new.is_empty() {
            return Ok(None);
        }
        host.write(format!("reserve {new:?}"));
        host.reserved_ports.extend(new);
        Ok(Some(format!("{:?}", host.reserved_ports)))
    }
}
