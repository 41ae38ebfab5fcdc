//! The plan kept between syncs: each Service's part of it is computed from
//! that Service and its EndpointSlices alone, so a change re-plans only the
//! Services it touched and says which frontends and service ranges moved.
//! With 100,000 Services a changed endpoint costs one Service's planning,
//! not the cluster's. `plan::plan` is this planner run once over
//! everything, so the full and the incremental path cannot drift apart.
//!
//! Where two Services claim the same frontend (two Services with one
//! externalIP and port) or health-check port, the first by
//! namespace/name holds it, whatever order the objects arrive in; when it
//! lets go, the next one takes over.
use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet, HashSet},
    net::Ipv4Addr,
    ops::Range,
};

use ferry_common::{Backend, SERVICE_RANGE_ALLOCATED, ServiceKey, ServiceRange};
use k8s_openapi::api::core::v1::Service;

use super::{
    HealthCheck, NodeAddress, NodePlan, Objects, PlanConfig, Problem, ServiceObject, SliceObject,
    categorize, endpoints, frontends, health, network, nodes, problem, service_cidrs, unsupported,
};
use crate::{net::Ipv4Net, reconcile::Scope};

/// A Service by namespace and name (an EndpointSlice belongs to the one
/// its `kubernetes.io/service-name` label names).
pub type ServiceId = (String, String);

/// What changed since the last update, as a source knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Changed {
    /// Anything may have: plan from scratch. The objects are all of them.
    #[default]
    Everything,
    /// Only these. The objects hold each listed Service that exists and
    /// all of its EndpointSlices; every Node if `nodes`; every
    /// ServiceCIDR if `service_cidrs`.
    Some {
        services: BTreeSet<ServiceId>,
        nodes: bool,
        service_cidrs: bool,
    },
}

