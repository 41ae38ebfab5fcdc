//! Events for `ferry-agent monitor`: drops and rejects (from tc's finishing
//! step) and new Service flows (from conntrack, when a flow is recorded),
//! into the `ferry_events` ring buffer. Only while a listener asks
//! (`ferry_monitor`): with nobody listening, a drop or a new flow costs one
//! array lookup and an established flow's packets cost nothing. Each sender
//! is a function of its own (a BPF-to-BPF call), so its event never sits on
//! the frame of the path that calls it.
use aya_ebpf::{bindings::__sk_buff, programs::TcContext};
use ferry_common::{
    EVENT_DROP, EVENT_FLOW, EVENT_REJECT, MONITOR_DROPS, MONITOR_FLOWS, MonitorEvent, PROTO_TCP,
    PROTO_UDP,
};

use crate::{
    conntrack::now_ns,
    maps::{EVENTS, MONITOR},
    parse::{ETH_HLEN, Frame, L4Packet},
};

#[inline(always)]
fn wanted(bit: u32) -> bool {
    MONITOR.get(0).is_some_and(|m| m.flags & bit != 0)
}

/// A packet tc dropped (`reject`: answered with a reject instead) under
/// `outcome`, summarised from its headers as they are now.
#[inline(never)]
pub fn dropped(skb: *mut __sk_buff, outcome: u32, reject: bool) {
    if !wanted(MONITOR_DROPS) {
        return;
    }
    let ctx = TcContext::new(skb);
    let frame = Frame::of_tc(&ctx);
    let Some(mut entry) = EVENTS.reserve(0) else {
        return;
    };
    let mut event = MonitorEvent {
        ts_ns: now_ns(),
        outcome,
        // SAFETY: reading a field of our own skb.
        ifindex: unsafe { (*skb).ingress_ifindex },
        kind: if reject { EVENT_REJECT } else { EVENT_DROP },
        ..MonitorEvent::default()
    };
    if let (Some([0x08, 0x00]), Some(ip)) =
        (frame.bytes_at::<2>(12), frame.bytes_at::<20>(ETH_HLEN))
    {
        event.protocol = ip[9];
        event.src_addr = [ip[12], ip[13], ip[14], ip[15]];
        event.dst_addr = [ip[16], ip[17], ip[18], ip[19]];
        let l4 = ETH_HLEN + (usize::from(ip[0] & 0x0f) << 2);
        if (ip[9] == PROTO_TCP || ip[9] == PROTO_UDP) && l4 <= ETH_HLEN + 60 {
            if let Some(ports) = frame.bytes_at::<4>(l4) {
                event.src_port = u16::from_be_bytes([ports[0], ports[1]]);
                event.dst_port = u16::from_be_bytes([ports[2], ports[3]]);
            }
        }
    }
    entry.write(event);
    entry.submit(0);
}

/// A new flow of `pkt` to the frontend of `service_id`, translated to
/// `backend` (address and port packed as `pack` does), source-NATed to
/// `snat` (same packing; zero: not). Written field by field into the ring
/// buffer's memory, never through a stack copy: it runs inside the
/// deepest frames there are (the uplink's new external flows).
#[inline(always)]
pub fn new_flow(pkt: &L4Packet, service_id: u32, backend: u64, snat: u64) {
    if !wanted(MONITOR_FLOWS) {
        return;
    }
    let Some(mut entry) = EVENTS.reserve(0) else {
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points at the reserved record, which is ours until
    // submitted; every field is written before it is.
    unsafe {
        (*e).ts_ns = now_ns();
        (*e).outcome = 0;
        (*e).ifindex = 0;
        (*e).service_id = service_id;
        (*e).src_addr = pkt.src_addr;
        (*e).dst_addr = pkt.dst_addr;
        (*e).nat_addr = ((backend >> 16) as u32).to_be_bytes();
        (*e).snat_addr = ((snat >> 16) as u32).to_be_bytes();
        (*e).src_port = pkt.src_port;
        (*e).dst_port = pkt.dst_port;
        (*e).nat_port = backend as u16;
        (*e).snat_port = snat as u16;
        (*e).kind = EVENT_FLOW;
        (*e).protocol = pkt.protocol;
        (*e).pad = [0; 2];
    }
    entry.submit(0);
}

/// `addr` and `port` packed for `new_flow`.
#[inline(always)]
pub fn pack(addr: [u8; 4], port: u16) -> u64 {
    (u64::from(u32::from_be_bytes(addr)) << 16) | u64::from(port)
}
