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
    fn everything(&self) -> std::sync::Arc<Objects>;
}

/// What differs between two complete sets of objects, by Service: a
/// Service that changed, appeared or went, or one of whose EndpointSlices
/// did; and whether the Nodes or the ServiceCIDRs differ at all.
pub fn difference(old: &Objects, new: &Objects) -> Changed {
    use std::collections::{BTreeMap, BTreeSet};

    use crate::plan::incremental::{ServiceId, service_id, slice_service};
    fn by_service<T: PartialEq>(
        objects: &[T],
        id: impl Fn(&T) -> ServiceId,
    ) -> BTreeMap<ServiceId, Vec<&T>> {
        let mut out: BTreeMap<ServiceId, Vec<&T>> = BTreeMap::new();
        for o in objects {
            out.entry(id(o)).or_default().push(o);
        }
        out
    }
    fn differing<T: PartialEq>(
        old: &BTreeMap<ServiceId, Vec<&T>>,
        new: &BTreeMap<ServiceId, Vec<&T>>,
        into: &mut BTreeSet<ServiceId>,
    ) {
        for (id, objects) in old {
            if new.get(id) != Some(objects) {
                into.insert(id.clone());
            }
        }
        for id in new.keys().filter(|id| !old.contains_key(*id)) {
            into.insert(id.clone());
        }
    }
    let mut services = BTreeSet::new();
    differing(
        &by_service(&old.services, service_id),
        &by_service(&new.services, service_id),
        &mut services,
    );
    differing(
        &by_service(&old.slices, slice_service),
        &by_service(&new.slices, slice_service),
        &mut services,
    );
    Changed::Some {
        services,
        nodes: old.nodes != new.nodes,
        service_cidrs: old.service_cidrs != new.service_cidrs,
    }
}
