//! ferry's own conntrack: two entries per flow (original and reply
//! direction) in an LRU hash. The state machine is
//! `ferry_common::conntrack`, shared with the host tests.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use ferry_common::{
    CT_DIR_ORIGINAL, CT_DIR_REPLY, CtEntry, CtKey,
    conntrack::{
        FLAG_SOURCE_NAT, advance, initial_state, partner_key, reply_matches, snat_tuple_reusable,
        starts_new_flow, timeout_ns,
    },
    outcome,
};

use crate::{maps::CONNTRACK, parse::L4Packet};

const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;
const NO_ADDR: [u8; 4] = [0; 4];

/// What to write into a packet of a tracked flow.
pub struct NatTarget {
    /// Original direction: the new destination; reply: the new source.
    pub addr: [u8; 4],
    pub port: u16,
    /// Source NAT only (else zero): original direction, the new source;
    /// reply, the new destination.
    pub peer_addr: [u8; 4],
    /// The port paired with `peer_addr`.
    pub peer_port: u16,
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Key of the packet's own direction.
#[inline(always)]
pub fn key_of(pkt: &L4Packet, direction: u8) -> CtKey {
    CtKey {
        src_addr: pkt.src_addr,
        dst_addr: pkt.dst_addr,
        src_port: pkt.src_port,
        dst_port: pkt.dst_port,
        protocol: pkt.protocol,
        direction,
        pad: [0; 2],
    }
}

/// Look up the packet's flow in `direction` and account the packet to it.
/// Returns what to rewrite, or None when there is no live flow (for the
/// original direction: when the packet must start a new one).
#[inline(always)]
pub fn track(pkt: &L4Packet, direction: u8) -> Option<NatTarget> {
    let key = key_of(pkt, direction);
    let entry = CONNTRACK.get_ptr_mut(key)?;
    let now = now_ns();
    // SAFETY: pointer from a successful lookup; concurrent writers on other
    // CPUs can only race on these plain fields, which is harmless here.
    let e = unsafe { &mut *entry };
    if direction == CT_DIR_ORIGINAL
        && starts_new_flow(e.state, e.expires_ns < now, pkt.protocol, pkt.tcp_flags)
    {
        // The new flow may pick another backend; the old reply entry, keyed
        // by the old backend, must not linger and translate its strays.
        let _ = CONNTRACK.remove(partner_key(&key, e));
        return None;
    }
    if direction == CT_DIR_REPLY
        && !reply_matches(e.state, e.expires_ns < now, pkt.protocol, pkt.tcp_flags)
    {
        // The tuple now belongs to another connection: forget the old flow's
        // reply entry, so the rest of the new connection passes too.
        let _ = CONNTRACK.remove(key);
        return None;
    }
    let (state, flags) = advance(e.state, e.flags, direction, pkt.tcp_flags);
    if state != e.state || flags != e.flags {
        let partner = partner_key(&key, e);
        if let Some(p) = CONNTRACK.get_ptr_mut(partner) {
            // SAFETY: as above.
            let p = unsafe { &mut *p };
            p.state = state;
            p.flags = flags;
            p.expires_ns = now + timeout_ns(state, flags);
        }
        e.state = state;
        e.flags = flags;
    }
    e.expires_ns = now + timeout_ns(state, flags);
    Some(NatTarget {
        addr: e.nat_addr,
        port: e.nat_port,
        peer_addr: e.peer_nat_addr,
        peer_port: e.peer_nat_port,
    })
}

/// Record a new flow from `pkt` (original direction) to `backend`, and
/// return what to write into the packet. A pod reaching itself through the
/// Service gets its source rewritten to the hairpin address; `snat` asks
/// for the source to become that address and port (an external client sent
/// to another node). With `snat`, an existing flow already holding that
/// reply tuple is an error (the caller picks another port).
#[inline(always)]
pub fn create(
    pkt: &L4Packet,
    service_id: u32,
    backend_addr: [u8; 4],
    backend_port: u16,
    snat: Option<([u8; 4], u16)>,
) -> Result<NatTarget, i32> {
    let hairpin = backend_addr == pkt.src_addr;
    let (peer_addr, peer_port, reply_flags, flags) = if hairpin {
        (ferry_common::HAIRPIN_SNAT_ADDR, pkt.src_port, BPF_ANY, 0)
    } else if let Some((addr, port)) = snat {
        (addr, port, BPF_NOEXIST, FLAG_SOURCE_NAT)
    } else {
        (NO_ADDR, 0, BPF_ANY, 0)
    };
    let rewrites_source = peer_addr != NO_ADDR;
    let state = initial_state(pkt.protocol, pkt.tcp_flags);
    let expires_ns = now_ns() + timeout_ns(state, flags);
    let original = CtEntry {
        expires_ns,
        nat_addr: backend_addr,
        nat_port: backend_port,
        state,
        flags,
        service_id,
        peer_nat_addr: peer_addr,
        peer_nat_port: peer_port,
        pad: [0; 6],
    };
    let original_key = key_of(pkt, CT_DIR_ORIGINAL);
    let reply_key = partner_key(&original_key, &original);
    let reply = CtEntry {
        nat_addr: pkt.dst_addr,
        nat_port: pkt.dst_port,
        peer_nat_addr: if rewrites_source {
            pkt.src_addr
        } else {
            NO_ADDR
        },
        peer_nat_port: if rewrites_source { pkt.src_port } else { 0 },
        ..original
    };
    // Reply entry first: once the original entry exists, the backend may
    // answer, and its reply must find the way back.
    CONNTRACK.insert(reply_key, reply, reply_flags)?;
    CONNTRACK.insert(original_key, original, BPF_ANY)?;
    Ok(NatTarget {
        addr: backend_addr,
        port: backend_port,
        peer_addr,
        peer_port,
    })
}

/// A packet that is neither for a frontend nor a tracked reply is a direct
/// connection. If a Service flow's reply entry holds its reversed tuple (the
/// client reused a port towards the backend's own address), the direct
/// connection wins: the stale entry would rewrite its replies. Checked on the
/// packets that can open a connection (TCP SYN, any UDP) to keep the cost
/// off established direct traffic.
#[inline(always)]
pub fn clear_clashing_reply(pkt: &L4Packet) {
    let opens = pkt.protocol != ferry_common::PROTO_TCP
        || (pkt.tcp_flags & ferry_common::conntrack::TCP_SYN != 0
            && pkt.tcp_flags & ferry_common::conntrack::TCP_ACK == 0);
    if !opens {
        return;
    }
    let reversed = CtKey {
        src_addr: pkt.dst_addr,
        dst_addr: pkt.src_addr,
        src_port: pkt.dst_port,
        dst_port: pkt.src_port,
        protocol: pkt.protocol,
        direction: CT_DIR_REPLY,
        pad: [0; 2],
    };
    let _ = CONNTRACK.remove(reversed);
}

/// Probes for a free source port per search. A probe hits a taken port
/// with the chance of the range's occupancy p, so a search fails with p^64:
/// under one in a million up to 80% of the range in use (with 16 probes it
/// was one in 800 at 66%).
const SNAT_PORT_PROBES: u32 = 64;

/// A port whose tuple towards the backend is free, or held by a flow that
/// is over for good (`snat_tuple_reusable`; that flow is returned so its
/// entries can go). Random probes, so concurrent flows rarely collide.
#[inline(always)]
fn find_snat_port(
    pkt: &L4Packet,
    node_addr: [u8; 4],
    backend_addr: [u8; 4],
    backend_port: u16,
    (min, span): (u16, u32),
    seed: &mut u32,
    now: u64,
) -> Option<(CtKey, Option<CtEntry>)> {
    for _ in 0..SNAT_PORT_PROBES {
        *seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let reply_key = CtKey {
            src_addr: backend_addr,
            dst_addr: node_addr,
            src_port: backend_port,
            dst_port: min + ((*seed >> 8) % span) as u16,
            protocol: pkt.protocol,
            direction: CT_DIR_REPLY,
            pad: [0; 2],
        };
        // SAFETY: copied out at once.
        match unsafe { CONNTRACK.get(&reply_key) }.copied() {
            None => return Some((reply_key, None)),
            Some(old)
                if snat_tuple_reusable(old.state, old.flags, old.expires_ns, now, pkt.protocol) =>
            {
                return Some((reply_key, Some(old)));
            }
            Some(_) => {}
        }
    }
    None
}

/// A new flow from an external client to a backend on another node, its
/// source rewritten to this node's address and a port from the node's
/// range. Err is the outcome to count: the node's address is unknown, or no
/// port is free for this backend.
#[inline(always)]
pub fn create_snat(
    pkt: &L4Packet,
    service_id: u32,
    backend_addr: [u8; 4],
    backend_port: u16,
    random: u32,
) -> Result<NatTarget, u32> {
    let Some(node) = crate::maps::NODE.get(0).copied() else {
        return Err(outcome::DROP_CONNTRACK_WRITE);
    };
    if node.node_addr == NO_ADDR {
        // Without it the reply would not come back here.
        return Err(outcome::DROP_CONNTRACK_WRITE);
    }
    let (min, max) = if node.snat_port_min == 0 || node.snat_port_min > node.snat_port_max {
        (ferry_common::SNAT_PORT_MIN, ferry_common::SNAT_PORT_MAX)
    } else {
        (node.snat_port_min, node.snat_port_max)
    };
    let range = (min, u32::from(max - min) + 1);
    let now = now_ns();
    let mut seed = random;
    // A second search when another CPU took the port found first.
    for _ in 0..2 {
        let Some((reply_key, old)) = find_snat_port(
            pkt,
            node.node_addr,
            backend_addr,
            backend_port,
            range,
            &mut seed,
            now,
        ) else {
            return Err(outcome::DROP_SNAT_PORTS_EXHAUSTED);
        };
        if let Some(old) = old {
            let _ = CONNTRACK.remove(&partner_key(&reply_key, &old));
            let _ = CONNTRACK.remove(&reply_key);
        }
        // The reply entry is written only if still absent (BPF_NOEXIST).
        if let Ok(target) = create(
            pkt,
            service_id,
            backend_addr,
            backend_port,
            Some((node.node_addr, reply_key.dst_port)),
        ) {
            return Ok(target);
        }
    }
    Err(outcome::DROP_CONNTRACK_WRITE)
}
