//! Local delivery: a packet for a pod on this node goes straight into the
//! pod's namespace with `bpf_redirect_peer`, skipping the host's routing
//! and the host side of the destination veth.
use aya_ebpf::{
    bindings::TC_ACT_OK, helpers::generated::bpf_redirect_peer, programs::TcContext,
};
use ferry_common::EndpointKey;

use crate::maps::ENDPOINTS;

/// Deliver to the local pod owning `dst`, or hand the packet to the kernel
/// (TC_ACT_OK) when no local pod has that address.
#[inline(always)]
pub fn to_local_pod(ctx: &TcContext, dst: [u8; 4]) -> i32 {
    // SAFETY: copied out at once.
    let Some(ep) = (unsafe { ENDPOINTS.get(EndpointKey { addr: dst }) }).copied() else {
        return TC_ACT_OK;
    };
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&ep.pod_mac);
    macs[6..].copy_from_slice(&ep.host_mac);
    if ctx.store(0, &macs, 0).is_err() {
        return TC_ACT_OK;
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect_peer(ep.ifindex, 0) as i32 }
}
