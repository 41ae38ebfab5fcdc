//! Answer a packet for a Service frontend without endpoints (or for a
//! ClusterIP's unserved port) with ICMP
//! destination unreachable / port unreachable, from the frontend address, as
//! kube-proxy's REJECT rule does. TCP clients see ECONNREFUSED and UDP
//! clients an error on their socket at once, instead of waiting for a
//! timeout.
use aya_ebpf::{bindings::TC_ACT_REDIRECT, helpers::generated::bpf_redirect, programs::TcContext};
use ferry_common::{PROTO_ICMP, csum::internet_checksum, outcome};

use crate::{
    decision::{Decision, TcVerdict},
    parse::{ETH_HLEN, L4Packet},
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
/// Quoted: the whole offending IPv4 header (up to 60 bytes) + 8 bytes of L4.
const MAX_QUOTE: usize = 68;
/// New IPv4 header (20) + ICMP header (8) + quote.
const MAX_REPLY_L3: usize = 28 + MAX_QUOTE;

/// Rewrite the packet in place into the ICMP error and send it back out of
/// the interface it came in on (`bpf_redirect`).
#[inline(always)]
fn port_unreachable(ctx: &TcContext, pkt: &L4Packet) -> Result<(), i64> {
    // Read through a volatile so LLVM cannot drop the bounds check below as
    // redundant: the verifier needs to see it to accept the variable length.
    // SAFETY: reading a local.
    let quote_len = unsafe { core::ptr::read_volatile(&pkt.ihl_bytes) } + 8;
    if !(28..=MAX_QUOTE).contains(&quote_len) {
        return Err(-1);
    }
    let mut buf = [0u8; MAX_REPLY_L3];
    // SAFETY: helper writes at most `quote_len` (<= MAX_QUOTE) bytes into
    // buf[28..], which has room for MAX_QUOTE.
    let ret = unsafe {
        aya_ebpf::helpers::generated::bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            ETH_HLEN as u32,
            buf.as_mut_ptr().add(28).cast(),
            quote_len as u32,
        )
    };
    if ret != 0 {
        return Err(ret);
    }
    let l3_len = 28 + quote_len;

    // ICMP header, checksum over header + quote.
    let mut icmp = [0u8; 8 + MAX_QUOTE];
    icmp[0] = ICMP_DEST_UNREACH;
    icmp[1] = ICMP_PORT_UNREACH;
    let mut i = 0;
    while i < MAX_QUOTE {
        icmp[8 + i] = buf[28 + i];
        i += 1;
    }
    let icmp_csum = internet_checksum(&icmp, 8 + quote_len).to_be_bytes();
    buf[20] = ICMP_DEST_UNREACH;
    buf[21] = ICMP_PORT_UNREACH;
    buf[22] = icmp_csum[0];
    buf[23] = icmp_csum[1];

    // IPv4 header: frontend -> client.
    let total = (l3_len as u16).to_be_bytes();
    let mut ip = [
        0x45,
        0,
        total[0],
        total[1],
        0,
        0,
        0,
        0,
        64,
        PROTO_ICMP,
        0,
        0,
        pkt.dst_addr[0],
        pkt.dst_addr[1],
        pkt.dst_addr[2],
        pkt.dst_addr[3],
        pkt.src_addr[0],
        pkt.src_addr[1],
        pkt.src_addr[2],
        pkt.src_addr[3],
    ];
    let ip_csum = internet_checksum(&ip, 20).to_be_bytes();
    ip[10] = ip_csum[0];
    ip[11] = ip_csum[1];
    buf[..20].copy_from_slice(&ip);

    // Swap the MAC addresses: the reply goes back where the packet came from.
    let macs: [u8; 12] = ctx.load(0)?;
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);

    // SAFETY: plain helper call on our own skb.
    let ret = unsafe {
        aya_ebpf::helpers::generated::bpf_skb_change_tail(
            ctx.skb.skb.cast(),
            (ETH_HLEN + l3_len) as u32,
            0,
        )
    };
    if ret != 0 {
        return Err(ret);
    }
    ctx.store(0, &swapped, 0)?;
    // SAFETY: writes `l3_len` (<= MAX_REPLY_L3) bytes from buf.
    let ret = unsafe {
        aya_ebpf::helpers::generated::bpf_skb_store_bytes(
            ctx.skb.skb.cast(),
            ETH_HLEN as u32,
            buf.as_ptr().cast(),
            l3_len as u32,
            0,
        )
    };
    if ret != 0 {
        return Err(ret);
    }
    // SAFETY: reading the context field of our own skb.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain helper call.
    let verdict = unsafe { bpf_redirect(ifindex, 0) };
    if verdict != i64::from(TC_ACT_REDIRECT) {
        return Err(verdict);
    }
    Ok(())
}

/// The answer to a new connection for a frontend without endpoints.
#[inline(always)]
pub fn no_endpoints(ctx: &TcContext, pkt: &L4Packet) -> Decision<TcVerdict> {
    answer(ctx, pkt, outcome::REJECTED_NO_ENDPOINTS)
}

/// The answer to a packet for a ClusterIP on a port or protocol its Service
/// does not serve.
#[inline(always)]
pub fn unserved_port(ctx: &TcContext, pkt: &L4Packet) -> Decision<TcVerdict> {
    answer(ctx, pkt, outcome::REJECTED_UNSERVED_PORT)
}

/// Port unreachable, counted under `rejected`.
#[inline(always)]
fn answer(ctx: &TcContext, pkt: &L4Packet, rejected: u32) -> Decision<TcVerdict> {
    match port_unreachable(ctx, pkt) {
        Ok(()) => Decision::new(rejected, TcVerdict::Redirected),
        Err(_) => Decision::drop(outcome::DROP_REJECT_FAILED),
    }
}
