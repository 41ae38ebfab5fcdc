//! ICMP errors about a packet of a Service flow: destination unreachable
//! (fragmentation needed included), time exceeded, parameter problem. The
//! error quotes the packet as it travelled on the far side of the
//! translation (a backend's address, a source-NAT port), which the sender
//! of that packet does not know: its socket would never hear of the error
//! and path-MTU discovery through a Service would fail. So the quoted
//! packet is translated back to what its sender sent, and the error goes
//! to that sender, as Linux NAT does with errors "related" to a flow.
//!
//! Which way: an error quoting a packet client -> backend travels towards
//! the client (reply direction); one quoting a reply frontend -> client
//! travels towards the backend (original direction). Both are found under
//! the quoted tuple reversed, the key the flow's packets in that direction
//! have. Nothing is accounted to the flow (`conntrack::peek`).
use aya_ebpf::programs::TcContext;
use ferry_common::{
    CT_DIR_ORIGINAL, CT_DIR_REPLY, CtKey, PROTO_TCP, PROTO_UDP, csum::adjust, outcome,
};

use crate::{
    conntrack::{self, NO_ADDR},
    decision::{Decision, Delivery, TcVerdict},
    parse::ETH_HLEN,
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;
/// Keep a CHECKSUM_COMPLETE skb's sum exact across each store, rather than
/// rely on every store being balanced by a checksum field in the same one.
const BPF_F_RECOMPUTE_CSUM: u64 = 1;

/// The hook an error arrived on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A pod's veth: the sender is the pod, and only its own flows count.
    Pod,
    /// The uplink or the VXLAN device: a router on the path may send it.
    Network,
}

/// An address and a port (host order).
type End = ([u8; 4], u16);

