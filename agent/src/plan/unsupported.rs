//! Fields kube-proxy acts on that ferry does not implement yet: each is
//! reported with its field path (and logged once per object), never
//! ignored without a word. The README's Service fields table lists them.
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::problem::{ObjectProblems, Problem};

/// A Service's fields ferry does not act on.
pub fn service_fields(svc: &Service, problems: &mut ObjectProblems) {
    let Some(spec) = &svc.spec else { return };
    if spec.session_affinity.as_deref() == Some("ClientIP") {
        problems.push(
            "spec.sessionAffinity",
            "ClientIP is not implemented: each connection picks its backend on its own",
        );
    }
    let lb = spec.type_.as_deref() == Some("LoadBalancer");
    if lb
        && spec
            .load_balancer_source_ranges
            .iter()
            .flatten()
            .next()
            .is_some()
    {
        problems.push(
            "spec.loadBalancerSourceRanges",
            "not enforced: every client reaches the load-balancer IPs",
        );
    }
}

/// An EndpointSlice's fields ferry does not act on.
pub fn slice_fields(slice: &EndpointSlice, problems: &mut Vec<Problem>) {
    let mut problems = super::endpoints::slice_problems(slice, problems);
    if slice.address_type != "IPv4" {
        let message = format!(
            "{} endpoints are not served (IPv4 only)",
            slice.address_type
        );
        problems.push("addressType", message);
    }
}
