//! The one new-flow planner, for tc and XDP alike: what a packet that
//! starts a flow to a Service frontend gets. tc carries every plan out
//! (`start`); XDP carries out what it can send itself and hands the rest to
//! tc, which finds the flow XDP recorded, or plans again.
use aya_ebpf::programs::TcContext;
use ferry_common::{Backend, EndpointKey, SERVICE_FLAG_LOCAL_ONLY, ServiceValue, outcome};

use crate::{
    balance,
    conntrack::{self, NatTarget},
    decision::{Decision, TcVerdict},
    maps::ENDPOINTS,
    parse::L4Packet,
    reject,
};

/// Who opens the flow.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// A pod of this node: any backend, its own address kept
    /// (externalTrafficPolicy does not apply, as with kube-proxy).
    Pod,
    /// A client outside the cluster, through the uplink.
    External,
}

pub enum NewFlow {
    /// The frontend has no endpoints: answer with ICMP port unreachable.
    Reject,
    /// Dropped, counted under the outcome: no local endpoint under
    /// externalTrafficPolicy Local, or the drawn slot was missing.
    Drop(u32),
    /// externalTrafficPolicy Local: a backend of this node, the client's
    /// address kept.
    LocalPolicy(Backend),
    /// The client's address kept: a pod's flow, or an external one whose
    /// backend is a pod of this node.
    Direct(Backend),
    /// An external client to a backend on another node: the source becomes
    /// this node's address and a free port, drawn from `seed`, so the reply
    /// comes back here.
    SourceNat { backend: Backend, seed: u32 },
}

#[inline(always)]
pub fn plan(service: &ServiceValue, client: Client) -> NewFlow {
    let local_policy = client == Client::External && service.flags & SERVICE_FLAG_LOCAL_ONLY != 0;
    if service.backend_count == 0 {
        return if local_policy {
            NewFlow::Drop(outcome::DROP_NO_LOCAL_ENDPOINTS)
        } else {
            NewFlow::Reject
        };
    }
    let Some((backend, seed)) = balance::pick_backend(service) else {
        return NewFlow::Drop(outcome::DROP_NO_BACKEND_SLOT);
    };
    if local_policy {
        return NewFlow::LocalPolicy(backend);
    }
    if client == Client::Pod || is_local_pod(backend.addr) {
        return NewFlow::Direct(backend);
    }
    NewFlow::SourceNat { backend, seed }
}

/// Is `addr` a pod of this node?
#[inline(always)]
pub fn is_local_pod(addr: [u8; 4]) -> bool {
    // SAFETY: lookup only.
    unsafe { ENDPOINTS.get(EndpointKey { addr }) }.is_some()
}

/// Plan the flow `pkt` starts and carry the plan out on the tc path:
/// what to write into the packet, or the decision when no flow starts.
#[inline(always)]
pub fn start(
    ctx: &TcContext,
    pkt: &L4Packet,
    service: &ServiceValue,
    client: Client,
) -> Result<NatTarget, Decision<TcVerdict>> {
    match plan(service, client) {
        NewFlow::Reject => Err(reject::no_endpoints(ctx, pkt)),
        NewFlow::Drop(outcome) => Err(Decision::drop(outcome)),
        NewFlow::LocalPolicy(backend) | NewFlow::Direct(backend) => {
            conntrack::create(pkt, service.service_id, backend.addr, backend.port, None)
                .map_err(|_| Decision::drop(outcome::DROP_CONNTRACK_WRITE))
        }
        NewFlow::SourceNat { backend, seed } => {
            conntrack::create_snat(pkt, service.service_id, backend.addr, backend.port, seed)
                .map_err(Decision::drop)
        }
    }
}
