//! Where the agent's Kubernetes objects come from. Every source feeds the
//! one agent loop through `Source`.
use std::{future::Future, time::Instant};

use crate::plan::{Changed, Objects, Problem};

pub mod file;
pub mod kube;

/// Services with either label are not ferry's to proxy (kube-proxy's own
/// selector): another proxy serves them, or they are headless.
pub const NOT_PROXIED_LABELS: [&str; 2] = [
    "service.kubernetes.io/service-proxy-name",
    "service.kubernetes.io/headless",
];

/// Whether a Service is left alone because of its labels.
pub fn is_not_proxied(svc: &k8s_openapi::api::core::v1::Service) -> bool {
    let labels = svc.metadata.labels.as_ref();
    NOT_PROXIED_LABELS
        .iter()
        .any(|l| labels.is_some_and(|ls| ls.contains_key(*l)))
}

/// The objects as one source sees them at one moment: all of them, or
/// what changed since the source's previous snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Every object (`changed` is `Everything`), or those `changed` lists
    /// (shared with the source, which keeps them to compare).
    pub objects: std::sync::Arc<Objects>,
    pub changed: Changed,
    /// Objects the source could not read (a bad YAML document).
    pub problems: Vec<Problem>,
    /// When the change that led here was noticed.
    pub seen: Instant,
}

pub trait Source {
    /// Names the source in logs ("kube", a file's path).
    fn name(&self) -> String;

    /// The next view of the objects: the first call waits until the source
    /// has all of them, later calls until something changed (and may say
    /// only what). Cancel-safe: a change noticed by a cancelled call is not
    /// lost.
    fn next(&mut self) -> impl Future<Output = Snapshot>;

    /// Every object as the source holds them now (for a plan that needs
    /// them all: the node's own addresses changed).
    /// None if they cannot be had now (the file went unreadable): the plan
    /// then stays as it is until the next change.
    fn everything(&self) -> Option<std::sync::Arc<Objects>>;
}

/// A fingerprint of a complete set of objects, by Service (the Service
/// and its EndpointSlices), and of the Nodes and the ServiceCIDRs: what a
/// source that re-reads everything (the file source) keeps to say what the
/// next read changed, instead of keeping the objects themselves.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Digest {
    services: std::collections::BTreeMap<crate::plan::ServiceId, u64>,
    nodes: u64,
    service_cidrs: u64,
}

/// A hash of an object's JSON form (k8s-openapi's types have no `Hash`).
fn json_hash<T: serde::Serialize>(objects: &[T]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for o in objects {
        serde_json::to_vec(o).unwrap_or_default().hash(&mut h);
    }
    h.finish()
}

impl Digest {
    pub fn of(objects: &Objects) -> Self {
        use std::{
            collections::{BTreeMap, hash_map::DefaultHasher},
            hash::{Hash, Hasher},
        };
        // Per Service, the hashes of its own object(s) and its slices,
        // sorted: the same objects give the same hash whatever their order
        // in the file (and a duplicate document still counts).
        let mut parts: BTreeMap<_, Vec<u64>> = BTreeMap::new();
        fn hash(o: &impl Hash) -> u64 {
            let mut h = DefaultHasher::new();
            o.hash(&mut h);
            h.finish()
        }
        for svc in &objects.services {
            parts.entry(svc.id.clone()).or_default().push(hash(svc));
        }
        for slice in &objects.slices {
            parts
                .entry(slice.service_id())
                .or_default()
                .push(hash(slice));
        }
        let services = parts
            .into_iter()
            .map(|(id, mut hashes)| {
                hashes.sort_unstable();
                (id, hash(&hashes))
            })
            .collect();
        Self {
            services,
            nodes: json_hash(&objects.nodes),
            service_cidrs: json_hash(&objects.service_cidrs),
        }
    }

    /// What differs from `self` in `new`: a Service that changed, appeared
    /// or went, or one of whose EndpointSlices did; and whether the Nodes
    /// or the ServiceCIDRs differ at all.
    pub fn changes(&self, new: &Digest) -> Changed {
        let mut services = std::collections::BTreeSet::new();
        for (id, h) in &self.services {
            if new.services.get(id) != Some(h) {
                services.insert(id.clone());
            }
        }
        for id in new.services.keys() {
            if !self.services.contains_key(id) {
                services.insert(id.clone());
            }
        }
        Changed::Some {
            services,
            nodes: self.nodes != new.nodes,
            service_cidrs: self.service_cidrs != new.service_cidrs,
        }
    }
}

/// What differs between two complete sets of objects (`Digest::changes`).
pub fn difference(old: &Objects, new: &Objects) -> Changed {
    Digest::of(old).changes(&Digest::of(new))
}
