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
    deliver, nat,
    parse::{Parsed, parse},
};

#[inline(always)]
pub fn handle(ctx: &TcContext) -> i32 {
    let len = ctx.len();
    let (outcome, dst) = match parse(ctx) {
        Parsed::L4(pkt) => match conntrack::track(&pkt, CT_DIR_REPLY) {
            // A backend on another node answering a flow a pod of this
            // node opened through a Service.
            Some(target) => match nat::reverse_nat(ctx, &pkt, &target) {
                Ok(()) => (outcome::REVERSE_TRANSLATED, pkt.dst_addr),
                Err(_) => {
                    count(outcome::DROP_REWRITE_FAILED, len);
                    return TC_ACT_SHOT;
                }
            },
            None => (outcome::PASSED, pkt.dst_addr),
        },
        Parsed::OtherIpv4(dst) => (outcome::PASSED, dst),
        Parsed::Fragment(dst) => (outcome::PASSED_FRAGMENT, dst),
        // Not ours to judge: the kernel handles what is not for a pod.
        Parsed::NotIpv4 | Parsed::MalformedIpv4 | Parsed::TruncatedL4 => return TC_ACT_OK,
    };
    match deliver::to_local_pod(ctx, dst) {
        Some(verdict) => {
            count(outcome, len);
            verdict
        }
        None => TC_ACT_OK,
    }
}
