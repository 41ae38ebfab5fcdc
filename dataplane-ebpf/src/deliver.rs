//! Local delivery: a packet for a pod on this node goes straight into the
//! pod's namespace with `bpf_redirect_peer`, skipping the host's routing
//! and the host side of the destination veth.
use aya_ebpf::{
    bindings::TC_ACT_OK,
    helpers::generated::{bpf_redirect_peer, bpf_skb_change_type},
    programs::TcContext,
};
use ferry_common::EndpointKey;

use crate::maps::ENDPOINTS;

const PACKET_HOST: u32 = 0;

/// Deliver to the local pod owning `dst`; None when no local pod has that
/// address.
#[inline(always)]
pub fn to_local_pod(ctx: &TcContext, dst: [u8; 4]) -> Option<i32> {
    // SAFETY: copied out at once.
    let ep = (unsafe { ENDPOINTS.get(EndpointKey { addr: dst }) }).copied()?;
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&ep.pod_mac);
    macs[6..].copy_from_slice(&ep.host_mac);
    if ctx.store(0, &macs, 0).is_err() {
        return Some(TC_ACT_OK);
    }
    // A frame decapsulated from VXLAN was addressed to another MAC and
    // marked for another host; the pod's stack would drop it.
    // SAFETY: plain helper call on our skb.
    unsafe { bpf_skb_change_type(ctx.skb.skb as *mut _, PACKET_HOST) };
    // SAFETY: plain helper call.
    Some(unsafe { bpf_redirect_peer(ep.ifindex, 0) as i32 })
}

/// Where a packet goes once translated: a local pod, another node's pod
/// (by the route map), else the kernel's own routing.
#[inline(always)]
pub fn onward(ctx: &TcContext, dst: [u8; 4]) -> i32 {
    if let Some(verdict) = to_local_pod(ctx, dst) {
        return verdict;
    }
    crate::forward::to_remote_node(ctx, dst).unwrap_or(TC_ACT_OK)
}

/// Like `onward`, for a packet ferry rewrote: one for an address outside
/// the cluster (an external client) is sent out by fib lookup rather than
/// handed to the kernel, which would refuse a packet arriving from outside
/// with this node's own address as its source.
#[inline(always)]
pub fn onward_translated(ctx: &TcContext, dst: [u8; 4]) -> i32 {
    if let Some(verdict) = to_local_pod(ctx, dst) {
        return verdict;
    }
    if let Some(verdict) = crate::forward::to_remote_node(ctx, dst) {
        return verdict;
    }
    crate::forward::by_fib(ctx, dst)
}
