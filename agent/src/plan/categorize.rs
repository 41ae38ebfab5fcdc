//! Which endpoints serve which traffic, decided once per Service port, as
//! kube-proxy's pkg/proxy/topology.go `CategorizeEndpoints` does: readiness
//! with the serving-terminating fallback, topology hints, and the traffic
//! policies. Terminating endpoints drain (`draining`).
use std::sync::Arc;

use ferry_common::Backend;

use super::{
    endpoints::{Endpoint, Hint},
    services::TrafficPolicies,
};

/// Which hints narrow cluster-wide traffic on this node (kube-proxy's
/// `topologyModeFromHints`). The EndpointSlice controller writes hints for
/// `trafficDistribution` (PreferClose, PreferSameZone: zones;
/// PreferSameNode: nodes) and the `topology-mode` annotation; hints are used
/// only when every ready endpoint carries them and some name this node (or
/// its zone), so traffic never goes to no endpoint at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// Every endpoint.
    Any,
    /// Endpoints hinted for this node.
    SameNode,
    /// Endpoints hinted for this node's zone.
    SameZone,
}

pub fn topology(endpoints: &[Endpoint]) -> Topology {
    let ready = || endpoints.iter().filter(|e| e.ready);
    let usable = |hint: fn(&Endpoint) -> Hint| {
        ready().all(|e| hint(e) != Hint::Absent) && ready().any(|e| hint(e) == Hint::Here)
    };
    if usable(|e| e.node_hint) {
        Topology::SameNode
    } else if usable(|e| e.zone_hint) {
        Topology::SameZone
    } else {
        Topology::Any
    }
}

impl Topology {
    fn admits(self, e: &Endpoint) -> bool {
        match self {
            Topology::Any => true,
            Topology::SameNode => e.node_hint == Hint::Here,
            Topology::SameZone => e.zone_hint == Hint::Here,
        }
    }
}

/// The backends of one Service port for each kind of traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Categorized {
    /// ClusterIP traffic (internalTrafficPolicy applied).
    pub cluster: Arc<[Backend]>,
    /// Traffic from outside the cluster to NodePorts, load-balancer IPs
    /// and externalIPs (externalTrafficPolicy applied).
    pub external: Arc<[Backend]>,
    /// Traffic from this node's pods to those external addresses: any
    /// usable endpoint, whatever the policies (kube-proxy's short-circuit).
    pub any: Arc<[Backend]>,
    /// Ready endpoints on this node, by address: what the
    /// healthCheckNodePort reports (terminating ones do not count, so a
    /// draining node fails its check).
    pub ready_local: usize,
    /// Terminating endpoints: whether or not they still take new flows,
    /// the flows they have are kept (connection-preserving drain).
    pub draining: Vec<Backend>,
}

/// Ready endpoints among `eligible`; when none is ready, the serving and
/// terminating ones (KEP-1669), so a rolling update does not refuse
/// connections.
fn usable<'a>(eligible: impl Iterator<Item = &'a Endpoint> + Clone) -> Arc<[Backend]> {
    let backend = |e: &Endpoint| Backend {
        addr: e.addr.octets(),
        port: e.port,
        pad: [0; 2],
    };
    let mut out: Vec<Backend> = eligible.clone().filter(|e| e.ready).map(backend).collect();
    if out.is_empty() {
        out.extend(eligible.filter(|e| e.serving_terminating).map(backend));
    }
    // The same endpoint in two slices with different conditions.
    out.dedup();
    out.into()
}

/// How many addresses `endpoints` have. They come sorted (by address
/// first) from `endpoints_for_port`, so equal addresses are neighbours and
/// counting changes counts them, without a set per Service port.
fn distinct_addresses<'a>(endpoints: impl Iterator<Item = &'a Endpoint> + Clone) -> usize {
    debug_assert!(endpoints.clone().is_sorted_by_key(|e| e.addr));
    let mut count = 0;
    let mut last = None;
    for e in endpoints {
        if last != Some(e.addr) {
            count += 1;
            last = Some(e.addr);
        }
    }
    count
}

