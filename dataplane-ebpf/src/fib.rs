//! The one fib lookup, for tc and XDP alike: where the node's routing table
//! sends an address, and the MACs to write on the way.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::generated::bpf_fib_lookup as fib_lookup,
};

use crate::{decision::NextHop, maps::FIB_SCRATCH};

pub const AF_INET: u8 = 2;

pub enum Fib {
    /// Route and neighbour known.
    Found(NextHop),
    /// Routed out of `ifindex` towards `gateway` (network order, as the
    /// helper gives it), whose MAC is not resolved yet.
    NoNeighbour { ifindex: u32, gateway: u32 },
    /// No route: the kernel answers for itself.
    NoRoute,
}

/// Look `dst` up as a packet arriving on `ifindex` would be routed. `ctx`
/// is the program's context (the skb, or the xdp_md).
#[inline(always)]
pub fn lookup(ctx: *mut c_void, dst: [u8; 4], ifindex: u32) -> Fib {
    // The helper's 64-byte argument lives in a per-CPU scratch slot, not on
    // the stack: the uplink's deepest frame has no 64 bytes to spare.
    let Some(params) = FIB_SCRATCH.get_ptr_mut(0) else {
        return Fib::NoRoute;
    };
    // SAFETY: this CPU's slot, used by this program run only; an all-zero
    // bpf_fib_lookup is a valid argument.
    let params = unsafe {
        *params = core::mem::zeroed();
        &mut *params
    };
    params.family = AF_INET;
    params.ifindex = ifindex;
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    // SAFETY: params is a valid, fully initialised struct.
    let rc = unsafe {
        fib_lookup(
            ctx,
            params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    } as u32;
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {
            let mut macs = [0u8; 12];
            macs[..6].copy_from_slice(&params.dmac);
            macs[6..].copy_from_slice(&params.smac);
            Fib::Found(NextHop {
                macs,
                ifindex: params.ifindex,
            })
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => Fib::NoNeighbour {
            ifindex: params.ifindex,
            // SAFETY: the lookup filled the IPv4 next hop.
            gateway: unsafe { params.__bindgen_anon_4.ipv4_dst },
        },
        _ => Fib::NoRoute,
    }
}