/// A Service's id.
pub fn service_id(svc: &Service) -> ServiceId {
    let meta = &svc.metadata;
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

/// What one Service (with its slices) makes.
#[derive(Debug, Default)]
struct ServicePart {
    frontends: Vec<(ServiceKey, super::DesiredFrontend)>,
    health_checks: BTreeMap<u16, HealthCheck>,
    cluster_ips: Vec<Ipv4Addr>,
    draining: Vec<Backend>,
    problems: Vec<Problem>,
}

impl ServicePart {
    /// Whether the planner keeps it (a Service that makes nothing and
    /// has no problem is as if it were not there).
    fn exists(&self) -> bool {
        !(self.frontends.is_empty()
            && self.health_checks.is_empty()
            && self.cluster_ips.is_empty()
            && self.problems.is_empty())
    }
}

/// Sorted `items` counted, as `count_up` would have.
fn counted<K: Ord + Copy>(items: Vec<K>) -> BTreeMap<K, usize> {
    let mut counts: Vec<(K, usize)> = Vec::new();
    for k in items {
        match counts.last_mut() {
            Some((last, n)) if *last == k => *n += 1,
            _ => counts.push((k, 1)),
        }
    }
    counts.into_iter().collect()
}

/// The ids of the Services at `at` (ascending) in `planned`.
fn claimants(at: impl Iterator<Item = usize>, planned: &[(ServiceId, ServicePart)]) -> Claimants {
    let mut at: Vec<usize> = at.collect();
    // A Service claiming a key twice is one claimant.
    at.dedup();
    Claimants(at.into_iter().map(|i| planned[i].0.clone()).collect())
}

/// `a` and `b`, on two threads when `parallel`.
fn join<A: Send, B>(parallel: bool, a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B) -> (A, B) {
    if !parallel {
        return (a(), b());
    }
    std::thread::scope(|scope| {
        let a = scope.spawn(a);
        let b = b();
        (a.join().expect("planning does not panic"), b)
    })
}

/// How many Services claim each of a set of things, and which.
type Claims<K> = BTreeMap<K, Claimants>;

/// The Services claiming one thing, sorted: nearly always one, so a sorted
/// `Vec` (48 bytes for one) rather than a `BTreeSet` (a 500-byte node).
#[derive(Debug, Default)]
struct Claimants(Vec<ServiceId>);

impl Claimants {
    fn insert(&mut self, id: ServiceId) {
        if let Err(at) = self.0.binary_search(&id) {
            self.0.insert(at, id);
        }
    }

    fn remove(&mut self, id: &ServiceId) {
        if let Ok(at) = self.0.binary_search(id) {
            self.0.remove(at);
        }
    }

    /// The holder: the first by namespace/name.
    fn first(&self) -> Option<&ServiceId> {
        self.0.first()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What `update` did.
#[derive(Debug, Default)]
pub struct Update {
    /// What the reconciler has to look at.
    pub scope: Scope,
    /// Problems that appeared with this update (each is reported once,
    /// and again only after it went away and came back).
    pub new_problems: Vec<Problem>,
}

/// `update` needs every object (the node's own addresses or zone changed,
/// which every Service's frontends depend on): call it again with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeedsEverything;

/// The node plan, kept up to date by Service.
pub struct Planner {
    cfg: PlanConfig,
    plan: NodePlan,
    parts: BTreeMap<ServiceId, ServicePart>,
    frontend_claims: Claims<ServiceKey>,
    health_claims: Claims<u16>,
    cluster_ips: BTreeMap<Ipv4Addr, usize>,
    draining: BTreeMap<Backend, usize>,
    /// This node's NodePort addresses and zone: every Service depends on them.
    nodeport_addresses: Vec<Ipv4Addr>,
    zone: Option<String>,
    cidrs: BTreeSet<Ipv4Net>,
    node_problems: Vec<Problem>,
    cidr_problems: Vec<Problem>,
}

/// The problems of `now` not in `before`.
fn appeared(before: &[Problem], now: &[Problem]) -> Vec<Problem> {
    let before: BTreeSet<&Problem> = before.iter().collect();
    now.iter()
        .filter(|p| !before.contains(p))
        .cloned()
        .collect()
}

impl Planner {
    pub fn new(cfg: &PlanConfig) -> Self {
        let plan = NodePlan {
            frontends: BTreeMap::new(),
            service_ranges: BTreeMap::new(),
            health_checks: BTreeMap::new(),
            node: NodeAddress {
                addr: None,
                snat_ports: cfg.snat_ports,
            },
            pod_cidr: None,
            peers: BTreeMap::new(),
            links: cfg.links(),
            routes: BTreeMap::new(),
            kernel_routes: BTreeMap::new(),
            conflist: None,
            reserved_ports: cfg.reserved_ports(),
            draining: BTreeSet::new(),
        };
        Self {
            cfg: cfg.clone(),
            plan,
            parts: BTreeMap::new(),
            frontend_claims: Claims::new(),
            health_claims: Claims::new(),
            cluster_ips: BTreeMap::new(),
            draining: BTreeMap::new(),
            nodeport_addresses: Vec::new(),
            zone: None,
            cidrs: BTreeSet::new(),
            node_problems: Vec::new(),
            cidr_problems: Vec::new(),
        }
    }

    pub fn plan(&self) -> &NodePlan {
        &self.plan
    }

    pub fn into_plan(self) -> NodePlan {
        self.plan
    }

    /// Every problem known now.
    pub fn problems(&self) -> Vec<Problem> {
        let parts = self.parts.values().flat_map(|p| p.problems.iter());
        let global = self.node_problems.iter().chain(&self.cidr_problems);
        parts.chain(global).cloned().collect()
    }

    /// Bring the plan to `objects` after `changed`.
    pub fn update(
        &mut self,
        objects: &Objects,
        changed: &Changed,
    ) -> Result<Update, NeedsEverything> {
        match changed {
            Changed::Everything => Ok(self.update_everything(objects)),
            Changed::Some {
                services,
                nodes,
                service_cidrs,
            } => {
                let mut new_problems = Vec::new();
                if *nodes && self.update_nodes(objects, &mut new_problems) {
                    return Err(NeedsEverything);
                }
                let only: HashSet<IdRef> = services
                    .iter()
                    .map(|(ns, name)| (ns.as_str(), name.as_str()))
                    .collect();
                // A listed Service with neither object left: planned as gone.
                let listed: Vec<IdRef> = services
                    .iter()
                    .map(|(ns, name)| (ns.as_str(), name.as_str()))
                    .collect();
                let inputs = group(objects, Some(&only), &listed);
                let planned = self.plan_many(&inputs);
                let (frontends, ranges) = self.replace_many(planned, &mut new_problems);
                // New service CIDRs: the ranges' diff looks at everything.
                let service_ranges = if *service_cidrs {
                    self.update_cidrs(objects, &mut new_problems);
                    None
                } else {
                    Some(ranges)
                };
                let scope = Scope {
                    frontends: Some(frontends),
                    service_ranges,
                };
                Ok(Update {
                    scope,
                    new_problems,
                })
            }
        }
    }

    /// Plan from scratch.
    fn update_everything(&mut self, objects: &Objects) -> Update {
        let before = self.problems();
        let old = std::mem::replace(self, Self::new(&self.cfg));
        let mut ignored = Vec::new();
        self.update_nodes(objects, &mut ignored);
        // The old plan goes on another CPU meanwhile (freeing 100,000
        // Services' parts took a tenth of a full plan).
        let ((), inputs) = join(
            old.parts.len() >= PARALLEL_FROM,
            move || drop(old),
            || group(objects, None, &[]),
        );
        let planned = self.plan_many(&inputs);
        self.place_all(planned);
        self.update_cidrs(objects, &mut ignored);
        Update {
            scope: Scope::all(),
            new_problems: appeared(&before, &self.problems()),
        }
    }

    /// Every Service's part, in bulk, in place of all those held: what
    /// `replace` does one Service at a time, but with sorts instead of a
    /// tree walk per claim (a full plan of 100,000 Services spent 0.7 s in
    /// `replace`). `planned` is in id order, so the first claimant of a key
    /// is the one that sorts first. The service ranges are left to the
    /// caller.
    fn place_all(&mut self, planned: Vec<(ServiceId, ServicePart)>) {
        let mut fronts: Vec<(ServiceKey, usize, usize)> = Vec::new();
        let mut health: Vec<(u16, usize)> = Vec::new();
        let mut ips: Vec<Ipv4Addr> = Vec::new();
        let mut draining: Vec<Backend> = Vec::new();
        for (i, (_, part)) in planned.iter().enumerate() {
            fronts.extend(
                part.frontends
                    .iter()
                    .enumerate()
                    .map(|(j, (k, _))| (*k, i, j)),
            );
            health.extend(part.health_checks.keys().map(|p| (*p, i)));
            ips.extend(&part.cluster_ips);
            draining.extend(&part.draining);
        }
        fronts.sort_unstable();
        health.sort_unstable();
        ips.sort_unstable();
        draining.sort_unstable();
        // The plan's values on another CPU while this one writes down the
        // claims: each is a walk over every frontend.
        let ((frontends, cluster_ips, draining), frontend_claims) = join(
            planned.len() >= PARALLEL_FROM,
            || {
                // A key's first claimant holds it: `planned` is in id order.
                let frontends: BTreeMap<_, _> = fronts
                    .chunk_by(|a, b| a.0 == b.0)
                    .map(|claims| {
                        let (k, i, j) = claims[0];
                        (k, planned[i].1.frontends[j].1.clone())
                    })
                    .collect();
                (frontends, counted(ips), counted(draining))
            },
            || {
                fronts
                    .chunk_by(|a, b| a.0 == b.0)
                    .map(|claims| (claims[0].0, claimants(claims.iter().map(|c| c.1), &planned)))
                    .collect::<Claims<ServiceKey>>()
            },
        );
        let mut health_checks = BTreeMap::new();
        let mut health_claims = Claims::new();
        for claims in health.chunk_by(|a, b| a.0 == b.0) {
            let (p, i) = claims[0];
            health_checks.insert(p, planned[i].1.health_checks[&p].clone());
            health_claims.insert(p, claimants(claims.iter().map(|c| c.1), &planned));
        }
        self.plan.frontends = frontends;
        self.plan.health_checks = health_checks;
        self.frontend_claims = frontend_claims;
        self.health_claims = health_claims;
        self.cluster_ips = cluster_ips;
        self.draining = draining;
        self.plan.draining = self.draining.keys().copied().collect();
        self.parts = planned
            .into_iter()
            .filter(|(_, part)| part.exists())
            .collect();
    }

    /// Nodes: this node's address, pod CIDR and conflist, and the peers'
    /// routes. True when what every Service depends on (this node's
    /// NodePort addresses or zone) changed.
    fn update_nodes(&mut self, objects: &Objects, new_problems: &mut Vec<Problem>) -> bool {
        let cfg = &self.cfg;
        let mut problems = Vec::new();
        let nodes = nodes::nodes(&objects.nodes, &cfg.node_name, &mut problems);
        let nodeport_addresses = cfg
            .nodeport_addresses
            .clone()
            .unwrap_or_else(|| nodes.own_ips.clone());
        let conflist = network::conflist(cfg, nodes.pod_cidr);
        if cfg.cni.is_some() && conflist.is_none() {
            problems.push(Problem {
                object: format!("Node {}", cfg.node_name),
                field: "spec.podCIDR".into(),
                message: "this node has no Node object with a podCIDR yet: no CNI config written"
                    .into(),
            });
        }
        let uplink = cfg.uplink.as_ref();
        self.plan.node = NodeAddress {
            addr: nodes.own_addr(),
            snat_ports: cfg.snat_ports,
        };
        self.plan.routes = network::peer_routes(&nodes.peers, uplink);
        self.plan.kernel_routes = network::kernel_routes(&nodes.peers, uplink);
        self.plan.conflist = conflist;
        self.plan.pod_cidr = nodes.pod_cidr;
        self.plan.peers = nodes.peers;
        new_problems.extend(appeared(&self.node_problems, &problems));
        self.node_problems = problems;
        let moved = self.nodeport_addresses != nodeport_addresses || self.zone != nodes.zone;
        self.nodeport_addresses = nodeport_addresses;
        self.zone = nodes.zone;
        moved
    }

    /// The service CIDRs, and the ranges they make with the ClusterIPs.
    fn update_cidrs(&mut self, objects: &Objects, new_problems: &mut Vec<Problem>) {
        let mut problems = Vec::new();
        self.cidrs = service_cidrs::service_cidrs(
            &self.cfg.service_cidrs,
            &objects.service_cidrs,
            &mut problems,
        );
        let cluster_ips: BTreeSet<Ipv4Addr> = self.cluster_ips.keys().copied().collect();
        self.plan.service_ranges = super::service_ranges(&self.cidrs, &cluster_ips);
        new_problems.extend(appeared(&self.cidr_problems, &problems));
        self.cidr_problems = problems;
    }

    /// Each Service's part, on every CPU when there are many (a full sync
    /// of 100,000 Services): planning one Service reads nothing of
    /// another's. Each Service's id is made there too, off the main
    /// thread.
    fn plan_many(&self, inputs: &Inputs) -> Vec<(ServiceId, ServicePart)> {
        let plan = |at: Range<usize>| -> Vec<(ServiceId, ServicePart)> {
            at.map(|i| {
                let ((ns, name), svc, slices) = inputs.get(i);
                let part = self.plan_service(svc, slices);
                ((ns.to_string(), name.to_string()), part)
            })
            .collect()
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        if threads == 1 || inputs.len() < PARALLEL_FROM {
            return plan(0..inputs.len());
        }
        let chunk = inputs.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..inputs.len())
                .step_by(chunk)
                .map(|from| {
                    let at = from..(from + chunk).min(inputs.len());
                    scope.spawn(move || plan(at))
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("planning a Service does not panic"))
                .collect()
        })
    }

    /// One Service's part: what `svc` (None: it does not exist, or is not
    /// proxied) and its `slices` make.
    fn plan_service(&self, svc: Option<&ServiceObject>, slices: &[&SliceObject]) -> ServicePart {
        let cfg = &self.cfg;
        let mut part = ServicePart::default();
        let problems = &mut part.problems;
        for slice in slices {
            unsupported::slice_fields(slice, problems);
        }
        if let Some(svc) = svc {
            problems.extend(svc.problems.iter().cloned());
        }
        let Some((id, svc)) = svc.and_then(|s| Some((&s.id, s.parsed.as_ref()?))) else {
            return part;
        };
        part.cluster_ips = svc.cluster_ips.to_vec();
        // Nearly always every slice: then no copy of the list.
        let is_ipv4 = |s: &&SliceObject| &*s.address_type == "IPv4";
        let ipv4: Cow<[&SliceObject]> = if slices.iter().all(is_ipv4) {
            Cow::Borrowed(slices)
        } else {
            Cow::Owned(slices.iter().copied().filter(is_ipv4).collect())
        };
        let here = endpoints::Locality {
            node_name: &cfg.node_name,
            zone: self.zone.as_deref(),
        };
        // Each port's frontends on each cluster IP, at least.
        part.frontends = Vec::with_capacity(svc.ports.len() * svc.cluster_ips.len());
        let mut draining = Vec::new();
        for port in &svc.ports {
            let mut of_service = problem::ObjectProblems {
                kind: "Service",
                namespace: Some(&id.0),
                name: Some(&id.1),
                sink: problems,
            };
            let port = &*port.in_range(cfg.nodeport_range, &mut of_service);
            let endpoints = endpoints::endpoints_for_port(&ipv4, port, here, problems);
            let backends = categorize::categorize(&endpoints, svc.policies);
            draining.extend(backends.draining.iter().copied());
            let fronts = &mut part.frontends;
            fronts.extend(frontends::cluster_ip_frontends(svc, port, &backends));
            if cfg.node_ports_on_loopback {
                fronts.extend(frontends::loopback_node_port(svc, port, &backends));
            }
            let external = frontends::external_addresses(svc, port, &self.nodeport_addresses);
            if external.is_empty() {
                continue;
            }
            fronts.extend(frontends::external_frontends(
                svc, port, &external, &backends,
            ));
            health::add_health_check(&mut part.health_checks, id, svc, &backends);
        }
        // In order and without repeats, as a set would hold them.
        draining.sort_unstable();
        draining.dedup();
        part.draining = draining;
        part
    }

    /// Put each of `planned` (in id order) in place of that Service's
    /// part: the frontends and service ranges that may have changed. One
    /// at a time when they are few against the Services held; else all
    /// the parts are placed again in bulk (`place_all`), which costs a
    /// walk over every Service but no tree walks per claim: a file
    /// source's manifest growing from 10,000 to 100,000 Services (90,000
    /// changed) took 1.3 s to plan one at a time, 0.8-1.0 s so, on a
    /// 2-CPU VM busy with other work (`examples/file_sync_speed.rs`); the
    /// bench's same sync on a quiet machine: 204 ms.
    fn replace_many(
        &mut self,
        planned: Vec<(ServiceId, ServicePart)>,
        new_problems: &mut Vec<Problem>,
    ) -> (BTreeSet<ServiceKey>, BTreeSet<Ipv4Net>) {
        let mut keys = BTreeSet::new();
        let mut ranges = BTreeSet::new();
        if planned.len() < PARALLEL_FROM || planned.len() * BULK_SHARE < self.parts.len() {
            for (id, part) in planned {
                let touched = self.replace(&id, part, new_problems);
                keys.extend(touched.0);
                ranges.extend(touched.1);
            }
            return (keys, ranges);
        }
        // The parts held and the new ones, merged in id order (a new one
        // in place of the old); a range is named whether or not it moves.
        let mut all = Vec::with_capacity(self.parts.len() + planned.len());
        let mut held = std::mem::take(&mut self.parts).into_iter().peekable();
        for (id, part) in planned {
            all.extend(std::iter::from_fn(|| held.next_if(|(h, _)| *h < id)));
            let old = held
                .next_if(|(h, _)| *h == id)
                .map(|(_, old)| old)
                .unwrap_or_default();
            new_problems.extend(appeared(&old.problems, &part.problems));
            let fronts = old.frontends.iter().chain(&part.frontends);
            keys.extend(fronts.map(|(k, _)| *k));
            let ips = old.cluster_ips.iter().chain(&part.cluster_ips);
            ranges.extend(ips.map(|ip| host_range(*ip)));
            all.push((id, part));
        }
        all.extend(held);
        self.place_all(all);
        self.update_ranges(&ranges);
        (keys, ranges)
    }

    /// Put `part` in place of `id`'s: the frontends and service ranges
    /// that may have changed.
    fn replace(
        &mut self,
        id: &ServiceId,
        part: ServicePart,
        new_problems: &mut Vec<Problem>,
    ) -> (BTreeSet<ServiceKey>, BTreeSet<Ipv4Net>) {
        let old = self.parts.remove(id).unwrap_or_default();
        new_problems.extend(appeared(&old.problems, &part.problems));
        let mut keys: BTreeSet<ServiceKey> = old.frontends.iter().map(|(k, _)| *k).collect();
        for k in &keys {
            release(&mut self.frontend_claims, k, id);
        }
        for (k, _) in &part.frontends {
            self.frontend_claims
                .entry(*k)
                .or_default()
                .insert(id.clone());
            keys.insert(*k);
        }
        let mut ports: BTreeSet<u16> = old.health_checks.keys().copied().collect();
        for p in &ports {
            release(&mut self.health_claims, p, id);
        }
        for p in part.health_checks.keys() {
            self.health_claims.entry(*p).or_default().insert(id.clone());
            ports.insert(*p);
        }
        let mut ranges = BTreeSet::new();
        for ip in &old.cluster_ips {
            if count_down(&mut self.cluster_ips, ip) {
                ranges.insert(host_range(*ip));
            }
        }
        for ip in &part.cluster_ips {
            if count_up(&mut self.cluster_ips, *ip) {
                ranges.insert(host_range(*ip));
            }
        }
        for b in &old.draining {
            if count_down(&mut self.draining, b) {
                self.plan.draining.remove(b);
            }
        }
        for b in &part.draining {
            if count_up(&mut self.draining, *b) {
                self.plan.draining.insert(*b);
            }
        }
        if part.exists() {
            self.parts.insert(id.clone(), part);
        }
        for k in &keys {
            let winner = self.frontend_claims.get(k).and_then(|ids| ids.first());
            let value = winner.and_then(|w| {
                let part = self.parts.get(w)?;
                part.frontends
                    .iter()
                    .find(|(fk, _)| fk == k)
                    .map(|(_, v)| v)
            });
            match value {
                Some(v) => self.plan.frontends.insert(*k, v.clone()),
                None => self.plan.frontends.remove(k),
            };
        }
        for p in &ports {
            let winner = self.health_claims.get(p).and_then(|ids| ids.first());
            let value = winner.and_then(|w| self.parts.get(w)?.health_checks.get(p));
            match value {
                Some(v) => self.plan.health_checks.insert(*p, v.clone()),
                None => self.plan.health_checks.remove(p),
            };
        }
        self.update_ranges(&ranges);
        (keys, ranges)
    }

    /// The service ranges of `nets` (ClusterIPs' host ranges) as the
    /// ClusterIPs held now make them.
    fn update_ranges(&mut self, nets: &BTreeSet<Ipv4Net>) {
        // Without service CIDRs there are no ranges at all.
        if self.cidrs.is_empty() {
            return;
        }
        for net in nets {
            if self.cluster_ips.contains_key(&net.addr) {
                let range = ServiceRange {
                    kind: SERVICE_RANGE_ALLOCATED,
                };
                self.plan.service_ranges.insert(*net, range);
            } else {
                self.plan.service_ranges.remove(net);
            }
        }
    }
}

/// `id` no longer claims `key`.
fn release<K: Ord>(claims: &mut Claims<K>, key: &K, id: &ServiceId) {
    if let Some(ids) = claims.get_mut(key) {
        ids.remove(id);
        if ids.is_empty() {
            claims.remove(key);
        }
    }
}

/// One more of `key`; true when it is the first.
fn count_up<K: Ord>(counts: &mut BTreeMap<K, usize>, key: K) -> bool {
    let n = counts.entry(key).or_insert(0);
    *n += 1;
    *n == 1
}

/// One fewer of `key`; true when it was the last.
fn count_down<K: Ord>(counts: &mut BTreeMap<K, usize>, key: &K) -> bool {
    match counts.get_mut(key) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            counts.remove(key);
            true
        }
        None => false,
    }
}

