//! Debug lines for `ferry-agent debug on`: one aya-log line per packet a tc
//! hook settles, which the agent prints through its own logs.
//!
//! The switch is a global of its own data section (`.data.ferry_debug`),
//! which the loader makes a one-entry array map and the agent pins as
//! `ferry_debug`: the programs read it as a direct load (no helper call,
//! no stack), so with debug off a packet pays one load and a branch.
//! The line itself is a BPF-to-BPF call, so its frame never adds to the
//! deep frames of the paths that decide.
use aya_ebpf::{bindings::__sk_buff, programs::TcContext};
use aya_log_ebpf::info;

/// Non-zero: debug lines on. Written only by the agent (through the
/// pinned map); zero when the programs are loaded.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data.ferry_debug")]
static mut FERRY_DEBUG: u32 = 0;

/// Which hook a debug line comes from.
#[derive(Clone, Copy)]
pub enum Hook {
    FromPod,
    FromNetwork,
}

#[inline(always)]
pub fn enabled() -> bool {
    // SAFETY: a plain read of our own global; the volatile read keeps the
    // compiler from folding it to its initial value.
    unsafe { core::ptr::read_volatile(&raw const FERRY_DEBUG) != 0 }
}

/// One line about a settled packet: the interface it came in on, its
/// length, outcome (`ferry_common::outcome`), tc action and frontend.
#[inline(never)]
pub fn packet(skb: *mut __sk_buff, hook: Hook, outcome: u32, service: u32, action: i32) {
    let ctx = TcContext::new(skb);
    // SAFETY: reading fields of our own skb.
    let (ifindex, len) = unsafe { ((*skb).ifindex, (*skb).len) };
    match hook {
        Hook::FromPod => info!(
            &ctx,
            "from_pod ifindex={} len={} outcome={} action={} service_id={}",
            ifindex,
            len,
            outcome,
            action,
            service
        ),
        Hook::FromNetwork => info!(
            &ctx,
            "from_network ifindex={} len={} outcome={} action={} service_id={}",
            ifindex,
            len,
            outcome,
            action,
            service
        ),
    }
}
