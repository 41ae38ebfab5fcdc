//! The policy for a packet that starts a flow to a Service frontend, kept
//! pure so the host tests cover it. The kernel's one planner (tc and XDP
//! alike) calls it with the real draw of a backend and the real lookup of
//! where that backend lives.
use crate::{SERVICE_FLAG_LOCAL_ONLY, SERVICE_FLAG_SOURCE_RANGES, ServiceValue, outcome};

/// Who opens the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// A pod of this node: any backend, its own address kept
    /// (externalTrafficPolicy does not apply, as with kube-proxy).
    Pod,
    /// A client outside the cluster, through the uplink.
    External,
}

/// What a new flow gets; `B` is the drawn backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewFlow<B> {
    /// The frontend has no endpoints: answer with ICMP port unreachable.
    Reject,
    /// Dropped, counted under the outcome: no local endpoint under
    /// externalTrafficPolicy Local, or the drawn slot was missing (an update
    /// raced the packet).
    Drop(u32),
    /// externalTrafficPolicy Local: a backend of this node, the client's
    /// address kept.
    LocalPolicy(B),
    /// The client's address kept: a pod's flow, or an external one whose
    /// backend is a pod of this node.
    Direct(B),
    /// An external client to a backend on another node: the source becomes
    /// this node's address and a free port, so the reply comes back here.
    SourceNat(B),
}

/// Plan a new flow from `client` to `service`: `in_source_ranges` says
/// whether the client's address is inside the frontend's
/// loadBalancerSourceRanges (asked only when it has some), `draw` picks a
/// backend (None: its slot is missing), `is_local` says whether it is a pod
/// of this node. Neither is called when the frontend has no backends.
#[inline(always)]
pub fn plan<B>(
    service: &ServiceValue,
    client: Client,
    in_source_ranges: impl FnOnce() -> bool,
    draw: impl FnOnce() -> Option<B>,
    is_local: impl FnOnce(&B) -> bool,
) -> NewFlow<B> {
    // kube-proxy's firewall comes before everything, endpoints or not.
    if service.flags & SERVICE_FLAG_SOURCE_RANGES != 0 && !in_source_ranges() {
        return NewFlow::Drop(outcome::DROP_SOURCE_RANGE);
    }
    let local_policy = client == Client::External && service.flags & SERVICE_FLAG_LOCAL_ONLY != 0;
    if service.backend_count == 0 {
        return if local_policy {
            NewFlow::Drop(outcome::DROP_NO_LOCAL_ENDPOINTS)
        } else {
            NewFlow::Reject
        };
    }
    let Some(backend) = draw() else {
        return NewFlow::Drop(outcome::DROP_NO_BACKEND_SLOT);
    };
    if local_policy {
        NewFlow::LocalPolicy(backend)
    } else if client == Client::Pod || is_local(&backend) {
        NewFlow::Direct(backend)
    } else {
        NewFlow::SourceNat(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(backend_count: u16, flags: u8) -> ServiceValue {
        ServiceValue {
            service_id: 1,
            backend_base: 0,
            backend_count,
            flags,
            pad: 0,
        }
    }

    const LOCAL: u8 = SERVICE_FLAG_LOCAL_ONLY;

    /// The plan for a backend that is (`local`) or is not a pod here.
    fn planned(service: ServiceValue, client: Client, local: bool) -> NewFlow<u8> {
        plan(&service, client, || true, || Some(7), |_| local)
    }

    #[test]
    fn a_frontend_without_backends_rejects_unless_policy_local_drops() {
        for client in [Client::Pod, Client::External] {
            assert_eq!(planned(service(0, 0), client, true), NewFlow::Reject);
        }
        assert_eq!(
            planned(service(0, LOCAL), Client::External, true),
            NewFlow::Drop(outcome::DROP_NO_LOCAL_ENDPOINTS)
        );
        // Pods reach every endpoint whatever the policy.
        assert_eq!(
            planned(service(0, LOCAL), Client::Pod, true),
            NewFlow::Reject
        );
    }

    #[test]
    fn nothing_is_drawn_for_a_frontend_without_backends() {
        let drawn = plan(
            &service(0, 0),
            Client::External,
            || true,
            || -> Option<u8> { panic!() },
            |_| panic!(),
        );
        assert_eq!(drawn, NewFlow::Reject);
    }

    #[test]
    fn a_missing_slot_drops() {
        let plan = plan(
            &service(2, 0),
            Client::Pod,
            || true,
            || None::<u8>,
            |_| true,
        );
        assert_eq!(plan, NewFlow::Drop(outcome::DROP_NO_BACKEND_SLOT));
    }

    #[test]
    fn only_external_clients_of_remote_backends_are_source_natted() {
        use Client::{External, Pod};
        // (policy flags, client, backend is a pod here, plan)
        let table = [
            (0, Pod, false, NewFlow::Direct(7)),
            (0, Pod, true, NewFlow::Direct(7)),
            (0, External, true, NewFlow::Direct(7)),
            (0, External, false, NewFlow::SourceNat(7)),
            (LOCAL, External, true, NewFlow::LocalPolicy(7)),
            (LOCAL, Pod, false, NewFlow::Direct(7)),
        ];
        for (flags, client, local, want) in table {
            let got = planned(service(2, flags), client, local);
            assert_eq!(got, want, "flags {flags} {client:?} local {local}");
        }
    }

    #[test]
    fn source_ranges_are_asked_only_of_frontends_that_have_them() {
        let open = plan(
            &service(2, 0),
            Client::External,
            || panic!("no ranges to check"),
            || Some(7),
            |_| true,
        );
        assert_eq!(open, NewFlow::Direct(7));
        let fenced = service(2, SERVICE_FLAG_SOURCE_RANGES);
        let inside = plan(&fenced, Client::External, || true, || Some(7), |_| true);
        assert_eq!(inside, NewFlow::Direct(7));
        for client in [Client::External, Client::Pod] {
            let outside = plan(&fenced, client, || false, || Some(7), |_| true);
            assert_eq!(outside, NewFlow::Drop(outcome::DROP_SOURCE_RANGE));
        }
    }

    #[test]
    fn a_client_outside_the_ranges_is_dropped_even_without_endpoints() {
        let fenced = service(0, SERVICE_FLAG_SOURCE_RANGES);
        let outside = plan(&fenced, Client::External, || false, || Some(7), |_| true);
        assert_eq!(outside, NewFlow::Drop(outcome::DROP_SOURCE_RANGE));
    }
}
