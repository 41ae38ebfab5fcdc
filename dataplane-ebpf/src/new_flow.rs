//! The one new-flow planner, for tc and XDP alike: what a packet that
//! starts a flow to a Service frontend gets (the policy is
//! `ferry_common::new_flow`, host-tested; here are the real draw and the
//! real lookup of where the backend lives). tc carries every plan out
//! (`start`); XDP carries out what it can send itself and hands the rest to
//! tc, which finds the flow XDP recorded, or plans again.
use aya_ebpf::programs::TcContext;
use ferry_common::{Backend, EndpointKey, ServiceValue, new_flow::Client, outcome};

use crate::{
    balance,
    conntrack::{self, NatTarget},
    decision::{Decision, TcVerdict},
    maps::ENDPOINTS,
    parse::L4Packet,
    reject,
};

/// A backend, and the random number its draw used (the seed of a
/// source-NAT port search).
pub type Drawn = (Backend, u32);
pub type NewFlow = ferry_common::new_flow::NewFlow<Drawn>;

/// The plan for the flow `pkt` starts.
#[inline(always)]
pub fn plan(pkt: &L4Packet, service: &ServiceValue, client: Client) -> NewFlow {
    ferry_common::new_flow::plan(
        service,
        client,
        // Inlined: an outlined closure's frame would sit on top of the
        // hook's, over the verifier's 512 bytes.
        #[inline(always)]
        || balance::in_source_ranges(service, pkt.src_addr),
        #[inline(always)]
        || balance::pick_backend(service, pkt.src_addr, pkt.dry_run),
        |(backend, _)| is_local_pod(backend.addr),
    )
}

/// Is `addr` a pod of this node?
#[inline(always)]
fn is_local_pod(addr: [u8; 4]) -> bool {
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
    match plan(pkt, service, client) {
        NewFlow::Reject => Err(reject::no_endpoints(ctx, pkt)),
        NewFlow::Drop(outcome) => Err(Decision::drop(outcome)),
        NewFlow::LocalPolicy((backend, _)) | NewFlow::Direct((backend, _)) => {
            conntrack::create(pkt, service.service_id, backend.addr, backend.port, None)
                .map_err(|_| Decision::drop(outcome::DROP_CONNTRACK_WRITE))
        }
        NewFlow::SourceNat((backend, seed)) => {
            conntrack::create_snat(pkt, service.service_id, backend.addr, backend.port, seed)
                .map_err(Decision::drop)
        }
    }
}
