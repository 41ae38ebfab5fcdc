//! Address and port rewriting of a tracked flow's packets. tc goes through
//! the kernel helpers, which also keep CHECKSUM_PARTIAL / CHECKSUM_COMPLETE
//! skbs consistent (a hand-rolled fix-up would not); XDP has no skb and
//! fixes the checksums by hand.
use aya_ebpf::{bindings::BPF_F_PSEUDO_HDR, programs::TcContext};
use ferry_common::{PROTO_UDP, csum::adjust};

use crate::{
    conntrack::{NO_ADDR, NatTarget},
    parse::{ETH_HLEN, Frame, L4Packet, LaterFragment, MAX_PARSED_HEADERS},
};

/// BPF_F_MARK_MANGLED_0: a zero UDP checksum means "none" and stays zero; a
/// computed zero is written as 0xffff.
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;
const IP_CSUM_OFF: usize = ETH_HLEN + 10;
const IP_SRC_OFF: usize = ETH_HLEN + 12;
const IP_DST_OFF: usize = ETH_HLEN + 16;

/// Which way a packet of a tracked flow travels. Original (client ->
/// frontend): the target replaces the destination (frontend -> backend),
/// the peer the source (client -> NAT address). Reply (backend -> client):
/// the target replaces the source (backend -> frontend), the peer the
/// destination (NAT address -> client).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Way {
    Original,
    Reply,
}

/// One end of the packet's IPv4/L4 tuple.
#[derive(Clone, Copy)]
enum End {
    Source,
    Destination,
}

impl Way {
    /// (the end the target replaces, the end the peer replaces)
    #[inline(always)]
    fn ends(self) -> (End, End) {
        match self {
            Way::Original => (End::Destination, End::Source),
            Way::Reply => (End::Source, End::Destination),
        }
    }
}

impl End {
    /// (address offset, address now, port offset, port now)
    #[inline(always)]
    fn of(self, pkt: &L4Packet) -> (usize, [u8; 4], usize, u16) {
        match self {
            End::Source => (IP_SRC_OFF, pkt.src_addr, pkt.l4_off, pkt.src_port),
            End::Destination => (IP_DST_OFF, pkt.dst_addr, pkt.l4_off + 2, pkt.dst_port),
        }
    }
}

/// Rewrite the packet of a tracked flow travelling `way` (tc).
#[inline(always)]
pub fn translate(ctx: &TcContext, pkt: &L4Packet, target: &NatTarget, way: Way) -> Result<(), i64> {
    let (target_end, peer_end) = way.ends();
    rewrite(ctx, pkt, target_end, target.addr, target.port)?;
    if target.peer_addr != NO_ADDR {
        rewrite(ctx, pkt, peer_end, target.peer_addr, target.peer_port)?;
    }
    Ok(())
}

/// Rewrite one end's address and port, fixing the IPv4 and L4 checksums.
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    pkt: &L4Packet,
    end: End,
    new_addr: [u8; 4],
    new_port: u16,
) -> Result<(), i64> {
    let (addr_off, old_addr, port_off, old_port) = end.of(pkt);
    let csum_off = pkt.l4_csum_off();
    let flags = if pkt.protocol == PROTO_UDP {
        BPF_F_MARK_MANGLED_0
    } else {
        0
    };
    let old_a = u32::from_ne_bytes(old_addr) as u64;
    let new_a = u32::from_ne_bytes(new_addr) as u64;
    if old_a != new_a {
        ctx.l4_csum_replace(csum_off, old_a, new_a, flags | BPF_F_PSEUDO_HDR as u64 | 4)?;
        ctx.l3_csum_replace(IP_CSUM_OFF, old_a, new_a, 4)?;
        store(ctx, addr_off, new_addr)?;
    }
    if old_port != new_port {
        let old_p = u16::from_ne_bytes(old_port.to_be_bytes()) as u64;
        let new_p = u16::from_ne_bytes(new_port.to_be_bytes()) as u64;
        ctx.l4_csum_replace(csum_off, old_p, new_p, flags | 2)?;
        store(ctx, port_off, new_port.to_be_bytes())?;
    }
    Ok(())
}

/// Write `bytes` at `off` in place (direct packet access), after the
/// checksum helpers have accounted for them. `parse` read these bytes
/// through direct access, so they are in the linear area, which the
/// kernel makes writable before a program with direct writes runs (the
/// verifier's prologue): bpf_skb_store_bytes would only repeat that check
/// and copy, at the cost of a helper call per field (as `deliver` writes
/// the MACs).
#[inline(always)]
fn store<const N: usize>(ctx: &TcContext, off: usize, bytes: [u8; N]) -> Result<(), i64> {
    // Parsed headers end within MAX_PARSED_HEADERS; the bound also tells
    // the verifier how far `off` reaches.
    if off > MAX_PARSED_HEADERS as usize {
        return Err(-1);
    }
    Frame::of_tc(ctx).store(off, bytes).ok_or(-1)
}

/// Write a later fragment's new addresses (tc). It has no L4 header: only
/// the IPv4 checksum covers them here (the first fragment carried the L4
/// checksum's update for the whole datagram).
#[inline(always)]
pub fn rewrite_addresses(
    ctx: &TcContext,
    frag: &LaterFragment,
    new_src: [u8; 4],
    new_dst: [u8; 4],
) -> Result<(), i64> {
    for (off, old, new) in [
        (IP_SRC_OFF, frag.src_addr, new_src),
        (IP_DST_OFF, frag.dst_addr, new_dst),
    ] {
        if old != new {
            let old_a = u32::from_ne_bytes(old) as u64;
            let new_a = u32::from_ne_bytes(new) as u64;
            ctx.l3_csum_replace(IP_CSUM_OFF, old_a, new_a, 4)?;
            ctx.store(off, &new, 0)?;
        }
    }
    Ok(())
}

/// Rewrite the packet of a source-NATed flow travelling `way` in place
/// (XDP): both ends, the IPv4 and L4 checksums adjusted incrementally.
#[inline(always)]
pub fn translate_frame(frame: &Frame, pkt: &L4Packet, target: &NatTarget, way: Way) -> Option<()> {
    let to_target = (target.addr, target.port);
    let to_peer = (target.peer_addr, target.peer_port);
    let (src, dst) = match way {
        Way::Original => (to_peer, to_target),
        Way::Reply => (to_target, to_peer),
    };
    let ip_csum = u16::from_be_bytes(frame.bytes_at::<2>(IP_CSUM_OFF)?);
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
    frame.store(IP_SRC_OFF, src.0)?;
    frame.store(IP_DST_OFF, dst.0)?;
    frame.store(IP_CSUM_OFF, ip_csum.to_be_bytes())?;
    frame.store(pkt.l4_off, src.1.to_be_bytes())?;
    frame.store(pkt.l4_off + 2, dst.1.to_be_bytes())?;
    frame.store(l4_csum_off, l4_csum.to_be_bytes())
}
