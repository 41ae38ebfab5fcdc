//! XDP on the uplink: external traffic (NodePort, LoadBalancer IP,
//! externalIP) whose backend is on another node is turned around here,
//! before the kernel allocates an skb: translated (DNAT + SNAT to this
//! node), and sent straight back out towards the backend's node; its
//! replies are translated back and sent to the client the same way.
//! Everything else is handed to the tc programs, which share the conntrack
//! map, so a flow is the same flow on either path.
use aya_ebpf::{
    bindings::{
        xdp_action::{XDP_PASS, XDP_TX},
        xdp_md,
    },
    helpers::generated::bpf_redirect,
    programs::XdpContext,
};
use ferry_common::{
    CT_DIR_ORIGINAL, CT_DIR_REPLY, ROUTE_MODE_NATIVE, SCOPE_EXTERNAL, ServiceValue,
    new_flow::Client,
    outcome,
    trace::{TRACE_MARK, TRACE_META_LEN, TRACE_OUTCOME_WRITTEN, TRACE_PRIORITY},
};

use crate::{
    balance,
    conntrack::{self, NO_ADDR, NatTarget},
    decision::{Decision, NextHop, XdpVerdict, count, count_for_service, service_stats},
    fib::{self, Fib},
    forward,
    maps::CONNTRACK,
    nat::{self, Way},
    new_flow::{self, NewFlow},
    parse::{Frame, L4Packet, Parsed, parse_frame},
};

#[inline(always)]
pub fn handle(ctx: &XdpContext) -> u32 {
    // A trace run (`ferry-agent trace --on xdp`) gets a copy of its own in
    // which every write is compiled out; both copies are frames of their
    // own, as one would not fit on top of the other.
    if is_trace(ctx) {
        run::<true>(ctx.ctx)
    } else {
        run::<false>(ctx.ctx)
    }
}

/// A trace run carries the trace marker (`ferry_common::trace`) in its
/// first 8 bytes of XDP metadata; a real packet has no metadata (nothing
/// before ferry's program on the uplink writes any).
#[inline(always)]
fn is_trace(ctx: &XdpContext) -> bool {
    let meta = ctx.metadata();
    if meta + TRACE_META_LEN > ctx.data() {
        return false;
    }
    // SAFETY: bounds checked against `data` just above.
    let marker = unsafe { *(meta as *const [u32; 2]) };
    marker == [TRACE_PRIORITY, TRACE_MARK]
}

#[inline(never)]
fn run<const TRACED: bool>(md: *mut xdp_md) -> u32 {
    let ctx = XdpContext::new(md);
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
        len: ctx.data_end() - ctx.data(),
    };
    let decision = match parse_frame(&frame, TRACED, true) {
        // A first fragment's ports must be recorded for the rest of its
        // datagram, which only tc can follow (`fragment`): all fragments
        // are tc's.
        Parsed::L4(pkt) if !pkt.first_fragment => {
            decide(&ctx, &frame, &pkt).unwrap_or_else(Decision::hand_to_tc)
        }
        _ => Decision::hand_to_tc(),
    };
    finish::<TRACED>(&ctx, &frame, decision)
}

/// The XDP hook's finishing step: send what it translated (counted, under
/// the counting policy in `decision`), hand the rest to tc uncounted. A
/// trace counts nothing and hands the outcome of what it would send back
/// in the metadata's first word instead (nothing there: left to tc).
#[inline(always)]
fn finish<const TRACED: bool>(
    ctx: &XdpContext,
    frame: &Frame,
    decision: Decision<XdpVerdict>,
) -> u32 {
    let XdpVerdict::Transmit(hop) = decision.verdict else {
        return XDP_PASS;
    };
    if TRACED {
        let meta = ctx.metadata();
        if meta + TRACE_META_LEN <= ctx.data() {
            // SAFETY: bounds checked against `data` just above.
            unsafe { *(meta as *mut u32) = decision.outcome | TRACE_OUTCOME_WRITTEN };
        }
    } else {
        count(decision.outcome, frame.len as u32);
        count_for_service(decision.service, decision.outcome, frame.len as u32);
    }
    if frame.store(0, hop.macs).is_none() {
        return XDP_PASS;
    }
    if hop.ifindex == ingress_ifindex(ctx) {
        return XDP_TX;
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(hop.ifindex, 0) as u32 }
}

