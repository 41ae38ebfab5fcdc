//! What the node does with a packet arriving from the network (the uplink,
//! or the VXLAN device after decapsulation). Only packets for local pods
//! are touched; everything else (the node's own traffic, ARP, VXLAN's outer
//! packets) goes to the kernel as it came.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use ferry_common::{CT_DIR_REPLY, outcome};

use crate::{
    conntrack,
    counters::count,
    deliver, external, nat,
    parse::{Parsed, parse},
};

#[inline(always)]
pub fn handle(ctx: &TcContext) -> i32 {
    let len = ctx.len();
    let (verdict, outcome, dst, translated) = match parse(ctx) {
        Parsed::L4(pkt) => match conntrack::track(&pkt, CT_DIR_REPLY) {
            // A backend answering a flow this node translated: a pod of
            // this node reaching a Service, or an external client.
            Some(target) => match nat::reverse_nat(ctx, &pkt, &target) {
                Ok(()) => {
                    let dst = if target.peer_addr == [0; 4] {
                        pkt.dst_addr
                    } else {
                        target.peer_addr
                    };
                    (TC_ACT_OK, outcome::REVERSE_TRANSLATED, Some(dst), true)
                }
                Err(_) => (TC_ACT_SHOT, outcome::DROP_REWRITE_FAILED, None, false),
            },
            None => match external::translate(ctx, &pkt) {
                Some((verdict, outcome, dst)) => (verdict, outcome, dst, true),
                None => (TC_ACT_OK, outcome::PASSED, Some(pkt.dst_addr), false),
            },
        },
        Parsed::OtherIpv4(dst) => (TC_ACT_OK, outcome::PASSED, Some(dst), false),
        Parsed::Fragment(dst) => (TC_ACT_OK, outcome::PASSED_FRAGMENT, Some(dst), false),
        // Not ours to judge: the kernel handles what is not for a pod.
        Parsed::NotIpv4 | Parsed::MalformedIpv4 | Parsed::TruncatedL4 => return TC_ACT_OK,
    };
    let Some(dst) = dst.filter(|_| verdict == TC_ACT_OK) else {
        count(outcome, len);
        return verdict;
    };
    if translated {
        // Translated here: it must leave through ferry, wherever it goes
        // (the kernel would see our own address as a martian source).
        count(outcome, len);
        return deliver::onward_translated(ctx, dst);
    }
    // Untranslated: only packets for local pods are ours.
    match deliver::to_local_pod(ctx, dst) {
        Some(verdict) => {
            count(outcome, len);
            verdict
        }
        None => TC_ACT_OK,
    }
}
