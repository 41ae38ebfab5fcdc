//! What the host side of a pod's veth does with a packet the pod sent.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use ferry_common::{
    CT_DIR_ORIGINAL, CT_DIR_REPLY, SCOPE_CLUSTER_IP, SCOPE_EXTERNAL_FROM_PODS, ServiceKey, outcome,
};

use crate::{
    balance, conntrack,
    counters::count,
    deliver,
    maps::SERVICES,
    nat,
    parse::{L4Packet, Parsed, parse},
    reject,
};

#[inline(always)]
pub fn handle(ctx: &TcContext) -> i32 {
    let len = ctx.len();
    // (verdict, outcome, destination after translation)
    let (verdict, outcome, dst) = match parse(ctx) {
        Parsed::L4(pkt) => translate(ctx, &pkt),
        Parsed::NotIpv4 => (TC_ACT_OK, outcome::PASSED_NOT_IPV4, None),
        Parsed::OtherIpv4(dst) => (TC_ACT_OK, outcome::PASSED, Some(dst)),
        Parsed::Fragment(dst) => (TC_ACT_OK, outcome::PASSED_FRAGMENT, Some(dst)),
        Parsed::MalformedIpv4 => (TC_ACT_SHOT, outcome::DROP_MALFORMED_IPV4, None),
        Parsed::TruncatedL4 => (TC_ACT_SHOT, outcome::DROP_TRUNCATED_L4, None),
    };
    count(outcome, len);
    match dst {
        // A reply to an external client carries a node or load-balancer
        // address as its source now: ferry sends it, not the kernel. (A
        // translated request keeps the kernel's path to a non-pod backend:
        // host routing and netfilter, as for any other traffic.)
        Some(dst) if verdict == TC_ACT_OK && outcome == outcome::REVERSE_TRANSLATED => {
            deliver::onward_translated(ctx, dst)
        }
        Some(dst) if verdict == TC_ACT_OK => deliver::onward(ctx, dst),
        _ => verdict,
    }
}

#[inline(always)]
fn translate(ctx: &TcContext, pkt: &L4Packet) -> (i32, u32, Option<[u8; 4]>) {
    let service_key = ServiceKey {
        addr: pkt.dst_addr,
        port: pkt.dst_port,
        protocol: pkt.protocol,
        scope: SCOPE_CLUSTER_IP,
    };
    // A ClusterIP, else a NodePort / LoadBalancer IP / externalIP as pods
    // reach them.
    // SAFETY: the values are copied out at once.
    let service = (unsafe { SERVICES.get(service_key) }).copied().or_else(|| {
        let key = ServiceKey {
            scope: SCOPE_EXTERNAL_FROM_PODS,
            ..service_key
        };
        unsafe { SERVICES.get(key) }.copied()
    });
    let Some(service) = service else {
        // Not for a frontend: maybe a backend answering a translated flow.
        return match conntrack::track(pkt, CT_DIR_REPLY) {
            Some(target) => match nat::reverse_nat(ctx, pkt, &target) {
                Ok(()) => {
                    let dst = if target.peer_addr == [0; 4] {
                        pkt.dst_addr
                    } else {
                        target.peer_addr
                    };
                    (TC_ACT_OK, outcome::REVERSE_TRANSLATED, Some(dst))
                }
                Err(_) => (TC_ACT_SHOT, outcome::DROP_REWRITE_FAILED, None),
            },
            None => {
                conntrack::clear_clashing_reply(pkt);
                (TC_ACT_OK, outcome::PASSED, Some(pkt.dst_addr))
            }
        };
    };

    let target = match conntrack::track(pkt, CT_DIR_ORIGINAL) {
        Some(target) => target,
        None => {
            if service.backend_count == 0 {
                let (verdict, outcome) = reject::no_endpoints(ctx, pkt);
                return (verdict, outcome, None);
            }
            let Some((backend, _)) = balance::pick_backend(&service) else {
                return (TC_ACT_SHOT, outcome::DROP_NO_BACKEND_SLOT, None);
            };
            match conntrack::create(pkt, service.service_id, backend.addr, backend.port, None) {
                Ok(target) => target,
                Err(_) => return (TC_ACT_SHOT, outcome::DROP_CONNTRACK_WRITE, None),
            }
        }
    };
    match nat::dnat(ctx, pkt, &target) {
        Ok(()) => (TC_ACT_OK, outcome::TRANSLATED, Some(target.addr)),
        Err(_) => (TC_ACT_SHOT, outcome::DROP_REWRITE_FAILED, None),
    }
}