fn host_range(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net {
        addr: ip,
        prefix: 32,
    }
}

/// A Service's (namespace, name), borrowed from its objects.
type IdRef<'a> = (&'a str, &'a str);

/// Below this many Services, planning stays on one thread.
const PARALLEL_FROM: usize = 2000;

/// Changed Services are placed one at a time while the planner holds more
/// than this many times as many (`replace_many`): placing one costs about
/// that many times placing one in bulk.
const BULK_SHARE: usize = 4;

/// Each Service's objects, grouped in id order.
struct Inputs<'a> {
    /// Every Service's slices, one Service's after another's (in id
    /// order), each Service's in the order of the objects.
    slices: Vec<&'a SliceObject>,
    /// Each Service in id order: its object (None: there is none, or only
    /// its slices are) and where its slices are in `slices`.
    services: Vec<(IdRef<'a>, Option<&'a ServiceObject>, Range<usize>)>,
}

impl<'a> Inputs<'a> {
    fn len(&self) -> usize {
        self.services.len()
    }

    /// The `i`th Service's objects.
    fn get(&self, i: usize) -> (IdRef<'a>, Option<&'a ServiceObject>, &[&'a SliceObject]) {
        let (id, svc, at) = &self.services[i];
        (*id, *svc, &self.slices[at.clone()])
    }
}

/// A Service's id with the first bytes of its namespace and name as
/// numbers, which order nearly every pair of ids without reading the
/// strings: sorting 100,000 ids by their strings spent most of its time
/// waiting for the strings' memory (scattered over the heap, each read 17
/// times), the prefixes are read once.
#[derive(Debug, Clone, Copy)]
struct Keyed<'a> {
    prefixes: (u64, u64),
    id: IdRef<'a>,
}

