use crate::maps::COUNTERS;

/// Count one packet of `len` bytes under `outcome`.
#[inline(always)]
pub fn count(outcome: u32, len: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(outcome) {
        // SAFETY: per-CPU slot; nothing else on this CPU runs concurrently.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(len);
        }
    }
}
