//! Sending a packet on from tc: to a pod on another node, native routing
//! (out of the uplink with the node as next hop) or VXLAN (through the
//! node's collect-metadata VXLAN device, tunnel key set per destination
//! node); or to any address by the node's routing table.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, bpf_redir_neigh, bpf_tunnel_key},
    btf_maps::lpm_trie::Key,
    helpers::generated::{bpf_redirect, bpf_redirect_neigh, bpf_skb_set_tunnel_key},
    programs::TcContext,
};
use ferry_common::{ROUTE_MODE_NATIVE, ROUTE_MODE_VXLAN, Route};

use crate::{
    fib::{self, AF_INET, Fib},
    maps::ROUTES,
};

/// BPF_F_ZERO_CSUM_TX: no UDP checksum on the outer header, as the kernel's
/// own VXLAN does by default for IPv4.
const BPF_F_ZERO_CSUM_TX: u64 = 1 << 1;
const TUNNEL_TTL: u8 = 64;

/// The route map's entry for the pod CIDR holding `dst`, if another node
/// owns one.
#[inline(always)]
pub fn route_to(dst: [u8; 4]) -> Option<Route> {
    ROUTES.get(&Key::new(32, dst)).copied()
}

/// Send the packet towards the node owning `dst`'s pod CIDR. None when no
/// route covers `dst` (the kernel decides, as for any other address).
#[inline(always)]
pub fn to_remote_node(ctx: &TcContext, dst: [u8; 4]) -> Option<i32> {
    let route = route_to(dst)?;
    match route.mode {
        ROUTE_MODE_NATIVE => Some(fib_redirect(ctx, route.node_addr, route.ifindex)),
        ROUTE_MODE_VXLAN => Some(vxlan(ctx, route.node_addr, route.ifindex, route.vni)),
        _ => None,
    }
}

/// Send the packet to `dst` the way the node's routing table says, from
/// here: fib lookup, MACs, redirect out of the egress interface.
#[inline(always)]
pub fn by_fib(ctx: &TcContext, dst: [u8; 4]) -> i32 {
    // SAFETY: reading the skb's ingress ifindex.
    let ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    fib_redirect(ctx, dst, ifindex)
}

/// Next hop `nexthop_dst` (the node, or the final destination): look it up
/// from interface `ifindex`'s point of view and redirect.
#[inline(always)]
fn fib_redirect(ctx: &TcContext, nexthop_dst: [u8; 4], ifindex: u32) -> i32 {
    match fib::lookup(ctx.skb.skb.cast(), nexthop_dst, ifindex) {
        Fib::Found(hop) => {
            if ctx.store(0, &hop.macs, 0).is_err() {
                return TC_ACT_SHOT;
            }
            // SAFETY: plain helper call.
            unsafe { bpf_redirect(hop.ifindex, 0) as i32 }
        }
        Fib::NoNeighbour { ifindex, gateway } => {
            // The next hop's MAC is not known yet: let the kernel resolve
            // it (ARP) and send the packet once it is.
            let mut nh = bpf_redir_neigh {
                nh_family: u32::from(AF_INET),
                __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 {
                    ipv4_nh: gateway,
                },
            };
            // SAFETY: nh is valid for the call.
            unsafe {
                bpf_redirect_neigh(
                    ifindex,
                    &mut nh,
                    core::mem::size_of::<bpf_redir_neigh>() as i32,
                    0,
                ) as i32
            }
        }
        // No route: the kernel gets the packet and answers for itself.
        Fib::NoRoute => TC_ACT_OK,
    }
}

#[inline(always)]
fn vxlan(ctx: &TcContext, node_addr: [u8; 4], device: u32, vni: u32) -> i32 {
    // SAFETY: an all-zero bpf_tunnel_key is valid.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = vni;
    // The helper takes the remote address in host byte order.
    key.__bindgen_anon_1.remote_ipv4 = u32::from_be_bytes(node_addr);
    key.tunnel_ttl = TUNNEL_TTL;
    // SAFETY: key is valid for the call; the size is the IPv4 part the
    // kernel accepts (up to tunnel_label).
    let rc = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb as *mut _,
            &mut key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            BPF_F_ZERO_CSUM_TX,
        )
    };
    if rc != 0 {
        return TC_ACT_SHOT;
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(device, 0) as i32 }
}