impl<'a> Keyed<'a> {
    fn new(id: IdRef<'a>) -> Self {
        Self {
            prefixes: (prefix(id.0), prefix(id.1)),
            id,
        }
    }
}

/// The first 8 bytes of `s`, big-endian, zero-padded: when two prefixes
/// differ, so do the strings, the same way.
fn prefix(s: &str) -> u64 {
    let mut bytes = [0; 8];
    let n = s.len().min(8);
    bytes[..n].copy_from_slice(&s.as_bytes()[..n]);
    u64::from_be_bytes(bytes)
}

/// `a` against `b` as strings, given their prefixes.
fn cmp_prefixed(pa: u64, a: &str, pb: u64, b: &str) -> std::cmp::Ordering {
    pa.cmp(&pb).then_with(|| {
        if a.len() <= 8 && b.len() <= 8 {
            // Same first bytes, and nothing beyond them: the shorter one
            // is the other's beginning (it sorts first), or they are equal.
            a.len().cmp(&b.len())
        } else {
            a.cmp(b)
        }
    })
}

/// In the order of the ids (namespace, then name), as strings.
impl Ord for Keyed<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let (a, b) = (self.prefixes, other.prefixes);
        cmp_prefixed(a.0, self.id.0, b.0, other.id.0)
            .then_with(|| cmp_prefixed(a.1, self.id.1, b.1, other.id.1))
    }
}

