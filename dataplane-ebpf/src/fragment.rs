//! IPv4 fragments of Service flows. Only a datagram's first fragment
//! carries the TCP/UDP ports, so it is translated like a whole packet (its
//! L4 checksum covers the whole datagram, but an incremental update of it
//! stays right) and its ports are recorded in `ferry_frags` under the
//! datagram's identity as it arrived (source, destination, protocol, IP ID,
//! as Cilium does; plus the ingress interface). The later fragments find
//! the ports there, hence the flow's conntrack entry, and get the same
//! addresses written: the same backend, the same way back. A later
//! fragment that comes before its first fragment finds nothing: it is
//! dropped when it is for the service range (its backend cannot be known),
//! else passed as any untranslated packet.
//!
//! Both are inlined into the hooks: their locals then share stack slots
//! with the hooks' disjoint paths (a later fragment never reaches the
//! new-flow path; recording follows it), where a BPF-to-BPF call's frame
//! would be added to the deepest chain's, and `ferry_from_network` is at 496
//! of the verifier's 512 bytes. (A non-inlined function returning an
//! `Option<Decision>` also emits BTF the kernel refuses: a union member at
//! a non-zero offset, the niche-packed discriminant.)
use aya_ebpf::programs::TcContext;
use ferry_common::{CT_DIR_ORIGINAL, CtKey, FRAGMENT_TIMEOUT_NS, FragKey, FragPorts, outcome};

use crate::{
    conntrack::{NO_ADDR, now_ns},
    decision::{Decision, Delivery, TcVerdict},
    maps::{CONNTRACK, FRAGMENTS},
    nat,
    parse::{L4Packet, LaterFragment},
};

const BPF_ANY: u64 = 0;

/// The interface the packet arrived on.
#[inline(always)]
fn ingress_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: reading a field of the program's own skb.
    unsafe { (*ctx.skb.skb).ingress_ifindex }
}

/// After `pkt` was translated travelling `direction`: if it is a first
/// fragment, record its ports for the rest of its datagram. A full map
/// evicts the oldest record (LRU); a failed write leaves the later
/// fragments untracked, which is all that can be done.
#[inline(always)]
pub fn record(ctx: &TcContext, pkt: &L4Packet, direction: u8) {
    if !pkt.first_fragment || pkt.dry_run {
        return;
    }
    let key = FragKey {
        src_addr: pkt.src_addr,
        dst_addr: pkt.dst_addr,
        ifindex: ingress_ifindex(ctx),
        ip_id: pkt.ip_id,
        protocol: pkt.protocol,
        pad: 0,
    };
    let ports = FragPorts {
        expires_ns: now_ns() + FRAGMENT_TIMEOUT_NS,
        src_port: pkt.src_port,
        dst_port: pkt.dst_port,
        direction,
        pad: [0; 3],
    };
    let _ = FRAGMENTS.insert(&key, &ports, BPF_ANY);
}

/// A later fragment of a datagram whose first fragment was translated:
/// the same addresses written, on to the same next hop. `via` is how the
/// hook sends its Service requests (the original direction); replies go
/// as translated replies do. None when its datagram is not recorded (or
/// its flow is gone): the caller decides.
#[inline(always)]
pub fn follow(ctx: &TcContext, frag: &LaterFragment, via: Delivery) -> Option<Decision<TcVerdict>> {
    let key = FragKey {
        src_addr: frag.src_addr,
        dst_addr: frag.dst_addr,
        ifindex: ingress_ifindex(ctx),
        ip_id: frag.ip_id,
        protocol: frag.protocol,
        pad: 0,
    };
    // SAFETY: copied out at once.
    let ports = unsafe { FRAGMENTS.get(&key) }.copied()?;
    let now = now_ns();
    if ports.expires_ns < now {
        return None;
    }
    let flow = CtKey {
        src_addr: frag.src_addr,
        dst_addr: frag.dst_addr,
        src_port: ports.src_port,
        dst_port: ports.dst_port,
        protocol: frag.protocol,
        direction: ports.direction,
        pad: [0; 2],
    };
    // Read only: the first fragment accounted the datagram to the flow
    // (TCP state, expiry); a later fragment carries no TCP flags to
    // advance it with.
    // SAFETY: copied out at once.
    let entry = unsafe { CONNTRACK.get(&flow) }.copied()?;
    if entry.expires_ns < now {
        return None;
    }
    let original = ports.direction == CT_DIR_ORIGINAL;
    // Original: the target is the destination, the peer the source;
    // reply: the other way round (as `nat::Way`).
    let (new_src, new_dst) = if original {
        (entry.peer_nat_addr, entry.nat_addr)
    } else {
        (entry.nat_addr, entry.peer_nat_addr)
    };
    let new_src = if new_src == NO_ADDR {
        frag.src_addr
    } else {
        new_src
    };
    let new_dst = if new_dst == NO_ADDR {
        frag.dst_addr
    } else {
        new_dst
    };
    if nat::rewrite_addresses(ctx, frag, new_src, new_dst).is_err() {
        return Some(Decision::drop(outcome::DROP_REWRITE_FAILED));
    }
    Some(if original {
        Decision::deliver(outcome::TRANSLATED, new_dst, via)
    } else {
        Decision::deliver(
            outcome::REVERSE_TRANSLATED,
            new_dst,
            Delivery::OnwardRewritten,
        )
    })
}
