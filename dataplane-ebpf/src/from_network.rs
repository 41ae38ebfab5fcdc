//! What the node does with a packet arriving from the network (the uplink,
//! or the VXLAN device after decapsulation). Only packets for Service
//! frontends, replies of flows this node translated and packets for local
//! pods are ferry's; everything else (the node's own traffic, ARP, VXLAN's
//! outer packets) goes to the kernel as it came.
use aya_ebpf::programs::TcContext;
use ferry_common::outcome;

use crate::{
    decision::{Decision, Delivery, TcVerdict, passed},
    deliver, external, fragment,
    parse::{L4Packet, Parsed, parse},
    translate,
};

#[inline(always)]
pub fn handle(ctx: &TcContext) -> i32 {
    let len = ctx.len();
    // Untranslated packets are ferry's only if they are for a local pod.
    let local_pod_only = Delivery::LocalPodOnly;
    let decision = match parse(ctx) {
        Parsed::L4(pkt) => decide(ctx, &pkt),
        Parsed::OtherIpv4(dst) => Decision::deliver(outcome::PASSED, dst, local_pod_only),
        // Requests from outside are for external frontends, which leave
        // through ferry once translated (see `external`). An untracked one
        // may be the node's own: it goes as it came.
        Parsed::Fragment(frag) => fragment::follow(ctx, &frag, Delivery::OnwardRewritten)
            .unwrap_or_else(|| {
                Decision::deliver(outcome::PASSED_FRAGMENT, frag.dst_addr, local_pod_only)
            }),
        // Not ours to judge: the kernel handles what is not for a pod.
        Parsed::NotIpv4 | Parsed::MalformedIpv4 | Parsed::TruncatedL4 => Decision::not_ours(),
    };
    deliver::finish(ctx, len, decision)
}

#[inline(always)]
fn decide(ctx: &TcContext, pkt: &L4Packet) -> Decision<TcVerdict> {
    if let Some(decision) = translate::reply(ctx, pkt) {
        return decision;
    }
    external::to_frontend(ctx, pkt)
        .unwrap_or_else(|| Decision::deliver(passed(pkt), pkt.dst_addr, Delivery::LocalPodOnly))
}
