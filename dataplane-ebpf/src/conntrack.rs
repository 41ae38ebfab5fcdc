//! ferry's own conntrack: two entries per flow (original and reply
//! direction) in an LRU hash. The state machine is
//! `ferry_common::conntrack`, shared with the host tests.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use ferry_common::{
    CT_DIR_CLAIM, CT_DIR_ORIGINAL, CT_DIR_REPLY, CtEntry, CtKey,
    conntrack::{
        FLAG_SOURCE_NAT, SNAT_PORT_REST_MIN_NS, SNAT_PORT_REST_NS, advance, initial_state,
        partner_key, reply_matches, snat_tuple_reusable, snat_tuple_reusable_after,
        starts_new_flow, timeout_ns,
    },
    outcome,
};

use crate::{maps::CONNTRACK, parse::L4Packet};

const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;
/// "No address": a flow without source NAT, a node address not known yet.
pub const NO_ADDR: [u8; 4] = [0; 4];

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
    /// The frontend the flow belongs to (`ferry_svc_stats`).
    pub service_id: u32,
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
        // Except when it holds a source-NAT port the backend may still know
        // (the client reused its own port while the backend sits in
        // TIME_WAIT): it keeps holding that port until it is reusable, and
        // the new flow gets another one.
        let holds_port = e.flags & FLAG_SOURCE_NAT != 0
            && !snat_tuple_reusable(e.state, e.flags, e.expires_ns, now, pkt.protocol);
        // A trace run (`dry_run`) decides the same and writes nothing.
        if !holds_port && !pkt.dry_run {
            if let Some((partner, _)) = partner_naming_back(&key, e) {
                let _ = CONNTRACK.remove(&partner);
            }
        }
        return None;
    }
    if direction == CT_DIR_REPLY
        && !reply_matches(e.state, e.expires_ns < now, pkt.protocol, pkt.tcp_flags)
    {
        // The tuple now belongs to another connection: forget the old flow's
        // reply entry, so the rest of the new connection passes too.
        if !pkt.dry_run {
            let _ = CONNTRACK.remove(key);
        }
        return None;
    }
    if !pkt.dry_run {
        let (state, flags) = advance(e.state, e.flags, direction, pkt.tcp_flags);
        if state != e.state || flags != e.flags {
            if let Some((_, p)) = partner_naming_back(&key, e) {
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
    }
    Some(NatTarget {
        addr: e.nat_addr,
        port: e.nat_port,
        peer_addr: e.peer_nat_addr,
        peer_port: e.peer_nat_port,
        service_id: e.service_id,
    })
}

/// What the live entry under `key` would write, read only: nothing is
/// accounted to the flow, so an ICMP error about one of its packets (which
/// anyone on the path can forge) neither keeps it alive nor ends it.
#[inline(always)]
pub fn peek(key: &CtKey) -> Option<NatTarget> {
    let entry = CONNTRACK.get_ptr(key)?;
    // SAFETY: pointer from a successful lookup, fields read at once.
    let e = unsafe { &*entry };
    if e.expires_ns < now_ns() {
        return None;
    }
    Some(NatTarget {
        addr: e.nat_addr,
        port: e.nat_port,
        peer_addr: e.peer_nat_addr,
        peer_port: e.peer_nat_port,
        service_id: e.service_id,
    })
}

/// The other direction's entry of the flow `(key, entry)` belongs to, if it
/// still belongs to that flow: after a client reused its port, the new
/// flow's original entry no longer names an old reply entry back.
#[inline(always)]
fn partner_naming_back(key: &CtKey, entry: &CtEntry) -> Option<(CtKey, *mut CtEntry)> {
    let partner = partner_key(key, entry);
    let p = CONNTRACK.get_ptr_mut(partner)?;
    // SAFETY: pointer from a successful lookup, read at once.
    if partner_key(&partner, unsafe { &*p }) == *key {
        Some((partner, p))
    } else {
        None
    }
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
    // answer, and its reply must find the way back. A trace run writes
    // neither.
    if !pkt.dry_run {
        CONNTRACK.insert(reply_key, reply, reply_flags)?;
        CONNTRACK.insert(original_key, original, BPF_ANY)?;
        if pkt.reports_flows {
            crate::monitor::new_flow(
                pkt,
                service_id,
                crate::monitor::pack(backend_addr, backend_port),
                if rewrites_source {
                    crate::monitor::pack(peer_addr, peer_port)
                } else {
                    0
                },
            );
        }
    }
    Ok(NatTarget {
        addr: backend_addr,
        port: backend_port,
        peer_addr,
        peer_port,
        service_id,
    })
}

/// A packet that is neither for a frontend nor a tracked reply is a direct
/// connection. If a Service flow's reply entry holds its reversed tuple (the
/// client reused a port towards the backend's own address), the direct
/// connection wins: the stale entry would rewrite its replies. Checked on the
/// packets that can open a connection (TCP SYN, any UDP) to keep the cost
/// off established direct traffic, and looked up before it is deleted: such
/// an entry is rare, and a lookup takes no lock where a delete takes the
/// bucket's (measured by the bench's program-cost scenario).
#[inline(always)]
pub fn clear_clashing_reply(pkt: &L4Packet) {
    let opens = pkt.protocol != ferry_common::PROTO_TCP
        || (pkt.tcp_flags & ferry_common::conntrack::TCP_SYN != 0
            && pkt.tcp_flags & ferry_common::conntrack::TCP_ACK == 0);
    if !opens || pkt.dry_run {
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
    if CONNTRACK.get_ptr(&reversed).is_some() {
        let _ = CONNTRACK.remove(&reversed);
    }
}

/// Probes for a free source port per search (a flow makes up to three: for
/// a fully rested port, then for a briefly rested one, again if another CPU
/// took the port found). A probe hits a
/// taken port with the chance of the range's occupancy p, so a search fails
/// with p^64: under one in a million up to 80% of the range in use (with 16
/// probes it was one in 800 at 66%).
const SNAT_PORT_PROBES: u32 = 64;

/// Set `reply_key`'s port to one whose tuple towards the backend is free
/// (Some(None)), or held by a flow that is over and has rested `rest_ns`
/// (`snat_tuple_reusable_after`; Some(that flow's expiry), to recognise it
/// when taking it over). Random probes, so concurrent flows rarely collide.
/// Nothing is copied out of the map and the key is written in place: the
/// stack is tight.
#[inline(always)]
fn find_snat_port(
    pkt: &L4Packet,
    reply_key: &mut CtKey,
    (min, span): (u16, u32),
    seed: &mut u32,
    now: u64,
    rest_ns: u64,
) -> Option<Option<u64>> {
    for _ in 0..SNAT_PORT_PROBES {
        *seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        reply_key.dst_port = min + ((*seed >> 8) % span) as u16;
        let Some(old) = CONNTRACK.get_ptr(&*reply_key) else {
            return Some(None);
        };
        // SAFETY: pointer from a successful lookup; fields read at once.
        let (state, flags, expires_ns) = unsafe { ((*old).state, (*old).flags, (*old).expires_ns) };
        if snat_tuple_reusable_after(state, flags, expires_ns, now, pkt.protocol, rest_ns) {
            return Some(Some(expires_ns));
        }
    }
    None
}

/// Take the source-NAT tuple `key` (a reply key) over from the finished
/// flow found holding it (recognised by its expiry): claim it (one CPU
/// only: the same key with direction `CT_DIR_CLAIM`), check that the same
/// flow still holds it, and remove that flow's entries. Ok(true): claimed,
/// to release once the new flow's entries are written; Ok(false): the flow
/// was gone already; Err: another CPU got there first.
#[inline(always)]
fn take_over(key: &mut CtKey, old_expires_ns: u64) -> Result<bool, ()> {
    let Some(held) = CONNTRACK.get_ptr(&*key) else {
        // Already gone: the new flow's NOEXIST write settles any race.
        return Ok(false);
    };
    // SAFETY: pointer from a successful lookup, valid for this program run.
    let held = unsafe { &*held };
    // The claim's value is the old entry itself (a map value, not a stack
    // copy); its expiry lets garbage collection clear a claim left behind.
    key.direction = CT_DIR_CLAIM;
    let claimed = CONNTRACK.insert(&*key, held, BPF_NOEXIST).is_ok();
    if claimed && held.expires_ns != old_expires_ns {
        // Replaced (or refreshed) between the search and the claim.
        let _ = CONNTRACK.remove(&*key);
    }
    key.direction = CT_DIR_REPLY;
    if !claimed || held.expires_ns != old_expires_ns {
        return Err(());
    }
    if let Some((partner, _)) = partner_naming_back(key, held) {
        let _ = CONNTRACK.remove(&partner);
    }
    let _ = CONNTRACK.remove(&*key);
    Ok(true)
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
    let mut failure = outcome::DROP_SNAT_PORTS_EXHAUSTED;
    let mut key = CtKey {
        src_addr: backend_addr,
        dst_addr: node.node_addr,
        src_port: backend_port,
        dst_port: 0,
        protocol: pkt.protocol,
        direction: CT_DIR_REPLY,
        pad: [0; 2],
    };
    // Another search when the first found nothing (then content with a
    // shorter rest: a slightly earlier reuse beats refusing the connection),
    // or when another CPU took the port a search found. Under pressure
    // most flows need the second search, so a lost race there gets a third.
    for search in 0..3 {
        let rest_ns = if search == 0 {
            SNAT_PORT_REST_NS
        } else {
            SNAT_PORT_REST_MIN_NS
        };
        let Some(old) = find_snat_port(pkt, &mut key, range, &mut seed, now, rest_ns) else {
            failure = outcome::DROP_SNAT_PORTS_EXHAUSTED;
            continue;
        };
        failure = outcome::DROP_CONNTRACK_WRITE;
        let claimed = match old {
            // A trace run takes nothing over: the port it found is the
            // one the flow would get.
            Some(_) if pkt.dry_run => false,
            Some(old_expires_ns) => match take_over(&mut key, old_expires_ns) {
                Ok(claimed) => claimed,
                Err(()) => continue,
            },
            None => false,
        };
        // The reply entry is written only if still absent (BPF_NOEXIST).
        let created = create(
            pkt,
            service_id,
            backend_addr,
            backend_port,
            Some((node.node_addr, key.dst_port)),
        );
        if claimed {
            key.direction = CT_DIR_CLAIM;
            let _ = CONNTRACK.remove(&key);
            key.direction = CT_DIR_REPLY;
        }
        if let Ok(target) = created {
            return Ok(target);
        }
    }
    Err(failure)
}