impl PartialOrd for Keyed<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Keyed<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Keyed<'_> {}

/// Every Service's objects (only those of `only`, when given), in id
/// order; `listed` (sorted) are planned even without objects, as gone.
/// By sorting rather than a hash map: 100,000 Services and slices into a
/// SipHash map, then sorted, took a quarter of a full plan; here two sorts
/// run on both CPUs, and a merge allocates nothing per Service.
fn group<'a>(
    objects: &'a Objects,
    only: Option<&HashSet<IdRef>>,
    listed: &[IdRef<'a>],
) -> Inputs<'a> {
    let wanted = |id: &IdRef| only.is_none_or(|only| only.contains(id));
    // Stable: a Service's slices stay in the objects' order (that of their
    // problems), and of two objects of one Service the last one wins, as
    // when they were grouped by a map.
    let (slices, services) = join(
        objects.services.len() + objects.slices.len() >= PARALLEL_FROM,
        || {
            let mut slices: Vec<(Keyed, &SliceObject)> = objects
                .slices
                .iter()
                .map(|slice| ((&*slice.namespace, &*slice.service), &**slice))
                .filter(|(id, _)| wanted(id))
                .map(|(id, slice)| (Keyed::new(id), slice))
                .collect();
            slices.sort_by(|a, b| a.0.cmp(&b.0));
            slices
        },
        || {
            let mut services: Vec<(Keyed, &ServiceObject)> = objects
                .services
                .iter()
                .map(|svc| ((svc.id.0.as_str(), svc.id.1.as_str()), &**svc))
                .filter(|(id, _)| wanted(id))
                .map(|(id, svc)| (Keyed::new(id), svc))
                .collect();
            services.sort_by(|a, b| a.0.cmp(&b.0));
            services
        },
    );
    let listed: Vec<Keyed> = listed.iter().map(|id| Keyed::new(*id)).collect();
    let mut out = Vec::with_capacity(services.len().max(listed.len()));
    let (mut s, mut l, mut x) = (0, 0, 0);
    loop {
        let heads = [
            services.get(s).map(|(id, _)| id),
            slices.get(l).map(|(id, _)| id),
            listed.get(x),
        ];
        let Some(&id) = heads.into_iter().flatten().min() else {
            break;
        };
        let mut svc = None;
        while let Some((_, last)) = services.get(s).filter(|(i, _)| *i == id) {
            svc = Some(*last);
            s += 1;
        }
        let from = l;
        while slices.get(l).is_some_and(|(i, _)| *i == id) {
            l += 1;
        }
        while listed.get(x) == Some(&id) {
            x += 1;
        }
        out.push((id.id, svc, from..l));
    }
    Inputs {
        slices: slices.into_iter().map(|(_, slice)| slice).collect(),
        services: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{difference, file::parse_manifest};

    const EXTERNAL: &str = include_str!("../../testdata/external.yaml");
    const CIDRS: &str = include_str!("../../testdata/service_cidrs.yaml");
    const AFFINITY: &str = include_str!("../../testdata/affinity_ranges.yaml");
    const TERMINATING: &str = include_str!("../../testdata/terminating.yaml");
    const UNSUPPORTED: &str = include_str!("../../testdata/unsupported.yaml");

    /// A Service claiming the `lb` Service's externalIP and port (it sorts
    /// before `lb`, so it holds that frontend while it exists).
    const RIVAL: &str = "apiVersion: v1
kind: Service
metadata: {name: a-rival, namespace: default}
spec:
  clusterIP: 10.96.0.99
  externalIPs: [203.0.113.7]
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 9090}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: a-rival-1, namespace: default, labels: {kubernetes.io/service-name: a-rival}}
addressType: IPv4
ports: [{name: http, port: 9090, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.99], conditions: {ready: true}, nodeName: n1}
";

    fn objects(docs: &[&str]) -> Objects {
        let text = docs.join("\n---\n");
        let (objects, problems) = parse_manifest(&text).expect("YAML");
        assert!(problems.is_empty(), "{problems:?}");
        objects
    }

    /// `old` with an endpoint address of the slice `slice` replaced.
    fn moved_endpoint(old: &Objects, slice: &str, to: &str) -> Objects {
        let mut new = old.clone();
        let s = new
            .slices
            .iter_mut()
            .find(|s| &*s.name == slice)
            .expect("slice");
        let moved = s.endpoints[0].with_addresses(&[to.to_string()]);
        std::sync::Arc::make_mut(s).endpoints[0] = moved;
        new
    }

    fn without_service(old: &Objects, name: &str) -> Objects {
        let mut new = old.clone();
        new.services.retain(|s| s.id.1 != name);
        new
    }

    /// Step the planner from `old` to `new` as a source would, and check
    /// that it plans what a full plan of `new` does and that its scope
    /// names every frontend and range that changed.
    fn step(planner: &mut Planner, old: &Objects, new: &Objects) -> Update {
        let cfg = with_service_cidrs();
        let before = planner.plan().clone();
        let update = match planner.update(new, &difference(old, new)) {
            Ok(u) => u,
            Err(NeedsEverything) => planner.update(new, &Changed::Everything).unwrap(),
        };
        let (full, problems) = super::super::plan(new, &cfg);
        assert_eq!(
            planner.plan(),
            &full,
            "the incremental plan is the full plan"
        );
        let mut known = planner.problems();
        let mut expected = problems;
        known.sort();
        expected.sort();
        assert_eq!(known, expected);
        if let Some(keys) = &update.scope.frontends {
            let changed = full
                .frontends
                .iter()
                .filter(|(k, v)| before.frontends.get(k) != Some(v))
                .map(|(k, _)| k)
                .chain(
                    before
                        .frontends
                        .keys()
                        .filter(|k| !full.frontends.contains_key(k)),
                );
            for k in changed {
                assert!(keys.contains(k), "{k:?} changed but is not in the scope");
            }
        }
        if let Some(nets) = &update.scope.service_ranges {
            let changed = full
                .service_ranges
                .iter()
                .filter(|(k, v)| before.service_ranges.get(k) != Some(v))
                .map(|(k, _)| k)
                .chain(
                    before
                        .service_ranges
                        .keys()
                        .filter(|k| !full.service_ranges.contains_key(k)),
                );
            for k in changed {
                assert!(nets.contains(k), "{k} changed but is not in the scope");
            }
        }
        update
    }

    #[test]
    fn every_change_plans_as_a_full_plan_would_and_names_what_moved() {
        let cfg = with_service_cidrs();
        let mut planner = Planner::new(&cfg);
        let empty = Objects::default();
        let base = objects(&[EXTERNAL, CIDRS, AFFINITY, TERMINATING, UNSUPPORTED]);
        let first = step(&mut planner, &empty, &base);
        assert!(!planner.plan().frontends.is_empty());
        assert!(
            !first.new_problems.is_empty(),
            "unsupported fields reported"
        );

        // One endpoint: only that Service's frontends are looked at, and no
        // problem is reported again.
        let moved = moved_endpoint(&base, "lb-1", "10.244.1.7");
        let update = step(&mut planner, &base, &moved);
        let keys = update.scope.frontends.expect("touched only");
        assert!(
            keys.iter()
                .all(|k| planner.plan().frontends[k].name.starts_with("default/lb:"))
        );
        assert!(update.new_problems.is_empty());

        // A rival takes the shared externalIP frontend, and gives it back.
        let rival = {
            let mut o = moved.clone();
            let r = objects(&[RIVAL]);
            o.services.extend(r.services);
            o.slices.extend(r.slices);
            o
        };
        step(&mut planner, &moved, &rival);
        let shared = ServiceKey {
            addr: [203, 0, 113, 7],
            port: 80,
            protocol: ferry_common::PROTO_TCP,
            scope: ferry_common::SCOPE_EXTERNAL,
        };
        assert!(
            planner.plan().frontends[&shared]
                .name
                .starts_with("default/a-rival")
        );
        let gone = without_service(&rival, "a-rival");
        step(&mut planner, &rival, &gone);
        assert!(
            planner.plan().frontends[&shared]
                .name
                .starts_with("default/lb")
        );

        // A Service leaves: its frontends and its ClusterIP's range go.
        let fewer = without_service(&gone, "np");
        step(&mut planner, &gone, &fewer);

        // The node's address moves: every NodePort moves with it.
        let mut readdressed = fewer.clone();
        let node = &mut readdressed.nodes[0];
        node.status.as_mut().unwrap().addresses.as_mut().unwrap()[0].address =
            "192.168.77.12".into();
        step(&mut planner, &fewer, &readdressed);

        // ServiceCIDRs change.
        let mut cidrs = readdressed.clone();
        cidrs.service_cidrs.clear();
        step(&mut planner, &readdressed, &cidrs);

        // And back to where it started, in one step.
        step(&mut planner, &cidrs, &base);
    }

    /// A full plan places claims in bulk (`place_all`); the holder leaving
    /// afterwards must hand the frontend over as `replace` would.
    #[test]
    fn a_frontend_contested_in_a_full_plan_passes_on_when_its_holder_leaves() {
        let cfg = with_service_cidrs();
        let contested = objects(&[EXTERNAL, CIDRS, RIVAL]);
        let mut planner = Planner::new(&cfg);
        planner.update(&contested, &Changed::Everything).unwrap();
        let shared = ServiceKey {
            addr: [203, 0, 113, 7],
            port: 80,
            protocol: ferry_common::PROTO_TCP,
            scope: ferry_common::SCOPE_EXTERNAL,
        };
        let holder = |p: &Planner| p.plan().frontends[&shared].name.to_string();
        assert!(holder(&planner).starts_with("default/a-rival"));
        let gone = without_service(&contested, "a-rival");
        step(&mut planner, &contested, &gone);
        assert!(holder(&planner).starts_with("default/lb"));
        // And back: the rival, first by name, takes it again.
        step(&mut planner, &gone, &contested);
        assert!(holder(&planner).starts_with("default/a-rival"));
    }

    #[test]
    fn ids_sort_by_their_prefixes_as_by_their_strings() {
        let names = [
            "",
            "a",
            "a\0",
            "a\0b",
            "ab",
            "default",
            "default-x",
            "defaultx",
            "defaulty1",
            "kube-system",
            "svc-1",
            "svc-10",
            "svc-100000",
            "svc-100001",
            "svc-2",
            "svc-20",
            "zzzzzzzz",
            "zzzzzzzz\0",
            "zzzzzzzza",
            "\u{e9}t\u{e9}",
        ];
        let ids: Vec<IdRef> = names
            .iter()
            .flat_map(|ns| names.iter().map(move |name| (*ns, *name)))
            .collect();
        for a in &ids {
            for b in &ids {
                assert_eq!(Keyed::new(*a).cmp(&Keyed::new(*b)), a.cmp(b), "{a:?} {b:?}");
            }
        }
    }

    /// Node n1's config with service CIDRs, so service ranges are planned.
    fn with_service_cidrs() -> PlanConfig {
        PlanConfig {
            service_cidrs: vec!["10.96.0.0/16".parse().unwrap()],
            ..PlanConfig::for_node("n1")
        }
    }

    /// `n` NodePort Services `s0`.. with a slice of one endpoint each.
    fn many_services(n: usize) -> Vec<String> {
        let mut docs = Vec::new();
        for i in 0..n {
            let vip = Ipv4Addr::from(0x0a60_0010 + i as u32);
            let ep = Ipv4Addr::from(0x0a80_0000 + i as u32);
            docs.push(format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\nspec:\n  clusterIP: {vip}\n  type: NodePort\n  ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: {}}}]",
                30000 + i
            ));
            docs.push(format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{i}-1, namespace: default, labels: {{kubernetes.io/service-name: s{i}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n- {{addresses: [{ep}], conditions: {{ready: true}}, nodeName: n1}}"
            ));
        }
        docs
    }

    /// Many changed Services at once are placed in bulk (`replace_many`):
    /// growing, shrinking and a contested frontend plan as a full plan
    /// would, with every move in the scope.
    #[test]
    fn many_changes_at_once_plan_as_a_full_plan_would() {
        let cfg = with_service_cidrs();
        let many = |n: usize, rival: bool| {
            let mut docs = vec![EXTERNAL, CIDRS];
            if rival {
                docs.push(RIVAL);
            }
            let services = many_services(n).join("\n---\n");
            docs.push(&services);
            objects(&docs)
        };
        let (small, large) = (many(300, false), many(PARALLEL_FROM + 500, true));
        let shrunk = moved_endpoint(&many(200, false), "lb-1", "10.244.1.7");
        let mut planner = Planner::new(&cfg);
        step(&mut planner, &Objects::default(), &small);
        step(&mut planner, &small, &large);
        step(&mut planner, &large, &shrunk);
        step(&mut planner, &shrunk, &large);
    }

    #[test]
    fn a_full_plan_on_several_threads_is_the_plan_of_one() {
        let n = PARALLEL_FROM + 500;
        let mut docs = vec![
            "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: 192.168.77.11}]}".to_string(),
        ];
        docs.extend(many_services(n));
        let all = objects(&[&docs.join("\n---\n")]);
        let cfg = PlanConfig::for_node("n1");
        let mut parallel = Planner::new(&cfg);
        parallel.update(&all, &Changed::Everything).unwrap();
        // The same Services in two updates, each below the threshold.
        let mut serial = Planner::new(&cfg);
        let first_half = Objects {
            services: Vec::new(),
            slices: Vec::new(),
            nodes: all.nodes.clone(),
            service_cidrs: Vec::new(),
        };
        serial.update(&first_half, &Changed::Everything).unwrap();
        let ids: Vec<ServiceId> = all.services.iter().map(|s| s.id.clone()).collect();
        for half in ids.chunks(n / 2 + 1) {
            let changed = Changed::Some {
                services: half.iter().cloned().collect(),
                nodes: false,
                service_cidrs: false,
            };
            serial.update(&all, &changed).unwrap();
        }
        assert_eq!(parallel.plan().frontends.len(), 3 * n);
        assert_eq!(parallel.plan(), serial.plan());
    }
}
