//! Address and port rewriting with incremental checksum updates through the
//! kernel helpers, which also keep CHECKSUM_PARTIAL / CHECKSUM_COMPLETE skbs
//! consistent (a hand-rolled fix-up would not).
use aya_ebpf::{bindings::BPF_F_PSEUDO_HDR, programs::TcContext};
use ferry_common::PROTO_UDP;

use crate::{
    conntrack::NatTarget,
    parse::{ETH_HLEN, L4Packet},
};

/// BPF_F_MARK_MANGLED_0: a zero UDP checksum means "none" and stays zero; a
/// computed zero is written as 0xffff.
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;
const IP_CSUM_OFF: usize = ETH_HLEN + 10;
const IP_SRC_OFF: usize = ETH_HLEN + 12;
const IP_DST_OFF: usize = ETH_HLEN + 16;

#[inline(always)]
fn l4_flags(pkt: &L4Packet) -> u64 {
    if pkt.protocol == PROTO_UDP {
        BPF_F_MARK_MANGLED_0
    } else {
        0
    }
}

/// Rewrite the address at `addr_off` (source or destination) and the port at
/// `port_off`, fixing the IPv4 and L4 checksums.
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    pkt: &L4Packet,
    addr_off: usize,
    old_addr: [u8; 4],
    new_addr: [u8; 4],
    port_off: usize,
    old_port: u16,
    new_port: u16,
) -> Result<(), i64> {
    let csum_off = pkt.l4_csum_off();
    let flags = l4_flags(pkt);
    let old_a = u32::from_ne_bytes(old_addr) as u64;
    let new_a = u32::from_ne_bytes(new_addr) as u64;
    if old_a != new_a {
        ctx.l4_csum_replace(csum_off, old_a, new_a, flags | BPF_F_PSEUDO_HDR as u64 | 4)?;
        ctx.l3_csum_replace(IP_CSUM_OFF, old_a, new_a, 4)?;
        ctx.store(addr_off, &new_addr, 0)?;
    }
    if old_port != new_port {
        let old_p = u16::from_ne_bytes(old_port.to_be_bytes()) as u64;
        let new_p = u16::from_ne_bytes(new_port.to_be_bytes()) as u64;
        ctx.l4_csum_replace(csum_off, old_p, new_p, flags | 2)?;
        ctx.store(port_off, &new_port.to_be_bytes(), 0)?;
    }
    Ok(())
}

/// Original direction: destination frontend -> backend (and, for a
/// source-NATed flow, source client -> the NAT address and port).
#[inline(always)]
pub fn dnat(ctx: &TcContext, pkt: &L4Packet, target: &NatTarget) -> Result<(), i64> {
    rewrite(
        ctx,
        pkt,
        IP_DST_OFF,
        pkt.dst_addr,
        target.addr,
        pkt.l4_off + 2,
        pkt.dst_port,
        target.port,
    )?;
    if target.peer_addr != [0; 4] {
        rewrite(
            ctx,
            pkt,
            IP_SRC_OFF,
            pkt.src_addr,
            target.peer_addr,
            pkt.l4_off,
            pkt.src_port,
            target.peer_port,
        )?;
    }
    Ok(())
}

/// Reply direction: source backend -> frontend (and, for a source-NATed
/// flow, destination NAT address and port -> client).
#[inline(always)]
pub fn reverse_nat(ctx: &TcContext, pkt: &L4Packet, target: &NatTarget) -> Result<(), i64> {
    rewrite(
        ctx,
        pkt,
        IP_SRC_OFF,
        pkt.src_addr,
        target.addr,
        pkt.l4_off,
        pkt.src_port,
        target.port,
    )?;
    if target.peer_addr != [0; 4] {
        rewrite(
            ctx,
            pkt,
            IP_DST_OFF,
            pkt.dst_addr,
            target.peer_addr,
            pkt.l4_off + 2,
            pkt.dst_port,
            target.peer_port,
        )?;
    }
    Ok(())
}