/// Decide, once, which of a port's endpoints serve which traffic. Topology
/// narrows cluster-wide traffic only: a Local traffic policy wins (as
/// kube-proxy).
pub fn categorize(endpoints: &[Endpoint], policies: TrafficPolicies) -> Categorized {
    let topology = topology(endpoints);
    let all = endpoints.iter().filter(|e| topology.admits(e));
    let local = endpoints.iter().filter(|e| e.local);
    // Each set is shared by every frontend it serves (and by the copies
    // the plan and the reconciler keep).
    let any = usable(all);
    // Only a Local policy reads the local ones.
    let local_usable =
        (policies.internal_local || policies.external_local).then(|| usable(local.clone()));
    let chosen = |local: bool| match &local_usable {
        Some(l) if local => l.clone(),
        _ => any.clone(),
    };
    let ready_local = distinct_addresses(local.filter(|e| e.ready));
    Categorized {
        cluster: chosen(policies.internal_local),
        external: chosen(policies.external_local),
        any,
        ready_local,
        draining: endpoints
            .iter()
            .filter(|e| e.terminating)
            .map(|e| Backend {
                addr: e.addr.octets(),
                port: e.port,
                pad: [0; 2],
            })
            .collect(),
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
            terminating: serving_terminating,
            local,
            zone_hint: Hint::Absent,
            node_hint: Hint::Absent,
        }
    }

    fn zoned(last: u8, zone_hint: Hint) -> Endpoint {
        Endpoint {
            zone_hint,
            ..ep(last, true, false, false)
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

    #[test]
    fn zone_hints_narrow_cluster_traffic_only_when_every_ready_endpoint_has_one_and_some_are_here()
    {
        use Hint::{Absent, Elsewhere, Here};
        let hinted = [zoned(1, Here), zoned(2, Elsewhere), zoned(3, Here)];
        let c = categorize(&hinted, TrafficPolicies::default());
        assert_eq!(topology(&hinted), Topology::SameZone);
        assert_eq!(
            (addrs(&c.cluster), addrs(&c.external), addrs(&c.any)),
            (vec![1, 3], vec![1, 3], vec![1, 3])
        );
        // One ready endpoint without hints: all of them.
        let partly = [zoned(1, Here), zoned(2, Absent)];
        assert_eq!(
            addrs(&categorize(&partly, TrafficPolicies::default()).cluster),
            vec![1, 2]
        );
        // A not-ready endpoint without hints does not count.
        let not_ready = [zoned(1, Here), ep(2, false, true, false)];
        assert_eq!(topology(&not_ready), Topology::SameZone);
        // None for this zone: all of them, never none.
        let elsewhere = [zoned(1, Elsewhere), zoned(2, Elsewhere)];
        assert_eq!(
            addrs(&categorize(&elsewhere, TrafficPolicies::default()).cluster),
            vec![1, 2]
        );
    }

    #[test]
    fn node_hints_come_before_zone_hints_and_a_local_policy_wins_over_both() {
        let mut eps = [zoned(1, Hint::Here), zoned(2, Hint::Here)];
        eps[0].node_hint = Hint::Elsewhere;
        eps[1].node_hint = Hint::Here;
        assert_eq!(topology(&eps), Topology::SameNode);
        assert_eq!(
            addrs(&categorize(&eps, TrafficPolicies::default()).cluster),
            vec![2]
        );
        // Endpoint 1 is on this node: iTP Local sends ClusterIP traffic
        // there although its hints point elsewhere.
        eps[0].local = true;
        let local = TrafficPolicies {
            internal_local: true,
            external_local: false,
        };
        let c = categorize(&eps, local);
        assert_eq!((addrs(&c.cluster), addrs(&c.external)), (vec![1], vec![2]));
    }
}
