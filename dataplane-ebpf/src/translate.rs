//! The packets of Service flows on the tc path: a packet for a frontend
//! translated to the flow's backend (a new flow planned first), and a
//! backend's reply translated back and sent to the client.
use aya_ebpf::programs::TcContext;
use ferry_common::{CT_DIR_ORIGINAL, CT_DIR_REPLY, ServiceValue, new_flow::Client, outcome};

use crate::{
    conntrack,
    decision::{Decision, Delivery, TcVerdict},
    fragment,
    nat::{self, Way},
    new_flow,
    parse::L4Packet,
};

/// A packet from `client` for `service`'s frontend: its flow's backend
/// (the flow started if there is none), then on `via`.
#[inline(always)]
pub fn to_frontend(
    ctx: &TcContext,
    pkt: &L4Packet,
    service: &ServiceValue,
    client: Client,
    via: Delivery,
) -> Decision<TcVerdict> {
    let (target, new) = match conntrack::track(pkt, CT_DIR_ORIGINAL) {
        Some(target) => (target, false),
        None => match new_flow::start(ctx, pkt, service, client) {
            Ok(target) => (target, true),
            Err(decision) => return decision.for_service(service.service_id, false),
        },
    };
    let decision = if nat::translate(ctx, pkt, &target, Way::Original).is_err() {
        Decision::drop(outcome::DROP_REWRITE_FAILED)
    } else {
        fragment::record(ctx, pkt, CT_DIR_ORIGINAL);
        Decision::deliver(outcome::TRANSLATED, target.addr, via)
    };
    decision.for_service(service.service_id, new)
}

/// A backend answering a flow this node translated (for one of its pods,
/// or an external client): translated back and sent to the client — the
/// source-NAT peer, if the flow has one, else the packet's destination.
/// None when the packet is no tracked reply.
#[inline(always)]
pub fn reply(ctx: &TcContext, pkt: &L4Packet) -> Option<Decision<TcVerdict>> {
    let target = conntrack::track(pkt, CT_DIR_REPLY)?;
    if nat::translate(ctx, pkt, &target, Way::Reply).is_err() {
        return Some(
            Decision::drop(outcome::DROP_REWRITE_FAILED).for_service(target.service_id, false),
        );
    }
    fragment::record(ctx, pkt, CT_DIR_REPLY);
    let dst = if target.peer_addr == conntrack::NO_ADDR {
        pkt.dst_addr
    } else {
        target.peer_addr
    };
    // Its source is a frontend (a node or load-balancer address for an
    // external client) now: ferry sends it, not the kernel.
    Some(
        Decision::deliver(outcome::REVERSE_TRANSLATED, dst, Delivery::OnwardRewritten)
            .for_service(target.service_id, false),
    )
}
