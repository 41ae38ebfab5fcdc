//! Service frontends reached from outside the cluster, on the uplink:
//! NodePorts on the node's addresses, LoadBalancer ingress IPs and
//! externalIPs. externalTrafficPolicy Cluster may pick a backend on another
//! node; the source then becomes this node's address (and a free port), so
//! the reply comes back here to be translated (see `new_flow`). Local keeps
//! the client's address and uses this node's backends only.
use aya_ebpf::programs::TcContext;
use ferry_common::{SCOPE_EXTERNAL, new_flow::Client};

use crate::{
    balance,
    decision::{Decision, Delivery, TcVerdict},
    parse::L4Packet,
    translate,
};

/// None when the packet is not for an external frontend.
#[inline(always)]
pub fn to_frontend(ctx: &TcContext, pkt: &L4Packet) -> Option<Decision<TcVerdict>> {
    let service = balance::frontend(pkt, SCOPE_EXTERNAL)?;
    // Translated here, it must leave through ferry wherever it goes: the
    // kernel would see this node's own address as a martian source.
    let via = Delivery::OnwardRewritten;
    Some(translate::to_frontend(
        ctx,
        pkt,
        &service,
        Client::External,
        via,
    ))
}
