//! The reconciler: brings what the node holds to the `NodePlan` by diff,
//! through narrow traits (`targets`). A restart with unchanged objects
//! writes nothing; an edit touches only what it changes. One target that
//! fails (a full map, a missing device) is logged and counted, the others
//! are still written, and the next sync retries it.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Debug,
    path::PathBuf,
};

use ferry_common::{
    Backend, PROTO_UDP, ROUTE_MODE_NATIVE, ROUTE_MODE_VXLAN, Route, ServiceKey, ServiceRange,
};

#[cfg(test)]
pub mod memory;
pub mod system;
pub mod targets;

use targets::{
    FileTarget, FlowTable, HealthServers, LinkTarget, NodeMapTarget, PortReservations, RouteMap,
    SocketTerminator, StaleFlows, Table, TargetError,
};

use crate::{
    config::PortRange,
    maps::conntrack::ConntrackSummary,
    net::Ipv4Net,
    plan::{
        DesiredFrontend, NodePlan,
        network::{KernelRoute, Links, PeerRoute, VXLAN_DEVICE},
    },
};

/// What a diff changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DiffStats {
    pub upserted: usize,
    pub removed: usize,
    pub unchanged: usize,
    /// Entries that could not be written (each logged); the rest went on.
    pub failed: usize,
}

impl DiffStats {
    pub fn changed(&self) -> usize {
        self.upserted + self.removed
    }
}

/// Bring `table` to `desired`: write what differs first, then remove what
/// is no longer wanted, so an entry that moves is never missing in
/// between. `what` names the table in logs.
pub fn apply_diff<K: Ord + Debug, V: PartialEq>(
    what: &str,
    table: &mut dyn Table<K, V>,
    desired: &BTreeMap<K, V>,
) -> DiffStats {
    match table.current() {
        Ok(current) => apply_diff_from(what, table, &current, desired),
        Err(e) => unreadable(what, &e, desired.len()),
    }
}

/// A table that could not be read: nothing of `wanted` entries written.
fn unreadable(what: &str, e: &TargetError, wanted: usize) -> DiffStats {
    tracing::error!(table = what, error = %e, "cannot read; retried at the next sync");
    DiffStats {
        failed: wanted,
        ..DiffStats::default()
    }
}

/// `apply_diff` from `current`, what the table held when read.
pub fn apply_diff_from<K: Ord + Debug, V: PartialEq>(
    what: &str,
    table: &mut dyn Table<K, V>,
    current: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
) -> DiffStats {
    let mut stats = DiffStats::default();
    for (key, want) in desired {
        if current.get(key) == Some(want) {
            stats.unchanged += 1;
            continue;
        }
        match table.upsert(key, want) {
            Ok(()) => stats.upserted += 1,
            Err(e) => {
                stats.failed += 1;
                tracing::error!(table = what, entry = ?key, error = %e, "cannot write");
            }
        }
    }
    for key in current.keys().filter(|k| !desired.contains_key(k)) {
        match table.remove(key) {
            Ok(()) => stats.removed += 1,
            Err(e) => {
                stats.failed += 1;
                tracing::error!(table = what, entry = ?key, error = %e, "cannot remove");
            }
        }
    }
    stats
}

/// What a sync looks at, per keyed map: every entry (None), or only those
/// an event touched (the rest of the plan is unchanged since the last
/// sync). The default looks at everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub frontends: Option<BTreeSet<ServiceKey>>,
    pub service_ranges: Option<BTreeSet<Ipv4Net>>,
}

impl Scope {
    /// Every entry of every map.
    pub fn all() -> Self {
        Self::default()
    }
}

