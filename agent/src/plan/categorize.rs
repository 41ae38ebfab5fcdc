//! Which endpoints serve which traffic, decided once per Service port, as
//! kube-proxy's pkg/proxy/topology.go `CategorizeEndpoints` does. Topology
//! hints and session affinity belong here too.
use std::collections::BTreeSet;

use ferry_common::Backend;

use super::{endpoints::Endpoint, services::TrafficPolicies};

/// The backends of one Service port for each kind of traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Categorized {
    /// ClusterIP traffic (internalTrafficPolicy applied).
    pub cluster: Vec<Backend>,
    /// Traffic from outside the cluster to NodePorts, load-balancer IPs
    /// and externalIPs (externalTrafficPolicy applied).
    pub external: Vec<Backend>,
    /// Traffic from this node's pods to those external addresses: any
    /// usable endpoint, whatever the policies (kube-proxy's short-circuit).
    pub any: Vec<Backend>,
    /// Ready endpoints on this node, by address: what the
    /// healthCheckNodePort reports (terminating ones do not count, so a
    /// draining node fails its check).
    pub ready_local: usize,
}

/// Ready endpoints among `eligible`; when none is ready, the serving and
/// terminating ones (KEP-1669), so a rolling update does not refuse
/// connections.
fn usable<'a>(eligible: impl Iterator<Item = &'a Endpoint> + Clone) -> Vec<Backend> {
    let ready: Vec<&Endpoint> = eligible.clone().filter(|e| e.ready).collect();
    let chosen = if ready.is_empty() {
        eligible.filter(|e| e.serving_terminating).collect()
    } else {
        ready
    };
    let mut out: Vec<Backend> = chosen
        .into_iter()
        .map(|e| Backend {
            addr: e.addr.octets(),
            port: e.port,
            pad: [0; 2],
        })
        .collect();
    // The same endpoint in two slices with different conditions.
    out.dedup();
    out
}

/// Decide, once, which of a port's endpoints serve which traffic.
pub fn categorize(endpoints: &[Endpoint], policies: TrafficPolicies) -> Categorized {
    let all = endpoints.iter();
    let local = endpoints.iter().filter(|e| e.local);
    let any = usable(all.clone());
    let local_usable = usable(local.clone());
    Categorized {
        cluster: if policies.internal_local {
            local_usable.clone()
        } else {
            any.clone()
        },
        external: if policies.external_local {
            local_usable
        } else {
            any.clone()
        },
        any,
        ready_local: local
            .filter(|e| e.ready)
            .map(|e| e.addr)
            .collect::<BTreeSet<_>>()
            .len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(last: u8, ready: bool, serving_terminating: bool, local: bool) -> Endpoint {
        Endpoint {
            addr: [10, 0, 0, last].into(),
            port: 8080,
            ready,
            serving_terminating,
            local,
        }
    }

    const EXTERNAL_LOCAL: TrafficPolicies = TrafficPolicies {
        internal_local: false,
        external_local: true,
    };

    fn addrs(b: &[Backend]) -> Vec<u8> {
        b.iter().map(|b| b.addr[3]).collect()
    }

    #[test]
    fn each_policy_narrows_only_its_own_traffic() {
        let eps = [ep(1, true, false, true), ep(2, true, false, false)];
        let both_local = TrafficPolicies {
            internal_local: true,
            external_local: true,
        };
        let c = categorize(&eps, both_local);
        assert_eq!((addrs(&c.cluster), addrs(&c.external)), (vec![1], vec![1]));
        assert_eq!(addrs(&c.any), vec![1, 2], "pods reach any endpoint");
        let c = categorize(&eps, TrafficPolicies::default());
        assert_eq!(
            (addrs(&c.cluster), addrs(&c.external)),
            (vec![1, 2], vec![1, 2])
        );
        assert_eq!(c.ready_local, 1);
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready_and_never_count_as_healthy() {
        let eps = [ep(1, false, true, true), ep(2, false, false, true)];
        let c = categorize(&eps, EXTERNAL_LOCAL);
        assert_eq!(addrs(&c.external), vec![1]);
        assert_eq!(c.ready_local, 0);
        // A ready remote endpoint wins over the local terminating one for
        // cluster traffic, but eTP Local still falls back locally.
        let eps = [ep(1, false, true, true), ep(3, true, false, false)];
        let c = categorize(&eps, EXTERNAL_LOCAL);
        assert_eq!((addrs(&c.cluster), addrs(&c.external)), (vec![3], vec![1]));
    }
}
