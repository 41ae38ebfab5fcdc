//! Sending a packet for a pod on another node: native routing (out of the
//! uplink with the node as next hop) or VXLAN (through the node's
//! collect-metadata VXLAN device, tunnel key set per destination node).
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_SHOT,
        bpf_fib_lookup, bpf_redir_neigh, bpf_tunnel_key,
    },
    btf_maps::lpm_trie::Key,
    helpers::generated::{
        bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_skb_set_tunnel_key,
    },
    programs::TcContext,
};
use ferry_common::{ROUTE_MODE_NATIVE, ROUTE_MODE_VXLAN};

use crate::maps::ROUTES;

const AF_INET: u8 = 2;
/// BPF_F_ZERO_CSUM_TX: no UDP checksum on the outer header, as the kernel's
/// own VXLAN does by default for IPv4.
const BPF_F_ZERO_CSUM_TX: u64 = 1 << 1;
const TUNNEL_TTL: u8 = 64;

/// Send the packet towards the node owning `dst`'s pod CIDR. None when no
/// route covers `dst` (the kernel decides, as for any other address).
#[inline(always)]
pub fn to_remote_node(ctx: &TcContext, dst: [u8; 4]) -> Option<i32> {
    let route = ROUTES.get(&Key::new(32, dst)).copied()?;
    match route.mode {
        ROUTE_MODE_NATIVE => Some(native(ctx, route.node_addr, route.ifindex)),
        ROUTE_MODE_VXLAN => Some(vxlan(ctx, route.node_addr, route.ifindex, route.vni)),
        _ => None,
    }
}

#[inline(always)]
fn native(ctx: &TcContext, node_addr: [u8; 4], uplink: u32) -> i32 {
    fib_redirect(ctx, node_addr, uplink)
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
    // SAFETY: an all-zero bpf_fib_lookup is a valid argument.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.ifindex = ifindex;
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(nexthop_dst);
    // SAFETY: params is a valid, fully initialised struct on our stack.
    let rc = unsafe {
        fib_lookup(
            ctx.skb.skb as *mut _,
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    } as u32;
    if rc == BPF_FIB_LKUP_RET_SUCCESS {
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&params.dmac);
        macs[6..].copy_from_slice(&params.smac);
        if ctx.store(0, &macs, 0).is_err() {
            return TC_ACT_SHOT;
        }
        // SAFETY: plain helper call.
        return unsafe { bpf_redirect(params.ifindex, 0) } as i32;
    }
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH {
        // The next hop's MAC is not known yet: let the kernel resolve it
        // (ARP) and send the packet once it is.
        let mut nh = bpf_redir_neigh {
            nh_family: u32::from(AF_INET),
            __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 {
                // SAFETY: the lookup filled the IPv4 next hop.
                ipv4_nh: unsafe { params.__bindgen_anon_4.ipv4_dst },
            },
        };
        // SAFETY: nh is valid for the call.
        return unsafe {
            bpf_redirect_neigh(
                params.ifindex,
                &mut nh,
                core::mem::size_of::<bpf_redir_neigh>() as i32,
                0,
            )
        } as i32;
    }
    // No route: the kernel gets the packet and answers for itself.
    TC_ACT_OK
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
