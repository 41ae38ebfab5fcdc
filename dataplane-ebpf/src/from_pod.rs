//! What the host side of a pod's veth does with a packet the pod sent.
use aya_ebpf::programs::TcContext;
use ferry_common::{SCOPE_CLUSTER_IP, SCOPE_EXTERNAL_FROM_PODS, new_flow::Client, outcome};

use crate::{
    balance, conntrack,
    decision::{Decision, Delivery, TcVerdict, passed},
    deliver, fragment,
    parse::{L4Packet, Parsed, parse},
    service_range, translate,
};

#[inline(always)]
pub fn handle(ctx: &TcContext) -> i32 {
    let len = ctx.len();
    let decision = match parse(ctx) {
        Parsed::L4(pkt) => decide(ctx, &pkt),
        Parsed::NotIpv4 => Decision::new(outcome::PASSED_NOT_IPV4, TcVerdict::Pass),
        Parsed::OtherIpv4(dst) => service_range::other_protocol(dst)
            .unwrap_or_else(|| Decision::deliver(outcome::PASSED, dst, Delivery::Onward)),
        Parsed::Fragment(frag) => fragment::follow(ctx, &frag, Delivery::Onward)
            .or_else(|| service_range::untracked_fragment(frag.dst_addr))
            .unwrap_or_else(|| {
                Decision::deliver(outcome::PASSED_FRAGMENT, frag.dst_addr, Delivery::Onward)
            }),
        Parsed::MalformedIpv4 => Decision::drop(outcome::DROP_MALFORMED_IPV4),
        Parsed::TruncatedL4 => Decision::drop(outcome::DROP_TRUNCATED_L4),
    };
    deliver::finish(ctx, len, decision)
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
