//! Load balancing: a new flow's backend, drawn uniformly from the active
//! bank of its frontend.
use aya_ebpf::helpers::generated::bpf_get_prandom_u32;
use ferry_common::{Backend, BackendKey, ServiceValue};

use crate::maps::BACKENDS;

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