/// Bring `table` to `desired` for `keys` (None: every key), against
/// `held`: what the table holds, read from it at the first sync and then
/// kept as written, so a sync never reads a large map back. What differs
/// goes to the table in one `apply` (written first, then removed); an entry
/// that fails keeps its old value in `held`, so the next full sync (a
/// resync) retries it.
fn diff_held<K: Ord + Clone + Debug, V: PartialEq + Clone>(
    what: &str,
    table: &mut dyn Table<K, V>,
    held: &mut Option<BTreeMap<K, V>>,
    desired: &BTreeMap<K, V>,
    keys: Option<&BTreeSet<K>>,
) -> DiffStats {
    let held = match held {
        Some(held) => held,
        None => match table.current() {
            Ok(current) => held.insert(current),
            Err(e) => return unreadable(what, &e, desired.len()),
        },
    };
    let mut stats = DiffStats::default();
    let mut upserts = Vec::new();
    let mut removes = Vec::new();
    let mut consider = |key: &K| match (held.get(key), desired.get(key)) {
        (Some(h), Some(d)) if h == d => stats.unchanged += 1,
        (_, Some(d)) => upserts.push((key.clone(), d)),
        (Some(_), None) => removes.push(key.clone()),
        (None, None) => {}
    };
    match keys {
        Some(keys) => keys.iter().for_each(&mut consider),
        None => {
            desired.keys().for_each(&mut consider);
            held.keys()
                .filter(|k| !desired.contains_key(k))
                .for_each(&mut consider);
        }
    }
    let failed = table.apply(&upserts, &removes);
    let mut failed_keys = BTreeSet::new();
    for (key, e) in failed {
        tracing::error!(table = what, entry = ?key, error = %e, "cannot write");
        failed_keys.insert(key);
    }
    stats.failed = failed_keys.len();
    for (key, value) in upserts {
        if !failed_keys.contains(&key) {
            held.insert(key, value.clone());
            stats.upserted += 1;
        }
    }
    for key in removes {
        if !failed_keys.contains(&key) {
            held.remove(&key);
            stats.removed += 1;
        }
    }
    stats
}

/// What the reconciler writes to.
pub struct Targets {
    pub services: Box<dyn Table<ServiceKey, DesiredFrontend>>,
    /// Service CIDRs and allocated ClusterIPs (`ferry_svc_cidrs`).
    pub service_ranges: Box<dyn Table<Ipv4Net, ServiceRange>>,
    pub node: Box<dyn NodeMapTarget>,
    pub routes: Box<dyn RouteMap>,
    pub kernel_routes: Box<dyn Table<Ipv4Net, KernelRoute>>,
    pub flows: Box<dyn FlowTable>,
    /// Connected UDP sockets translated at connect() to a backend that left.
    pub sockets: Box<dyn SocketTerminator>,
    pub links: Box<dyn LinkTarget>,
    pub files: Box<dyn FileTarget>,
    pub health: Box<dyn HealthServers>,
    pub ports: Box<dyn PortReservations>,
}

/// What went with the UDP backends that left.
#[derive(Debug, Default)]
struct Departed {
    flows: usize,
    sockets: usize,
}

/// What one reconcile did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub services: DiffStats,
    /// UDP flows removed because their backend left.
    pub stale_flows: usize,
    /// Connected UDP sockets terminated because their backend left.
    pub terminated_sockets: usize,
    pub service_ranges: DiffStats,
    pub routes: DiffStats,
    pub kernel_routes: DiffStats,
    /// Where the conflist was written, when it changed.
    pub conflist: Option<PathBuf>,
    /// Targets that failed as a whole (each logged).
    pub failures: usize,
}

impl Report {
    /// Entries and targets that could not be written (retried at the next
    /// sync); 0: the node holds the plan.
    pub fn failed(&self) -> usize {
        self.services.failed
            + self.service_ranges.failed
            + self.routes.failed
            + self.kernel_routes.failed
            + self.failures
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(
        "the interface {0} does not exist in this network namespace; pass --uplink with the node's interface towards the other nodes"
    )]
    NoInterface(String),
    #[error("creating the VXLAN device {device} failed: {source}")]
    Vxlan { device: String, source: TargetError },
    #[error("attaching {program} to {interface} failed: {source}")]
    Attach {
        program: &'static str,
        interface: String,
        source: TargetError,
    },
    #[error("reading the pinned links failed: {0}")]
    Pinned(TargetError),
}

pub struct Reconciler {
    targets: Targets,
    /// What the last successful link reconcile made: links follow the
    /// configuration, so they are redone only when it changes.
    applied_links: Option<Links>,
    /// Reserved port ranges already added.
    applied_reserved: Option<Vec<PortRange>>,
    /// UDP backends that left a frontend's set while terminating: their
    /// flows drain, and go once the endpoint leaves the slice.
    draining_flows: DrainingFlows,
    /// What the service maps hold (None until the first sync reads them).
    held_frontends: Option<BTreeMap<ServiceKey, DesiredFrontend>>,
    /// What `ferry_svc_cidrs` holds (likewise).
    held_ranges: Option<BTreeMap<Ipv4Net, ServiceRange>>,
}

