//! XDP on the uplink: external traffic (NodePort, LoadBalancer IP,
//! externalIP) whose backend is on another node is turned around here,
//! before the kernel allocates an skb: translated (DNAT + SNAT to this
//! node), and sent straight back out towards the backend's node; its
//! replies are translated back and sent to the client the same way.
//! Everything else passes to the tc programs, which share the conntrack
//! map, so a flow is the same flow on either path.
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup,
        xdp_action::{XDP_PASS, XDP_TX},
    },
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use ferry_common::{
    CT_DIR_ORIGINAL, CT_DIR_REPLY, EndpointKey, PROTO_UDP, ROUTE_MODE_NATIVE, SCOPE_EXTERNAL,
    SERVICE_FLAG_LOCAL_ONLY, ServiceKey, ServiceValue, csum::adjust, outcome,
};

use aya_ebpf::btf_maps::lpm_trie::Key;

use crate::{
    balance,
    conntrack::{self, NatTarget},
    counters::count,
    maps::{CONNTRACK, ENDPOINTS, ROUTES, SERVICES},
    parse::{ETH_HLEN, Frame, L4Packet, Parsed, parse_frame},
};

const AF_INET: u8 = 2;

#[inline(always)]
pub fn handle(ctx: &XdpContext) -> u32 {
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
        len: ctx.data_end() - ctx.data(),
    };
    let Parsed::L4(pkt) = parse_frame(&frame) else {
        return XDP_PASS;
    };
    let len = frame.len as u32;
    // SAFETY: reading the context's ingress ifindex.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };

    // A backend's reply to an external flow this node source-NATed.
    // SAFETY: copied out at once.
    if let Some(e) = unsafe { CONNTRACK.get(&conntrack::key_of(&pkt, CT_DIR_REPLY)) }.copied() {
        if e.peer_nat_addr == [0; 4] {
            return XDP_PASS;
        }
        // The client's next hop, before anything is written.
        let Some(macs) = next_hop(ctx, e.peer_nat_addr, ifindex) else {
            return XDP_PASS;
        };
        let Some(target) = conntrack::track(&pkt, CT_DIR_REPLY) else {
            return XDP_PASS;
        };
        // Reply: source backend -> frontend, destination us -> client.
        if rewrite(
            &frame,
            &pkt,
            (target.addr, target.port),
            (target.peer_addr, target.peer_port),
        )
        .is_none()
        {
            return XDP_PASS;
        }
        count(outcome::REVERSE_TRANSLATED_XDP, len);
        return transmit(&frame, macs, ifindex);
    }

    let key = ServiceKey {
        addr: pkt.dst_addr,
        port: pkt.dst_port,
        protocol: pkt.protocol,
        scope: SCOPE_EXTERNAL,
    };
    // SAFETY: copied out at once.
    let Some(service) = (unsafe { SERVICES.get(key) }).copied() else {
        return XDP_PASS;
    };
    let target = match conntrack::track(&pkt, CT_DIR_ORIGINAL) {
        // Local backends are the tc path's (bpf_redirect_peer).
        Some(target) if target.peer_addr == [0; 4] => return XDP_PASS,
        Some(target) => target,
        None => match new_flow(&pkt, service) {
            Some(target) => target,
            None => return XDP_PASS,
        },
    };
    let Some(macs) = route_to_backend_node(ctx, target.addr, ifindex) else {
        return XDP_PASS;
    };
    // Original: destination frontend -> backend, source client -> us.
    if rewrite(
        &frame,
        &pkt,
        (target.peer_addr, target.peer_port),
        (target.addr, target.port),
    )
    .is_none()
    {
        return XDP_PASS;
    }
    count(outcome::TRANSLATED_XDP, len);
    transmit(&frame, macs, ifindex)
}

