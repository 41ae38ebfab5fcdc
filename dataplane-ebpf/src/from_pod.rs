//! What the host side of a pod's veth does with a packet the pod sent.
use aya_ebpf::{bindings::__sk_buff, programs::TcContext};
use ferry_common::{SCOPE_CLUSTER_IP, SCOPE_EXTERNAL_FROM_PODS, new_flow::Client, outcome};

use crate::{
    balance, conntrack,
    debug::Hook,
    decision::{Decision, Delivery, TcVerdict, passed},
    deliver, fragment,
    icmp_error::{self, Side},
    maps::POD_SOURCES,
    parse::{L4Packet, Parsed, ipv4_source, is_icmp, is_trace, parse, parse_traced},
    service_range, translate,
};

#[inline(always)]
pub fn handle(ctx: &TcContext) -> i32 {
    if spoofed(ctx) {
        let finished = deliver::finish(
            ctx,
            ctx.len(),
            Decision::drop(outcome::DROP_SPOOFED_SOURCE),
            is_trace(ctx),
        );
        return deliver::settled(ctx.skb.skb, finished, Hook::FromPod);
    }
    // ICMP and the rest each get a frame of their own (BPF-to-BPF calls):
    // the verifier caps the frames of a call chain at 512 bytes together,
    // and the rest's frame alone nearly fills that. Only a look at the
    // protocol (and at the source) happens before the split, so the
    // caller's frame stays empty.
    let finished = if is_icmp(ctx) {
        icmp(ctx.skb.skb)
    } else {
        settle(ctx.skb.skb)
    };
    deliver::settled(ctx.skb.skb, finished, Hook::FromPod)
}

/// An IPv4 packet whose source is not the address of the pod behind this
/// veth. Everything after this check (conntrack writes and clears,
/// affinity, source-NAT ports, fragments, ICMP errors) is keyed by the
/// packet's source, so checking it here is what keeps a pod to its own
/// flows. A veth ferry-cni did not record has no address: all its IPv4 is
/// dropped (fails closed). Other ethertypes pass: ARP cannot redirect
/// another pod's traffic (each pod is reached by a route through its own
/// veth), and ferry keeps no state for IPv6.
#[inline(always)]
fn spoofed(ctx: &TcContext) -> bool {
    let Some(src) = ipv4_source(ctx) else {
        return false;
    };
    // SAFETY: reading a field of our own skb.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: copied out at once.
    !(unsafe { POD_SOURCES.get(ifindex) }).is_some_and(|pod| pod.addr == src)
}

#[inline(never)]
fn icmp(skb: *mut __sk_buff) -> deliver::Finished {
    let ctx = TcContext::new(skb);
    let traced = is_trace(&ctx);
    let len = ctx.len();
    let decision = match parse(&ctx) {
        Parsed::Icmp(dst) => {
            icmp_error::translate(&ctx, Side::Pod).unwrap_or_else(|| other_protocol(dst))
        }
        // `is_icmp` leaves nothing else but a bad IPv4 header.
        _ => Decision::drop(outcome::DROP_MALFORMED_IPV4),
    };
    deliver::finish(&ctx, len, decision, traced)
}

#[inline(never)]
fn settle(skb: *mut __sk_buff) -> deliver::Finished {
    let ctx = TcContext::new(skb);
    let traced = is_trace(&ctx);
    let len = ctx.len();
    let decision = match parse_traced(&ctx, traced) {
        Parsed::L4(pkt) => decide(&ctx, &pkt),
        Parsed::NotIpv4 => Decision::new(outcome::PASSED_NOT_IPV4, TcVerdict::Pass),
        Parsed::Icmp(dst) | Parsed::OtherIpv4(dst) => other_protocol(dst),
        Parsed::Fragment(frag) => fragment::follow(&ctx, &frag, Delivery::Onward)
            .or_else(|| service_range::untracked_fragment(frag.dst_addr))
            .unwrap_or_else(|| {
                Decision::deliver(outcome::PASSED_FRAGMENT, frag.dst_addr, Delivery::Onward)
            }),
        Parsed::MalformedIpv4 => Decision::drop(outcome::DROP_MALFORMED_IPV4),
        Parsed::TruncatedL4 => Decision::drop(outcome::DROP_TRUNCATED_L4),
    };
    deliver::finish(&ctx, len, decision, traced)
}

/// Neither TCP nor UDP, nor an ICMP error ferry translates.
#[inline(always)]
fn other_protocol(dst: [u8; 4]) -> Decision<TcVerdict> {
    service_range::other_protocol(dst)
        .unwrap_or_else(|| Decision::deliver(outcome::PASSED, dst, Delivery::Onward))
}

#[inline(always)]
fn decide(ctx: &TcContext, pkt: &L4Packet) -> Decision<TcVerdict> {
    // A ClusterIP, else a NodePort / LoadBalancer IP / externalIP as pods
    // reach them.
    let service = balance::frontend(pkt, SCOPE_CLUSTER_IP)
        .or_else(|| balance::frontend(pkt, SCOPE_EXTERNAL_FROM_PODS));
    if let Some(service) = service {
        // A translated request keeps the kernel's path to a backend that is
        // no pod: host routing and netfilter, as for any other traffic.
        return translate::to_frontend(ctx, pkt, &service, Client::Pod, Delivery::Onward);
    }
    // Not for a frontend: maybe a backend answering a translated flow, else
    // the service range (an unserved port, an unallocated address), else
    // traffic ferry does not translate.
    translate::reply(ctx, pkt)
        .or_else(|| service_range::unmatched(ctx, pkt))
        .unwrap_or_else(|| {
            conntrack::clear_clashing_reply(pkt);
            Decision::deliver(passed(pkt), pkt.dst_addr, Delivery::Onward)
        })
}