/// Per UDP frontend, the backends no longer in its set whose flows are kept
/// while they terminate.
pub type DrainingFlows = BTreeMap<ServiceKey, BTreeSet<Backend>>;

impl Reconciler {
    pub fn new(targets: Targets) -> Self {
        Self {
            targets,
            applied_links: None,
            applied_reserved: None,
            draining_flows: DrainingFlows::new(),
            held_frontends: None,
            held_ranges: None,
        }
    }

    /// One step of the agent's periodic, incremental garbage collection:
    /// remove the expired flows among the next slice of conntrack
    /// (`steps_per_pass` steps cover a full map). Returns, when the step
    /// ended a pass over the whole map, what that pass saw of the flows
    /// left (None mid-pass and if it failed), for the metrics.
    pub fn collect_garbage(
        &mut self,
        now_ns: u64,
        steps_per_pass: u32,
    ) -> Option<ConntrackSummary> {
        match self.targets.flows.collect_garbage(now_ns, steps_per_pass) {
            Ok(report) => {
                if report.removed > 0 {
                    tracing::debug!(
                        removed = report.removed,
                        walked = report.walked,
                        "conntrack garbage collected"
                    );
                }
                report.summary
            }
            Err(e) => {
                tracing::warn!(error = %e, "conntrack garbage collection failed");
                None
            }
        }
    }

    /// Make the network-side devices and links exactly `links`: create the
    /// VXLAN device, detach pinned links not wanted (an XDP link of another
    /// mode, a VXLAN link after a move to native), then attach (or re-point)
    /// each wanted one. Idempotent and safe while traffic flows.
    pub fn reconcile_links(&mut self, links: &Links) -> Result<(), LinkError> {
        let target = &mut self.targets.links;
        // A wrong uplink is refused before anything is created.
        let device = links.vxlan_device.as_ref();
        for a in links.attachments.values() {
            let ours = device.is_some_and(|d| d.name == a.interface);
            if !ours && target.ifindex(&a.interface).is_none() {
                return Err(LinkError::NoInterface(a.interface.clone()));
            }
        }
        if let Some(device) = device {
            target
                .ensure_vxlan_device(device)
                .map_err(|source| LinkError::Vxlan {
                    device: device.name.clone(),
                    source,
                })?;
        }
        for pin in target.pinned().map_err(LinkError::Pinned)? {
            if !links.attachments.contains_key(&pin)
                && let Err(e) = target.detach(&pin)
            {
                tracing::warn!(pin, error = %e, "cannot detach a link no longer wanted");
            }
        }
        // A VXLAN device left from an earlier run in VXLAN mode.
        if device.is_none()
            && target.ifindex(VXLAN_DEVICE).is_some()
            && let Err(e) = target.remove_device(VXLAN_DEVICE)
        {
            tracing::warn!(device = VXLAN_DEVICE, error = %e, "cannot remove the VXLAN device no longer used");
        }
        for (pin, a) in &links.attachments {
            target.attach(pin, a).map_err(|source| LinkError::Attach {
                program: a.program,
                interface: a.interface.clone(),
                source,
            })?;
        }
        self.applied_links = Some(links.clone());
        Ok(())
    }

    /// Keep the node's own sockets off `ranges` (once per change of them).
    /// Not fatal: forwarding works without it; only a node socket that
    /// happens to pick one of those ports would suffer.
    pub fn reserve_ports(&mut self, ranges: &[PortRange]) {
        if self.applied_reserved.as_deref() == Some(ranges) {
            return;
        }
        match self.targets.ports.reserve(ranges) {
            Ok(Some(now)) => tracing::info!(
                ip_local_reserved_ports = %now,
                "reserved the source-NAT and NodePort ranges from the node's automatic port choice"
            ),
            Ok(None) => tracing::debug!("source-NAT and NodePort ranges already reserved"),
            Err(e) => tracing::warn!("{e}"),
        }
        self.applied_reserved = Some(ranges.to_vec());
    }

