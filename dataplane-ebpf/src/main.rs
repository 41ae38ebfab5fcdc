//! ferry's kernel programs. Entry points only; the logic lives in one module
//! per concern.
#![no_std]
#![no_main]

mod balance;
mod conntrack;
mod debug;
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
mod monitor;
mod nat;
mod new_flow;
mod parse;
mod reject;
mod service_range;
mod sock;
mod translate;
mod xdp_uplink;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
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

/// connect() of a socket in the node's cgroup tree: a Service frontend
/// becomes a backend before the first packet (socket-level load
/// balancing, `sock`).
#[cgroup_sock_addr(connect4)]
pub fn ferry_sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::forward(&ctx, false)
}

/// sendmsg() on a UDP socket: as connect(), per datagram.
#[cgroup_sock_addr(sendmsg4)]
pub fn ferry_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::forward(&ctx, true)
}

/// recvmsg() on a UDP socket: a translated backend's datagram reports the
/// frontend as its source.
#[cgroup_sock_addr(recvmsg4)]
pub fn ferry_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx)
}

/// getpeername(): a translated socket's peer is the frontend.
#[cgroup_sock_addr(getpeername4)]
pub fn ferry_sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
