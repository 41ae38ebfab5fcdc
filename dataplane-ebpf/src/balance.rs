//! Service frontends and load balancing: the frontend a packet is
//! addressed to, and a new flow's backend, drawn uniformly from the active
//! bank of its frontend.
use aya_ebpf::helpers::generated::bpf_get_prandom_u32;
use ferry_common::{Backend, BackendKey, ServiceKey, ServiceValue};

use crate::{
    maps::{BACKENDS, SERVICES},
    parse::L4Packet,
};

/// The frontend of `scope` (`SCOPE_*`) the packet is addressed to.
#[inline(always)]
pub fn frontend(pkt: &L4Packet, scope: u8) -> Option<ServiceValue> {
    let key = ServiceKey {
        addr: pkt.dst_addr,
        port: pkt.dst_port,
        protocol: pkt.protocol,
        scope,
    };
    // SAFETY: copied out at once.
    (unsafe { SERVICES.get(key) }).copied()
}

/// A backend of `service` at random, and the random number drawn (a seed
/// for later choices of the same flow). None when the slot is missing (an
/// update raced the packet) or the service has no backends.
#[inline(always)]
pub fn pick_backend(service: &ServiceValue) -> Option<(Backend, u32)> {
    if service.backend_count == 0 {
        return None;
    }
    // SAFETY: helper without arguments.
    let random = unsafe { bpf_get_prandom_u32() };
    let key = BackendKey {
        service_id: service.service_id,
        slot: (random % u32::from(service.backend_count)) as u16,
        bank: service.bank,
        pad: 0,
    };
    // SAFETY: copied out at once.
    let backend = (unsafe { BACKENDS.get(key) }).copied()?;
    Some((backend, random))
}
