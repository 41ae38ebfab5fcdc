//! ferry's kernel programs. Entry points only; the logic lives in one module
//! per concern.
#![no_std]
#![no_main]

mod balance;
mod conntrack;
mod decision;
mod deliver;
mod external;
mod fib;
mod forward;
mod fragment;
mod from_network;
mod from_pod;
mod icmp_error;
mod maps;
mod nat;
mod new_flow;
mod parse;
mod reject;
mod service_range;
mod translate;
mod xdp_uplink;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// tc ingress of a pod's host-side veth: everything the pod sends.
/// Service frontends are translated to a backend, replies from backends are
/// translated back, all else passes untouched.
#[classifier]
pub fn ferry_from_pod(ctx: TcContext) -> i32 {
    from_pod::handle(&ctx)
}

/// tc ingress of the node's uplink and of its VXLAN device: what other
/// nodes send. Replies of Service flows this node translated are
/// translated back; packets for local pods go straight into the pod.
#[classifier]
pub fn ferry_from_network(ctx: TcContext) -> i32 {
    from_network::handle(&ctx)
}

/// XDP on the node's uplink (native routing): external traffic for
/// backends on other nodes is translated and sent back out before the
/// kernel stack; everything else passes to tc.
#[xdp]
pub fn ferry_xdp_uplink(ctx: XdpContext) -> u32 {
    xdp_uplink::handle(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
