//! What the node does with a packet arriving from the network (the uplink,
//! or the VXLAN device after decapsulation). Only packets for Service
//! frontends, replies of flows this node translated (and ICMP errors about
//! their packets, and the later fragments of their datagrams) and packets
//! for local pods are ferry's; everything else (the node's own traffic,
//! ARP, VXLAN's outer packets) goes to the kernel as it came.
use aya_ebpf::{bindings::__sk_buff, programs::TcContext};
use ferry_common::outcome;

use crate::{
    debug::Hook,
    decision::{Decision, Delivery, TcVerdict, passed},
    deliver, external, fragment,
    icmp_error::{self, Side},
    parse::{L4Packet, Parsed, is_icmp, is_trace, parse, parse_traced},
    translate,
};

/// Untranslated packets are ferry's only if they are for a local pod.
const LOCAL_POD_ONLY: Delivery = Delivery::LocalPodOnly;

#[inline(always)]
pub fn handle(ctx: &TcContext) -> i32 {
    // ICMP and the rest each get a frame of their own (BPF-to-BPF calls):
    // the verifier caps the frames of a call chain at 512 bytes together,
    // and the rest's frame alone nearly fills that. Only a look at the
    // protocol happens before the split, so the caller's frame stays empty.
    // A trace run (`ferry-agent trace --on uplink`) gets a copy of its own
    // in which every write is compiled out: reading the marker deep down
    // would cost the real packets' frame the stack it has not got.
    let finished = if is_icmp(ctx) {
        icmp(ctx.skb.skb)
    } else if is_trace(ctx) {
        settle::<true>(ctx.skb.skb)
    } else {
        settle::<false>(ctx.skb.skb)
    };
    deliver::settled(ctx.skb.skb, finished, Hook::FromNetwork)
}

#[inline(never)]
fn icmp(skb: *mut __sk_buff) -> deliver::Finished {
    let ctx = TcContext::new(skb);
    let len = ctx.len();
    let decision = match parse(&ctx) {
        Parsed::Icmp(dst) => icmp_error::translate(&ctx, Side::Network)
            .unwrap_or_else(|| Decision::deliver(outcome::PASSED, dst, LOCAL_POD_ONLY)),
        // `is_icmp` leaves nothing else but a bad IPv4 header.
        _ => Decision::not_ours(),
    };
    deliver::finish(&ctx, len, decision, false)
}

#[inline(never)]
fn settle<const TRACED: bool>(skb: *mut __sk_buff) -> deliver::Finished {
    let ctx = TcContext::new(skb);
    let len = ctx.len();
    let decision = match parse_traced(&ctx, TRACED) {
        Parsed::L4(pkt) => decide(&ctx, &pkt),
        Parsed::Icmp(dst) | Parsed::OtherIpv4(dst) => {
            Decision::deliver(outcome::PASSED, dst, LOCAL_POD_ONLY)
        }
        // Requests from outside are for external frontends, which leave
        // through ferry once translated (see `external`). An untracked one
        // may be the node's own: it goes as it came.
        Parsed::Fragment(frag) => fragment::follow(&ctx, &frag, Delivery::OnwardRewritten)
            .unwrap_or_else(|| {
                Decision::deliver(outcome::PASSED_FRAGMENT, frag.dst_addr, LOCAL_POD_ONLY)
            }),
        // Not ours to judge: the kernel handles what is not for a pod.
        Parsed::NotIpv4 | Parsed::MalformedIpv4 | Parsed::TruncatedL4 => Decision::not_ours(),
    };
    deliver::finish(&ctx, len, decision, TRACED)
}

#[inline(always)]
fn decide(ctx: &TcContext, pkt: &L4Packet) -> Decision<TcVerdict> {
    if let Some(decision) = translate::reply(ctx, pkt) {
        return decision;
    }
    external::to_frontend(ctx, pkt)
        .unwrap_or_else(|| Decision::deliver(passed(pkt), pkt.dst_addr, LOCAL_POD_ONLY))
}