#[inline(always)]
fn ingress_ifindex(ctx: &XdpContext) -> u32 {
    // SAFETY: reading the context's ingress ifindex.
    unsafe { (*ctx.ctx).ingress_ifindex }
}

/// None: hand the packet to tc.
#[inline(always)]
fn decide(ctx: &XdpContext, frame: &Frame, pkt: &L4Packet) -> Option<Decision<XdpVerdict>> {
    // A backend's reply to an external flow this node source-NATed.
    // SAFETY: copied out at once.
    if let Some(e) = unsafe { CONNTRACK.get(&conntrack::key_of(pkt, CT_DIR_REPLY)) }.copied() {
        if e.peer_nat_addr == NO_ADDR {
            return None;
        }
        // The client's next hop, before anything is written.
        let hop = next_hop(ctx, e.peer_nat_addr)?;
        let target = conntrack::track(pkt, CT_DIR_REPLY)?;
        return transmit(frame, pkt, &target, Way::Reply, hop)
            .map(|d| d.for_service(target.service_id, false));
    }
    let service = balance::frontend(pkt, SCOPE_EXTERNAL)?;
    let target = match conntrack::track(pkt, CT_DIR_ORIGINAL) {
        Some(target) => target,
        None => start(pkt, &service)?,
    };
    // Local backends are the tc path's (bpf_redirect_peer).
    if target.peer_addr == NO_ADDR {
        return None;
    }
    let hop = next_hop(ctx, native_route_to(target.addr)?)?;
    transmit(frame, pkt, &target, Way::Original, hop)
        .map(|d| d.for_service(service.service_id, false))
}

#[inline(always)]
fn transmit(
    frame: &Frame,
    pkt: &L4Packet,
    target: &NatTarget,
    way: Way,
    hop: NextHop,
) -> Option<Decision<XdpVerdict>> {
    nat::translate_frame(frame, pkt, target, way)?;
    let outcome = match way {
        Way::Original => outcome::TRANSLATED_XDP,
        Way::Reply => outcome::REVERSE_TRANSLATED_XDP,
    };
    Some(Decision::new(outcome, XdpVerdict::Transmit(hop)))
}

/// Carry out the new-flow plan as far as XDP can: a backend on another
/// node reached by native routing is XDP's to send. A local backend is
/// recorded here and left to tc (bpf_redirect_peer), which finds the flow
/// and follows it, so the draw stays uniform. Everything else (Local
/// policy, rejects, drops, VXLAN) is left to tc unrecorded, and a missing
/// source-NAT port too: tc tries again and counts the drop.
#[inline(always)]
fn start(pkt: &L4Packet, service: &ServiceValue) -> Option<NatTarget> {
    let id = service.service_id;
    let target = match new_flow::plan(pkt, service, Client::External) {
        NewFlow::SourceNat((backend, seed)) => {
            native_route_to(backend.addr)?;
            conntrack::create_snat(pkt, id, backend.addr, backend.port, seed).ok()?
        }
        NewFlow::Direct((backend, _)) => {
            conntrack::create(pkt, id, backend.addr, backend.port, None).ok()?
        }
        NewFlow::LocalPolicy(_) | NewFlow::Reject | NewFlow::Drop(_) => return None,
    };
    // The flow starts here, whoever sends its packets: tc follows a flow
    // XDP recorded as one it finds, so the new flow is counted now.
    if !pkt.dry_run {
        if let Some(stats) = service_stats(id) {
            stats.new_connections += 1;
        }
    }
    Some(target)
}

/// The address of the node owning `pod`'s CIDR, if native routing reaches
/// it.
#[inline(always)]
fn native_route_to(pod: [u8; 4]) -> Option<[u8; 4]> {
    let route = forward::route_to(pod)?;
    (route.mode == ROUTE_MODE_NATIVE).then_some(route.node_addr)
}

/// Where to send a packet for `dst` from the uplink, if the neighbour is
/// known.
#[inline(always)]
fn next_hop(ctx: &XdpContext, dst: [u8; 4]) -> Option<NextHop> {
    match fib::lookup(ctx.ctx.cast(), dst, ingress_ifindex(ctx)) {
        Fib::Found(hop) => Some(hop),
        _ => None,
    }
}