/// The error translated and where it goes, or None when the packet is no
/// ICMP error about a live Service flow (it then goes on as any other ICMP
/// packet). A pod's error about a flow it is no end of is dropped.
#[inline(always)]
pub fn translate(ctx: &TcContext, side: Side) -> Option<Decision<TcVerdict>> {
    // `parse` checked the outer header: IPv4, IHL >= 5, the frame holds
    // its total length, not a fragment.
    let mut ip: [u8; 20] = ctx.load(ETH_HLEN).ok()?;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let icmp_off = ETH_HLEN + ihl;
    // The ICMP header and the quoted IPv4 header up to its options.
    let mut head: [u8; 28] = ctx.load(icmp_off).ok()?;
    if !matches!(
        head[0],
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
    ) {
        return None;
    }
    let q_ihl = usize::from(head[8] & 0x0f) * 4;
    let q_protocol = head[8 + 9];
    // Only a first fragment (or a whole datagram) quotes the ports.
    let q_frag_off = u16::from_be_bytes([head[8 + 6], head[8 + 7]]) & 0x1fff;
    if head[8] >> 4 != 4
        || q_ihl < 20
        || q_frag_off != 0
        || (q_protocol != PROTO_TCP && q_protocol != PROTO_UDP)
    {
        return None;
    }
    // RFC 792 asks for 8 bytes of the datagram after its header: the ports,
    // and UDP's checksum. Routers following RFC 1812 quote more, TCP's
    // checksum then among it.
    let quoted = total_len.checked_sub(ihl + 8)?;
    if quoted < q_ihl + 8 {
        return None;
    }
    let l4_off = icmp_off + 8 + q_ihl;
    let mut l4: [u8; 8] = ctx.load(l4_off).ok()?;
    let q_src: End = (
        [head[20], head[21], head[22], head[23]],
        u16::from_be_bytes([l4[0], l4[1]]),
    );
    let q_dst: End = (
        [head[24], head[25], head[26], head[27]],
        u16::from_be_bytes([l4[2], l4[3]]),
    );
    let outer_src = [ip[12], ip[13], ip[14], ip[15]];
    let outer_dst = [ip[16], ip[17], ip[18], ip[19]];
    // An error goes to the sender of the packet it quotes.
    if outer_dst != q_src.0 {
        return None;
    }

    let mut key = CtKey {
        src_addr: q_dst.0,
        dst_addr: q_src.0,
        src_port: q_dst.1,
        dst_port: q_src.1,
        protocol: q_protocol,
        direction: CT_DIR_REPLY,
        pad: [0; 2],
    };
    let (target, reply) = match conntrack::peek(&key) {
        Some(target) => (target, true),
        None => {
            key.direction = CT_DIR_ORIGINAL;
            (conntrack::peek(&key)?, false)
        }
    };
    // The flow's key starts with the quoted packet's destination: that is
    // the backend (reply direction) or the client (original direction).
    // A pod may speak for that end only, and only for itself.
    // (`from_pod` has checked that the outer source is the sending pod's.)
    if side == Side::Pod && outer_src != q_dst.0 {
        return Some(Decision::drop(outcome::DROP_ICMP_ERROR_FOREIGN));
    }
    let peer = (target.peer_addr, target.peer_port);
    let has_peer = target.peer_addr != NO_ADDR;
    let (new_src, new_dst) = if reply {
        // Quoted client (or its NAT address) -> backend, as the backend got
        // it; back to what the client sent: -> frontend, from the client.
        (
            if has_peer { peer } else { q_src },
            (target.addr, target.port),
        )
    } else {
        // Quoted frontend -> client, as the client got the reply; back to
        // what the backend sent: from the backend, -> the client or the
        // flow's source-NAT address.
        (
            (target.addr, target.port),
            if has_peer { peer } else { q_dst },
        )
    };

    // Quoted IPv4 header: addresses and checksum.
    let q_csum = u16::from_be_bytes([head[8 + 10], head[8 + 11]]);
    let new_q_csum = adjust(adjust(q_csum, q_src.0, new_src.0), q_dst.0, new_dst.0);
    // Quoted L4 checksum, if quoted.
    let udp = q_protocol == PROTO_UDP;
    let (l4_csum_off, l4_csum) = if udp {
        (l4_off + 6, Some([l4[6], l4[7]]))
    } else if quoted >= q_ihl + 18 {
        (l4_off + 16, Some(ctx.load::<[u8; 2]>(l4_off + 16).ok()?))
    } else {
        (l4_off + 16, None)
    };
    let new_l4_csum = l4_csum.map(|c| l4_checksum(c, udp, (q_src, q_dst), (new_src, new_dst)));
    // The ICMP checksum covers the quote: every changed word.
    let icmp_csum = u16::from_be_bytes([head[2], head[3]]);
    let mut new_icmp_csum = adjust(icmp_csum, q_src.0, new_src.0);
    new_icmp_csum = adjust(new_icmp_csum, q_dst.0, new_dst.0);
    new_icmp_csum = adjust(
        new_icmp_csum,
        q_csum.to_be_bytes(),
        new_q_csum.to_be_bytes(),
    );
    new_icmp_csum = adjust(
        new_icmp_csum,
        q_src.1.to_be_bytes(),
        new_src.1.to_be_bytes(),
    );
    new_icmp_csum = adjust(
        new_icmp_csum,
        q_dst.1.to_be_bytes(),
        new_dst.1.to_be_bytes(),
    );
    if let (Some(old), Some(new)) = (l4_csum, new_l4_csum) {
        new_icmp_csum = adjust(new_icmp_csum, old, new);
    }

    // Outer header: the error goes to the quoted packet's sender as its
    // sender knows itself; it comes from the frontend (or the client's NAT
    // address) only if the quoted packet's recipient sent it. A router's
    // error keeps the router's address, as with Linux NAT.
    let new_outer_dst = new_src.0;
    let new_outer_src = if outer_src == q_dst.0 {
        new_dst.0
    } else {
        outer_src
    };
    let ip_csum = u16::from_be_bytes([ip[10], ip[11]]);
    let ip_csum = adjust(
        adjust(ip_csum, outer_src, new_outer_src),
        outer_dst,
        new_outer_dst,
    );

    ip[10..12].copy_from_slice(&ip_csum.to_be_bytes());
    ip[12..16].copy_from_slice(&new_outer_src);
    ip[16..20].copy_from_slice(&new_outer_dst);
    head[2..4].copy_from_slice(&new_icmp_csum.to_be_bytes());
    head[8 + 10..8 + 12].copy_from_slice(&new_q_csum.to_be_bytes());
    head[20..24].copy_from_slice(&new_src.0);
    head[24..28].copy_from_slice(&new_dst.0);
    l4[0..2].copy_from_slice(&new_src.1.to_be_bytes());
    l4[2..4].copy_from_slice(&new_dst.1.to_be_bytes());
    let stored = ctx
        .store(ETH_HLEN, &ip, BPF_F_RECOMPUTE_CSUM)
        .and_then(|()| ctx.store(icmp_off, &head, BPF_F_RECOMPUTE_CSUM))
        .and_then(|()| ctx.store(l4_off, &[l4[0], l4[1], l4[2], l4[3]], BPF_F_RECOMPUTE_CSUM))
        .and_then(|()| match new_l4_csum {
            Some(c) => ctx.store(l4_csum_off, &c, BPF_F_RECOMPUTE_CSUM),
            None => Ok(()),
        });
    if stored.is_err() {
        return Some(Decision::drop(outcome::DROP_REWRITE_FAILED));
    }
    // Delivered as the flow's own packets in that direction are: towards
    // the client like a reply (ferry sends what carries a frontend address
    // now), towards the backend like the request.
    let via = if reply || side == Side::Network {
        Delivery::OnwardRewritten
    } else {
        Delivery::Onward
    };
    Some(Decision::deliver(
        outcome::TRANSLATED_ICMP_ERROR,
        new_outer_dst,
        via,
    ))
}

/// The quoted L4 checksum `csum` after the tuple `old` became `new`: the
/// pseudo header's addresses and the ports. A UDP checksum of zero (none)
/// stays zero, a computed zero is written as all ones.
#[inline(always)]
fn l4_checksum(csum: [u8; 2], udp: bool, old: (End, End), new: (End, End)) -> [u8; 2] {
    let c = u16::from_be_bytes(csum);
    if udp && c == 0 {
        return csum;
    }
    let c = adjust(c, old.0.0, new.0.0);
    let c = adjust(c, old.1.0, new.1.0);
    let c = adjust(c, old.0.1.to_be_bytes(), new.0.1.to_be_bytes());
    let c = adjust(c, old.1.1.to_be_bytes(), new.1.1.to_be_bytes());
    if udp && c == 0 {
        [0xff, 0xff]
    } else {
        c.to_be_bytes()
    }
}
