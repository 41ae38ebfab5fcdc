//! The tc hooks' finishing step: count the packet under the counting
//! policy (`decision`) and carry its decision out. Local delivery puts a
//! packet for a pod on this node straight into the pod's namespace with
//! `bpf_redirect_peer`, skipping the host's routing and the host side of
//! the destination veth.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::generated::{bpf_redirect_peer, bpf_skb_change_type},
    programs::TcContext,
};
use ferry_common::{
    EndpointKey,
    trace::{TRACE_CB_OUTCOME, TRACE_OUTCOME_WRITTEN},
};

use crate::{
    decision::{Decision, Delivery, TcVerdict, count},
    forward,
    maps::ENDPOINTS,
    parse::{Frame, is_trace},
};

const PACKET_HOST: u32 = 0;

/// Carry out `decision` for a packet of `len` bytes (as it arrived), and
/// count it unless it turns out not to be ferry's.
#[inline(always)]
pub fn finish(ctx: &TcContext, len: u32, decision: Decision<TcVerdict>) -> i32 {
    let action = match decision.verdict {
        TcVerdict::NotOurs => return TC_ACT_OK,
        TcVerdict::Pass => TC_ACT_OK,
        TcVerdict::Drop => TC_ACT_SHOT,
        TcVerdict::Redirected => TC_ACT_REDIRECT,
        TcVerdict::Deliver { dst, via } => match deliver(ctx, dst, via) {
            Some(action) => action,
            None => return TC_ACT_OK,
        },
    };
    if is_trace(ctx) {
        // A trace run counts nothing; it hands its outcome back instead.
        let outcome = decision.outcome | TRACE_OUTCOME_WRITTEN;
        // SAFETY: writing a field of our own skb, which tc may write.
        unsafe { (*ctx.skb.skb).cb[TRACE_CB_OUTCOME] = outcome };
    } else {
        count(decision.outcome, len);
    }
    action
}

/// The tc action sending the packet on to `dst`; None when it is not
/// ferry's to send (`Delivery::LocalPodOnly` and no local pod has `dst`).
#[inline(always)]
fn deliver(ctx: &TcContext, dst: [u8; 4], via: Delivery) -> Option<i32> {
    if let Some(action) = to_local_pod(ctx, dst) {
        return Some(action);
    }
    match via {
        Delivery::LocalPodOnly => None,
        Delivery::Onward => Some(forward::to_remote_node(ctx, dst).unwrap_or(TC_ACT_OK)),
        Delivery::OnwardRewritten => {
            Some(forward::to_remote_node(ctx, dst).unwrap_or_else(|| forward::by_fib(ctx, dst)))
        }
    }
}

/// Deliver to the local pod owning `dst`; None when no local pod has that
/// address.
#[inline(always)]
fn to_local_pod(ctx: &TcContext, dst: [u8; 4]) -> Option<i32> {
    // SAFETY: copied out at once.
    let ep = (unsafe { ENDPOINTS.get(EndpointKey { addr: dst }) }).copied()?;
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&ep.pod_mac);
    macs[6..].copy_from_slice(&ep.host_mac);
    // Written in place (direct packet access) rather than through
    // bpf_skb_store_bytes: the headers are in the linear area already
    // (`parse` pulled them in), and a helper call costs more than the
    // twelve bytes (the bench's program-cost scenario measures it).
    if Frame::of_tc(ctx).store(0, macs).is_none() {
        return Some(TC_ACT_OK);
    }
    // A frame decapsulated from VXLAN was addressed to another MAC and
    // marked for another host; the pod's stack would drop it.
    // SAFETY: plain helper call on our skb.
    unsafe { bpf_skb_change_type(ctx.skb.skb as *mut _, PACKET_HOST) };
    // SAFETY: plain helper call.
    Some(unsafe { bpf_redirect_peer(ep.ifindex, 0) as i32 })
}
