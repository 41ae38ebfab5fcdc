//! Service frontends reached from outside the cluster, on the uplink:
//! NodePorts on the node's addresses, LoadBalancer ingress IPs and
//! externalIPs. externalTrafficPolicy Cluster may pick a backend on another
//! node; the source then becomes this node's address (and a free port), so
//! the reply comes back here to be translated. Local keeps the client's
//! address and uses this node's backends only.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use ferry_common::{
    CT_DIR_ORIGINAL, EndpointKey, SCOPE_EXTERNAL, SERVICE_FLAG_LOCAL_ONLY, ServiceKey, outcome,
};

use crate::{
    balance,
    conntrack::{self, NatTarget},
    maps::{ENDPOINTS, SERVICES},
    nat,
    parse::L4Packet,
    reject,
};

/// (verdict, outcome, destination after translation); None when the packet
/// is not for an external frontend.
#[inline(always)]
pub fn translate(ctx: &TcContext, pkt: &L4Packet) -> Option<(i32, u32, Option<[u8; 4]>)> {
    let key = ServiceKey {
        addr: pkt.dst_addr,
        port: pkt.dst_port,
        protocol: pkt.protocol,
        scope: SCOPE_EXTERNAL,
    };
    // SAFETY: copied out at once.
    let service = (unsafe { SERVICES.get(key) }).copied()?;
    let target = match conntrack::track(pkt, CT_DIR_ORIGINAL) {
        Some(target) => target,
        None => match new_flow(ctx, pkt, service) {
            Ok(target) => target,
            Err(result) => return Some(result),
        },
    };
    Some(match nat::dnat(ctx, pkt, &target) {
        Ok(()) => (TC_ACT_OK, outcome::TRANSLATED, Some(target.addr)),
        Err(_) => (TC_ACT_SHOT, outcome::DROP_REWRITE_FAILED, None),
    })
}

#[inline(always)]
fn new_flow(
    ctx: &TcContext,
    pkt: &L4Packet,
    service: ferry_common::ServiceValue,
) -> Result<NatTarget, (i32, u32, Option<[u8; 4]>)> {
    let local_only = service.flags & SERVICE_FLAG_LOCAL_ONLY != 0;
    if service.backend_count == 0 {
        if local_only {
            return Err((TC_ACT_SHOT, outcome::DROP_NO_LOCAL_ENDPOINTS, None));
        }
        let (verdict, outcome) = reject::no_endpoints(ctx, pkt);
        return Err((verdict, outcome, None));
    }
    let Some((backend, random)) = balance::pick_backend(&service) else {
        return Err((TC_ACT_SHOT, outcome::DROP_NO_BACKEND_SLOT, None));
    };
    let write_failed = (TC_ACT_SHOT, outcome::DROP_CONNTRACK_WRITE, None);
    // SAFETY: copied out at once.
    let local = unsafe { ENDPOINTS.get(EndpointKey { addr: backend.addr }) }.is_some();
    if local_only || local {
        return conntrack::create(pkt, service.service_id, backend.addr, backend.port, None)
            .map_err(|_| write_failed);
    }
    conntrack::create_snat(pkt, service.service_id, backend.addr, backend.port, random)
        .map_err(|outcome| (TC_ACT_SHOT, outcome, None))
}
