//! healthCheckNodePorts: kube-proxy answers 200 while the node has a ready
//! local endpoint of the Service, 503 otherwise, so a load balancer sends
//! externalTrafficPolicy Local traffic only to nodes that can serve it.
use std::collections::BTreeMap;

use super::{ServiceId, categorize::Categorized, services::ParsedService};

/// A healthCheckNodePort to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub namespace: String,
    pub name: String,
    pub local_endpoints: usize,
}

/// Count a port's ready local endpoints into the Service's health check
/// (the most of any of its ports), when it has one.
pub fn add_health_check(
    checks: &mut BTreeMap<u16, HealthCheck>,
    (namespace, name): &ServiceId,
    svc: &ParsedService,
    backends: &Categorized,
) {
    let Some(port) = svc.health_check_node_port else {
        return;
    };
    let check = checks.entry(port).or_insert_with(|| HealthCheck {
        namespace: namespace.clone(),
        name: name.clone(),
        local_endpoints: 0,
    });
    check.local_endpoints = check.local_endpoints.max(backends.ready_local);
}
