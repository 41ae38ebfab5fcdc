//! What the reconciler writes to, each behind a narrow trait: the real
//! pinned maps, links and files (`system`), or in-memory stand-ins that
//! record every write (`memory`), so every decision is unit-tested without
//! root.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use ferry_common::{Backend, Route};

use crate::{
    config::PortRange,
    maps::routes::RouteStats,
    net::Ipv4Net,
    plan::{
        HealthCheck, NodeAddress,
        network::{Attachment, VxlanDevice},
    },
};

/// A target's failure, with the underlying error's own advice.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct TargetError(Box<dyn std::error::Error + Send + Sync>);

impl TargetError {
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Box::new(e))
    }

    pub fn msg(message: impl Into<String>) -> Self {
        Self(message.into().into())
    }
}

pub type TargetResult<T> = Result<T, TargetError>;

/// A keyed table the reconciler brings to the plan by diff: the service
/// maps, the node's kernel routes.
pub trait Table<K, V> {
    fn current(&self) -> TargetResult<BTreeMap<K, V>>;
    fn upsert(&mut self, key: &K, value: &V) -> TargetResult<()>;
    fn remove(&mut self, key: &K) -> TargetResult<()>;

    /// Write `upserts`, then remove `removes`; the entries that failed,
    /// each with its error (the others went on). A table that can write in
    /// batches does (the service maps); this one goes entry by entry.
    fn apply(&mut self, upserts: &[(K, &V)], removes: &[K]) -> Vec<(K, TargetError)>
    where
        K: Clone,
    {
        let mut failed = Vec::new();
        for (key, value) in upserts {
            if let Err(e) = self.upsert(key, value) {
                failed.push((key.clone(), e));
            }
        }
        for key in removes {
            if let Err(e) = self.remove(key) {
                failed.push((key.clone(), e));
            }
        }
        failed
    }
}

/// What a garbage collection did and saw.
pub use crate::maps::conntrack::GcReport;

/// A flow to remove: tracked connections of `protocol` to the frontend
/// `addr:port` that were sent to `backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StaleFlows {
    /// Network order.
    pub addr: [u8; 4],
    pub port: u16,
    pub protocol: u8,
    pub backend: Backend,
}

/// Ferry's conntrack, as far as the reconciler changes it.
pub trait FlowTable {
    /// Remove both entries of every flow `stale` names; returns how many
    /// flows went.
    fn remove_flows(&mut self, stale: &[StaleFlows]) -> TargetResult<usize>;
    /// One step of the incremental garbage collection: remove the expired
    /// flows (at `now_ns`) among the next slice of the table, sized so
    /// that `steps_per_pass` steps cover a full table; returns how many
    /// entries went and, when the step ended a pass, what the pass saw of
    /// the flows left.
    fn collect_garbage(&mut self, now_ns: u64, steps_per_pass: u32) -> TargetResult<GcReport>;
}

/// The sockets socket-level load balancing connected to a backend, as far
/// as the reconciler ends them.
pub trait SocketTerminator {
    /// Terminate the connected UDP sockets that socket LB translated from
    /// the frontend of a flow in `stale` to its backend, which left (the
    /// application sees ECONNABORTED and reconnects to a current backend),
    /// and drop their reverse entries; returns how many were terminated.
    fn terminate(&mut self, stale: &[StaleFlows]) -> TargetResult<usize>;
}

/// The route map, written whole (its own diff keeps a moved CIDR routed
/// throughout).
pub trait RouteMap {
    fn sync(&mut self, desired: &BTreeMap<Ipv4Net, Route>) -> TargetResult<RouteStats>;
}

/// This node's entry in the node map.
pub trait NodeMapTarget {
    fn set(&mut self, node: &NodeAddress) -> TargetResult<()>;
}

/// Network devices and the pinned links of the network-side programs.
pub trait LinkTarget {
    fn ifindex(&self, name: &str) -> Option<u32>;
    fn ensure_vxlan_device(&mut self, device: &VxlanDevice) -> TargetResult<()>;
    /// Delete a device ferry made (when it exists).
    fn remove_device(&mut self, name: &str) -> TargetResult<()>;
    /// The pin names of the network-side links that exist now.
    fn pinned(&self) -> TargetResult<BTreeSet<String>>;
    /// Attach (or point an existing pinned link at the loaded program).
    fn attach(&mut self, pin: &str, attachment: &Attachment) -> TargetResult<()>;
    /// Remove the pinned link, which detaches its program.
    fn detach(&mut self, pin: &str) -> TargetResult<()>;
}

/// Files the agent writes for others (the CNI conflist).
pub trait FileTarget {
    fn read(&self, path: &Path) -> Option<Vec<u8>>;
    /// Write atomically; returns where it went.
    fn write_conflist(&mut self, dir: &Path, content: &serde_json::Value) -> TargetResult<PathBuf>;
}

/// The healthCheckNodePort servers.
pub trait HealthServers {
    fn serve(&mut self, checks: &BTreeMap<u16, HealthCheck>);
}

/// `net.ipv4.ip_local_reserved_ports`.
pub trait PortReservations {
    /// Add the ranges; Some(new value) when something was added.
    fn reserve(&mut self, ranges: &[PortRange]) -> TargetResult<Option<String>>;
}
