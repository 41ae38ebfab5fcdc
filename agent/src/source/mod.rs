//! Where the agent's Kubernetes objects come from. Every source feeds the
//! one agent loop through `Source`.
use std::{future::Future, time::Instant};

use crate::plan::{Objects, Problem};

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

/// The objects as one source sees them at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub objects: Objects,
    /// Objects the source could not read (a bad YAML document).
    pub problems: Vec<Problem>,
    /// When the change that led here was noticed.
    pub seen: Instant,
}

pub trait Source {
    /// Names the source in logs ("kube", a file's path).
    fn name(&self) -> String;

    /// The next complete view of the objects: the first call waits until
    /// the source has all of them, later calls until something changed.
    /// Cancel-safe: a change noticed by a cancelled call is not lost.
    fn next(&mut self) -> impl Future<Output = Snapshot>;
}