/// A new external flow. XDP carries it when the backend is on another node
/// reached by native routing; a local backend is recorded here and left to
/// the tc path (bpf_redirect_peer), which finds the flow and follows it, so
/// the draw stays uniform. None: pass the packet on.
#[inline(always)]
fn new_flow(pkt: &L4Packet, service: ServiceValue) -> Option<NatTarget> {
    if service.flags & SERVICE_FLAG_LOCAL_ONLY != 0 || service.backend_count == 0 {
        // Local-only and reject decisions are the tc path's.
        return None;
    }
    let (backend, random) = balance::pick_backend(&service)?;
    // SAFETY: lookup only.
    if unsafe { ENDPOINTS.get(EndpointKey { addr: backend.addr }) }.is_some() {
        let _ = conntrack::create(pkt, service.service_id, backend.addr, backend.port, None);
        return None;
    }
    let route = ROUTES.get(&Key::new(32, backend.addr)).copied()?;
    if route.mode != ROUTE_MODE_NATIVE {
        return None;
    }
    // No port: tc tries again and counts the drop.
    conntrack::create_snat(pkt, service.service_id, backend.addr, backend.port, random).ok()
}

/// MACs towards the node that owns `backend`'s pod CIDR (native routing).
#[inline(always)]
fn route_to_backend_node(
    ctx: &XdpContext,
    backend: [u8; 4],
    ifindex: u32,
) -> Option<([u8; 12], u32)> {
    let route = ROUTES.get(&Key::new(32, backend)).copied()?;
    if route.mode != ROUTE_MODE_NATIVE {
        return None;
    }
    next_hop(ctx, route.node_addr, ifindex)
}

/// (dst MAC + src MAC, egress ifindex) for `dst`, if the neighbour is known.
#[inline(always)]
fn next_hop(ctx: &XdpContext, dst: [u8; 4], ifindex: u32) -> Option<([u8; 12], u32)> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid argument.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.ifindex = ifindex;
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    // SAFETY: params is valid for the call.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx as *mut _,
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    } as u32;
    if rc != BPF_FIB_LKUP_RET_SUCCESS {
        return None;
    }
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&params.dmac);
    macs[6..].copy_from_slice(&params.smac);
    Some((macs, params.ifindex))
}

#[inline(always)]
fn transmit(frame: &Frame, (macs, egress): ([u8; 12], u32), ingress: u32) -> u32 {
    if frame.store(0, macs).is_none() {
        return XDP_PASS;
    }
    if egress == ingress {
        return XDP_TX;
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(egress, 0) as u32 }
}

/// Write `src` and `dst` (address, port) into the packet, fixing the IPv4
/// and L4 checksums incrementally.
#[inline(always)]
fn rewrite(frame: &Frame, pkt: &L4Packet, src: ([u8; 4], u16), dst: ([u8; 4], u16)) -> Option<()> {
    let ip_csum_off = ETH_HLEN + 10;
    let ip_csum = u16::from_be_bytes(frame.bytes_at::<2>(ip_csum_off)?);
    let ip_csum = adjust(adjust(ip_csum, pkt.src_addr, src.0), pkt.dst_addr, dst.0);
    let l4_csum_off = pkt.l4_csum_off();
    let old_l4 = u16::from_be_bytes(frame.bytes_at::<2>(l4_csum_off)?);
    // A UDP datagram without a checksum stays without one.
    let l4_csum = if pkt.protocol == PROTO_UDP && old_l4 == 0 {
        0
    } else {
        let c = adjust(old_l4, pkt.src_addr, src.0);
        let c = adjust(c, pkt.dst_addr, dst.0);
        let c = adjust(c, pkt.src_port.to_be_bytes(), src.1.to_be_bytes());
        let c = adjust(c, pkt.dst_port.to_be_bytes(), dst.1.to_be_bytes());
        if pkt.protocol == PROTO_UDP && c == 0 {
            0xffff
        } else {
            c
        }
    };
    frame.store(ETH_HLEN + 12, src.0)?;
    frame.store(ETH_HLEN + 16, dst.0)?;
    frame.store(ip_csum_off, ip_csum.to_be_bytes())?;
    frame.store(pkt.l4_off, src.1.to_be_bytes())?;
    frame.store(pkt.l4_off + 2, dst.1.to_be_bytes())?;
    frame.store(l4_csum_off, l4_csum.to_be_bytes())
}
