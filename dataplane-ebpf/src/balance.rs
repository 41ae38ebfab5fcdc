//! Service frontends and load balancing: the frontend a packet is
//! addressed to, whether a new flow's client may reach it
//! (loadBalancerSourceRanges), and its backend: the client's affine backend
//! (sessionAffinity ClientIP), else one drawn uniformly from the active set
//! of its frontend.
use aya_ebpf::{btf_maps::lpm_trie::Key, helpers::generated::bpf_get_prandom_u32};
use ferry_common::{
    AffinityEntry, AffinityKey, Backend, SERVICE_FLAG_AFFINITY, ServiceKey,
    ServiceValue, SourceRangeKey, affinity, frontend_filter_slot,
};

use crate::{
    conntrack::now_ns,
    maps::{AFFINITY, BACKENDS, FRONTEND_FILTER, SERVICE_OPTIONS, SERVICES, SOURCE_RANGES},
    parse::L4Packet,
};

const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;

/// The frontend of `scope` (`SCOPE_*`) the packet is addressed to. An
/// address the frontend filter has no bit for holds no frontend of the
/// scope, and the services map is not probed.
#[inline(always)]
pub fn frontend(pkt: &L4Packet, scope: u8) -> Option<ServiceValue> {
    if let Some((word, bit)) = frontend_filter_slot(pkt.dst_addr, scope) {
        // A word the array does not have cannot be: probe to be safe.
        if FRONTEND_FILTER.get(word).is_some_and(|w| w & bit == 0) {
            return None;
        }
    }
    let key = ServiceKey {
        addr: pkt.dst_addr,
        port: pkt.dst_port,
        protocol: pkt.protocol,
        scope,
    };
    // SAFETY: copied out at once.
    (unsafe { SERVICES.get(key) }).copied()
}

/// Is `client` inside one of `service`'s loadBalancerSourceRanges?
#[inline(always)]
pub fn in_source_ranges(service: &ServiceValue, client: [u8; 4]) -> bool {
    let key = SourceRangeKey {
        service_id: service.service_id.to_be_bytes(),
        addr: client,
    };
    SOURCE_RANGES.get(&Key::new(64, key)).is_some()
}

/// The backend in `slot` of `service`'s active set, if the slot is in the
/// set and inside the array.
#[inline(always)]
fn at_slot(service: &ServiceValue, slot: u16) -> Option<Backend> {
    BACKENDS.get(service.slot_index(slot)?).copied()
}

/// A backend of `service` for a new flow from `client`, and a random number
/// (a seed for later choices of the same flow). None when the slot is
/// missing (an update raced the packet) or the service has no backends.
#[inline(always)]
pub fn pick_backend(
    service: &ServiceValue,
    client: [u8; 4],
    dry_run: bool,
) -> Option<(Backend, u32)> {
    if service.backend_count == 0 {
        return None;
    }
    // SAFETY: helper without arguments.
    let random = unsafe { bpf_get_prandom_u32() };
    if service.flags & SERVICE_FLAG_AFFINITY != 0 {
        return affine_backend(service, client, random, dry_run).map(|b| (b, random));
    }
    let slot = (random % u32::from(service.backend_count)) as u16;
    at_slot(service, slot).map(|b| (b, random))
}

/// sessionAffinity ClientIP: the client's recorded backend while it holds
/// (`ferry_common::affinity::holds`), refreshed; else a fresh draw,
/// recorded. A trace run (`dry_run`) reads the record and writes nothing.
#[inline(always)]
fn affine_backend(
    service: &ServiceValue,
    client: [u8; 4],
    random: u32,
    dry_run: bool,
) -> Option<Backend> {
    let key = AffinityKey {
        service_id: service.service_id,
        client_addr: client,
    };
    // SAFETY: read at once.
    let timeout_s = match unsafe { SERVICE_OPTIONS.get(service.service_id) } {
        Some(options) => options.affinity_timeout_s,
        None => affinity::DEFAULT_TIMEOUT_S,
    };
    let now = now_ns();
    let recorded = AFFINITY.get_ptr_mut(key);
    if let Some(entry) = recorded {
        // SAFETY: pointer from a successful lookup; a concurrent writer on
        // another CPU races only on these plain fields.
        let entry = unsafe { &mut *entry };
        let current = at_slot(service, entry.slot);
        if affinity::holds(entry, current.as_ref(), now, timeout_s) {
            if !dry_run {
                entry.last_used_ns = now;
            }
            return current;
        }
    }
    let slot = (random % u32::from(service.backend_count)) as u16;
    let backend = at_slot(service, slot)?;
    if dry_run {
        return Some(backend);
    }
    let fresh = AffinityEntry {
        last_used_ns: now,
        backend_addr: backend.addr,
        backend_port: backend.port,
        slot,
    };
    // Two first flows of one client on two CPUs: the second adopts the
    // first's backend, so the client never has two.
    let flags = if recorded.is_some() {
        BPF_ANY
    } else {
        BPF_NOEXIST
    };
    if AFFINITY.insert(key, fresh, flags).is_err()
        && let Some(entry) = AFFINITY.get_ptr(key)
    {
        // SAFETY: as above, read at once.
        let entry = unsafe { &*entry };
        let current = at_slot(service, entry.slot);
        if affinity::holds(entry, current.as_ref(), now, timeout_s) {
            return current;
        }
    }
    Some(backend)
}
