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
    debug::{self, Hook},
    decision::{Decision, Delivery, NEW_FLOW, TcVerdict, count, count_for_service},
    forward,
    maps::ENDPOINTS,
    monitor,
    parse::Frame,
};

const PACKET_HOST: u32 = 0;

/// A finished packet as a hook's deep frame hands it to its entry point:
/// the tc action in bits 0..32, the outcome in 32..40 and the frontend's
/// service id in 40..61 (for the debug line), and above them what to
/// report: `REPORT_DROP` / `REPORT_REJECT` (the monitor), `REPORT_COUNTED`
/// (a packet ferry settled: the debug line). The entry point, whose frame
/// is nearly empty, reports it (`settled`): the frames that decide have no
/// stack left for it.
pub type Finished = u64;

const OUTCOME_SHIFT: u32 = 32;
const SERVICE_SHIFT: u32 = 40;
const SERVICE_MASK: u64 = (1 << 21) - 1;
const REPORT_COUNTED: u64 = 1 << 61;
const REPORT_DROP: u64 = 1 << 62;
const REPORT_REJECT: u64 = 1 << 63;
const _: () = assert!(ferry_common::FRONTENDS_LIMIT as u64 + 1 <= SERVICE_MASK);
const _: () = assert!(ferry_common::outcome::COUNTER_SLOTS <= 256);

/// The entry point's last step: report what `finished` asks to the
/// monitor and, while `ferry-agent debug on`, to the debug log; return its
/// tc action.
#[inline(always)]
pub fn settled(skb: *mut aya_ebpf::bindings::__sk_buff, finished: Finished, hook: Hook) -> i32 {
    let outcome = ((finished >> OUTCOME_SHIFT) & 0xff) as u32;
    if finished & (REPORT_DROP | REPORT_REJECT) != 0 {
        monitor::dropped(skb, outcome, finished & REPORT_REJECT != 0);
    }
    if finished & REPORT_COUNTED != 0 && debug::enabled() {
        let service = ((finished >> SERVICE_SHIFT) & SERVICE_MASK) as u32;
        debug::packet(skb, hook, outcome, service, finished as u32 as i32);
    }
    finished as u32 as i32
}

/// Carry out `decision` for a packet of `len` bytes (as it arrived), and
/// count it unless it turns out not to be ferry's. `traced`: a trace run
/// (`ferry_common::trace`), which counts nothing and sends no event but
/// hands its outcome back; only the pod hook is traced, and the uplink's
/// passes a constant false (its frames cannot afford reading the mark).
#[inline(always)]
pub fn finish(ctx: &TcContext, len: u32, decision: Decision<TcVerdict>, traced: bool) -> Finished {
    let report = match decision.verdict {
        _ if traced => 0,
        TcVerdict::Drop => REPORT_DROP,
        TcVerdict::Redirected => REPORT_REJECT,
        _ => 0,
    };
    let (action, counted) = act(ctx, len, decision, traced);
    let described = (u64::from(decision.outcome & 0xff) << OUTCOME_SHIFT)
        | ((u64::from(decision.service & !NEW_FLOW) & SERVICE_MASK) << SERVICE_SHIFT);
    let counted = if counted { REPORT_COUNTED } else { 0 };
    report | counted | described | u64::from(action as u32)
}

/// The tc action, and whether the packet was counted (ferry's and no
/// trace).
#[inline(always)]
fn act(ctx: &TcContext, len: u32, decision: Decision<TcVerdict>, traced: bool) -> (i32, bool) {
    let action = match decision.verdict {
        TcVerdict::NotOurs => return (TC_ACT_OK, false),
        TcVerdict::Pass => TC_ACT_OK,
        TcVerdict::Drop => TC_ACT_SHOT,
        TcVerdict::Redirected => TC_ACT_REDIRECT,
        TcVerdict::Deliver { dst, via } => match deliver(ctx, dst, via) {
            Some(action) => action,
            None => return (TC_ACT_OK, false),
        },
    };
    if traced {
        // A trace run counts nothing; it hands its outcome back instead.
        let outcome = decision.outcome | TRACE_OUTCOME_WRITTEN;
        // SAFETY: writing a field of our own skb, which tc may write.
        unsafe { (*ctx.skb.skb).cb[TRACE_CB_OUTCOME] = outcome };
        (action, false)
    } else {
        count(decision.outcome, len);
        count_for_service(decision.service, decision.outcome, len);
        (action, true)
    }
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