    /// Route-map entries with each device's ifindex; a route whose device
    /// is missing is left out (and counted).
    fn route_entries(
        &self,
        routes: &BTreeMap<Ipv4Net, PeerRoute>,
    ) -> (BTreeMap<Ipv4Net, Route>, usize) {
        let mut missing = 0;
        // Every route goes through one device (the uplink or the VXLAN
        // device): look each up once, not once per peer.
        let mut ifindexes: BTreeMap<&str, Option<u32>> = BTreeMap::new();
        let entries = routes
            .iter()
            .filter_map(|(net, r)| {
                let ifindex = *ifindexes
                    .entry(r.device.as_str())
                    .or_insert_with(|| self.targets.links.ifindex(&r.device));
                let Some(ifindex) = ifindex else {
                    tracing::warn!(cidr = %net, device = r.device, "device missing; route left out");
                    missing += 1;
                    return None;
                };
                let route = Route {
                    node_addr: r.node_addr.octets(),
                    mode: if r.vxlan_vni.is_some() {
                        ROUTE_MODE_VXLAN
                    } else {
                        ROUTE_MODE_NATIVE
                    },
                    ifindex,
                    vni: r.vxlan_vni.unwrap_or(0),
                };
                Some((*net, route))
            })
            .collect();
        (entries, missing)
    }

    /// The service maps, then the UDP flows whose backend left: kube-proxy
    /// clears them too, or a client that keeps its source port (a DNS
    /// resolver) would keep reaching the old backend for as long as it
    /// keeps sending. Removed only after the new backend set is in place,
    /// so the client's next packet draws from it. TCP flows are left alone
    /// (below). Likewise, at the same moment, the connected UDP sockets
    /// that socket LB translated to those backends are terminated, so the
    /// application reconnects and draws from the new set; a draining
    /// (terminating) backend keeps its sockets as it keeps its flows.
    fn reconcile_services(
        &mut self,
        desired: &BTreeMap<ServiceKey, DesiredFrontend>,
        draining: &BTreeSet<Backend>,
        keys: Option<&BTreeSet<ServiceKey>>,
        departed: &mut Departed,
    ) -> DiffStats {
        let services = &mut *self.targets.services;
        if self.held_frontends.is_none() {
            match services.current() {
                Ok(current) => self.held_frontends = Some(current),
                Err(e) => return unreadable("services", &e, desired.len()),
            }
        }
        let held = self.held_frontends.as_ref().expect("read above");
        // The UDP frontends looked at, as they were, and the backends
        // draining among them.
        let looked_at = |k: &&ServiceKey| keys.is_none_or(|keys| keys.contains(k));
        let udp = |(k, f): (&ServiceKey, &DesiredFrontend)| {
            (k.protocol == PROTO_UDP).then(|| (*k, f.clone()))
        };
        // Only the keys looked at: a sync of one change costs one change.
        let before: BTreeMap<ServiceKey, DesiredFrontend> = match keys {
            Some(keys) => keys
                .iter()
                .filter_map(|k| held.get_key_value(k))
                .filter_map(udp)
                .collect(),
            None => held.iter().filter_map(udp).collect(),
        };
        let (held_draining, kept_draining): (DrainingFlows, DrainingFlows) =
            std::mem::take(&mut self.draining_flows)
                .into_iter()
                .partition(|(k, _)| looked_at(&k));
        let stats = diff_held(
            "services",
            services,
            &mut self.held_frontends,
            desired,
            keys,
        );
        let (stale, mut still_draining) =
            stale_udp_flows(&before, desired, draining, &held_draining);
        still_draining.extend(kept_draining);
        self.draining_flows = still_draining;
        if !stale.is_empty() {
            match self.targets.flows.remove_flows(&stale) {
                Ok(n) => departed.flows = n,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot remove the UDP flows of departed backends; they end when they expire")
                }
            }
            match self.targets.sockets.terminate(&stale) {
                Ok(n) => departed.sockets = n,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot terminate the connected UDP sockets of departed backends; they keep sending to the old backend until the application reconnects")
                }
            }
        }
        stats
    }

    /// Bring everything to `plan`.
    pub fn reconcile(&mut self, plan: &NodePlan) -> Report {
        self.reconcile_scoped(plan, &Scope::all())
    }

    /// Bring the node to `plan`, looking at the frontends and service
    /// ranges of `scope` only (the rest of those maps already holds the
    /// plan); links, routes and the rest are small and always compared.
    pub fn reconcile_scoped(&mut self, plan: &NodePlan, scope: &Scope) -> Report {
        let frontend_keys = scope.frontends.as_ref();
        let range_keys = scope.service_ranges.as_ref();
        let mut report = Report::default();
        let mut failed = |what: &str, e: &dyn std::fmt::Display| {
            tracing::warn!(target_name = what, error = %e, "writing failed; retried at the next change or resync");
            report.failures += 1;
        };
        // Links follow the configuration; they are redone when it changes,
        // or when the VXLAN device went away (someone deleted it).
        let device_gone = plan
            .links
            .vxlan_device
            .as_ref()
            .is_some_and(|d| self.targets.links.ifindex(&d.name).is_none());
        if (device_gone || self.applied_links.as_ref() != Some(&plan.links))
            && let Err(e) = self.reconcile_links(&plan.links)
        {
            failed("links", &e);
        }
        if let Err(e) = self.targets.node.set(&plan.node) {
            failed(
                "node map (external traffic to other nodes' backends is dropped until it is written)",
                &e,
            );
        }
        let mut departed = Departed::default();
        report.services = self.reconcile_services(
            &plan.frontends,
            &plan.draining,
            frontend_keys,
            &mut departed,
        );
        report.stale_flows = departed.flows;
        report.terminated_sockets = departed.sockets;
        // After the frontends: a new Service's ClusterIP is served before it
        // stops being an unallocated address.
        report.service_ranges = diff_held(
            "service ranges",
            &mut *self.targets.service_ranges,
            &mut self.held_ranges,
            &plan.service_ranges,
            range_keys,
        );
        let (routes, missing) = self.route_entries(&plan.routes);
        match self.targets.routes.sync(&routes) {
            Ok(s) => {
                report.routes = DiffStats {
                    upserted: s.upserted,
                    removed: s.removed,
                    unchanged: routes.len() - s.upserted,
                    failed: missing,
                }
            }
            Err(e) => failed("route map", &e),
        }
        report.kernel_routes = apply_diff(
            "kernel routes",
            &mut *self.targets.kernel_routes,
            &plan.kernel_routes,
        );
        self.targets.health.serve(&plan.health_checks);
        if let Some(conflist) = &plan.conflist {
            let path = conflist.dir.join(crate::cni::CONFLIST_NAME);
            let bytes = serde_json::to_vec_pretty(&conflist.content).unwrap_or_default();
            if self.targets.files.read(&path).as_deref() != Some(&bytes[..]) {
                match self
                    .targets
                    .files
                    .write_conflist(&conflist.dir, &conflist.content)
                {
                    Ok(path) => report.conflist = Some(path),
                    Err(e) => failed("CNI config", &e),
                }
            }
        }
        self.reserve_ports(&plan.reserved_ports);
        report
    }
}

/// The UDP frontends' backends in `current` (or still draining from an
/// earlier sync, `held`) that `desired` no longer has (all of them for a
/// frontend that is gone), except those `draining`: a terminating endpoint
/// keeps its flows until it leaves the EndpointSlice (connection-preserving
/// drain). Returns the stale flows and what drains now. A TCP connection is
/// left to its endpoints: a terminating pod still finishes it, and one that
/// is gone resets or times it out, so the client reconnects to a current
/// backend.
pub fn stale_udp_flows(
    current: &BTreeMap<ServiceKey, DesiredFrontend>,
    desired: &BTreeMap<ServiceKey, DesiredFrontend>,
    draining: &BTreeSet<Backend>,
    held: &DrainingFlows,
) -> (Vec<StaleFlows>, DrainingFlows) {
    let mut had: DrainingFlows = held.clone();
    for (key, frontend) in current.iter().filter(|(k, _)| k.protocol == PROTO_UDP) {
        had.entry(*key)
            .or_default()
            .extend(frontend.backends.iter().copied());
    }
    let mut stale = Vec::new();
    let mut still_draining = DrainingFlows::new();
    for (key, backends) in had {
        let kept = desired.get(&key).map_or(&[][..], |d| &d.backends[..]);
        for backend in backends.into_iter().filter(|b| !kept.contains(b)) {
            if draining.contains(&backend) {
                still_draining.entry(key).or_default().insert(backend);
            } else {
                stale.push(StaleFlows {
                    addr: key.addr,
                    port: key.port,
                    protocol: key.protocol,
                    backend,
                });
            }
        }
    }
    // The same address and port in two scopes is one set of flows.
    stale.sort();
    stale.dedup();
    (stale, still_draining)
}

#[cfg(test)]
mod tests;
