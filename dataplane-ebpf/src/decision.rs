//! What a hook does with one packet, decided once by the per-concern logic
//! and carried out by the hook's one finishing step (`deliver::finish` for
//! tc, `xdp_uplink::finish` for XDP), which is also the only place a packet
//! is counted.
//!
//! Counting policy, the same for every hook: a packet is counted exactly
//! once on its way through the node, under the outcome of the decision that
//! settles it, by the hook that settles it. A hook settles a packet when it
//! rewrites, drops, answers or delivers it itself, or passes it to the
//! kernel as ferry's traffic (everything a pod sends is ferry's). A packet a
//! hook hands on for someone else to settle is not counted there: XDP hands
//! what it does not send itself to tc, which counts it; the uplink's tc
//! hands the node's own traffic (anything that is not translated and not
//! for a local pod) to the kernel uncounted.
use ferry_common::outcome;

use ferry_common::{ServiceStats, service_drop_slot};

use crate::{
    maps::{COUNTERS, SERVICE_STATS},
    parse::L4Packet,
};

/// Where a tc hook sends a packet that goes on towards `dst`.
#[derive(Clone, Copy)]
pub enum Delivery {
    /// A pod on this node, else a pod on another node by the route map,
    /// else the kernel's own routing.
    Onward,
    /// As `Onward`, but ferry sends what neither a pod here nor the route
    /// map takes by fib lookup: the packet's source is now a node or
    /// frontend address, which the kernel would refuse as a martian on a
    /// packet arriving from outside.
    OnwardRewritten,
    /// A pod on this node only; anything else is the node's own traffic,
    /// handed to the kernel untouched and uncounted.
    LocalPodOnly,
}

/// What a tc hook does with the packet.
#[derive(Clone, Copy)]
pub enum TcVerdict {
    /// To the kernel as it is (`TC_ACT_OK`).
    Pass,
    /// Not ferry's to settle (the node's own traffic on the network side):
    /// to the kernel as it is, and not counted.
    NotOurs,
    /// `TC_ACT_SHOT`.
    Drop,
    /// The decision sent the packet already (the reject's ICMP answer, out
    /// of the interface it came in on): `TC_ACT_REDIRECT`.
    Redirected,
    /// On towards `dst` (the destination after any translation).
    Deliver { dst: [u8; 4], via: Delivery },
}

/// An egress interface and the MACs to write (destination, then source).
#[derive(Clone, Copy)]
pub struct NextHop {
    pub macs: [u8; 12],
    pub ifindex: u32,
}

/// What the XDP hook does with the packet.
#[derive(Clone, Copy)]
pub enum XdpVerdict {
    /// Rewritten already: send it out towards `NextHop` from here.
    Transmit(NextHop),
    /// Left to tc (`XDP_PASS`), which settles and counts it.
    HandToTc,
}

/// One packet's decision: its outcome (an index of `ferry_counters`),
/// what the hook does with it, and the frontend it is counted for.
#[derive(Clone, Copy)]
pub struct Decision<V> {
    pub outcome: u32,
    pub verdict: V,
    /// The frontend's service id (`ferry_svc_stats`), 0 for none, with
    /// `NEW_FLOW` set when the packet started the flow.
    pub service: u32,
}

/// `Decision::service`: the packet started its flow. Service ids stay far
/// below it (`SERVICE_STATS_SLOTS`).
pub const NEW_FLOW: u32 = 1 << 31;

impl<V> Decision<V> {
    #[inline(always)]
    pub fn new(outcome: u32, verdict: V) -> Self {
        Self {
            outcome,
            verdict,
            service: 0,
        }
    }

    /// The same decision, counted for the frontend `service_id` too;
    /// `new_flow`: the packet started the flow.
    #[inline(always)]
    pub fn for_service(self, service_id: u32, new_flow: bool) -> Self {
        Self {
            service: service_id | if new_flow { NEW_FLOW } else { 0 },
            ..self
        }
    }
}

impl Decision<TcVerdict> {
    /// On towards `dst` (the destination after any translation).
    #[inline(always)]
    pub fn deliver(outcome: u32, dst: [u8; 4], via: Delivery) -> Self {
        Self::new(outcome, TcVerdict::Deliver { dst, via })
    }

    #[inline(always)]
    pub fn drop(outcome: u32) -> Self {
        Self::new(outcome, TcVerdict::Drop)
    }

    /// The node's own traffic on the network side (never counted, so the
    /// outcome is only a placeholder).
    #[inline(always)]
    pub fn not_ours() -> Self {
        Self::new(outcome::PASSED, TcVerdict::NotOurs)
    }
}

impl Decision<XdpVerdict> {
    /// Left to tc (never counted here, so the outcome is a placeholder).
    #[inline(always)]
    pub fn hand_to_tc() -> Self {
        Self::new(outcome::PASSED, XdpVerdict::HandToTc)
    }
}

/// The outcome of a TCP/UDP packet ferry passes untranslated: a first
/// fragment is counted with the other fragments ferry does not translate.
#[inline(always)]
pub fn passed(pkt: &L4Packet) -> u32 {
    if pkt.first_fragment {
        outcome::PASSED_FRAGMENT
    } else {
        outcome::PASSED
    }
}

/// Count one packet of `len` bytes under `outcome`; only the finishing
/// steps call this.
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

/// Count one packet of `len` bytes under `outcome` for the frontend
/// `service` (`Decision::service`): a drop under its reason, anything else
/// as a packet of the frontend's flows. Only the finishing steps call this.
#[inline(always)]
pub fn count_for_service(service: u32, outcome: u32, len: u32) {
    if service == 0 {
        return;
    }
    let Some(s) = service_stats(service & !NEW_FLOW) else {
        return;
    };
    match service_drop_slot(outcome) {
        Some(slot) => {
            if let Some(drops) = s.drops.get_mut(slot) {
                *drops += 1;
            }
        }
        None => {
            s.packets += 1;
            s.bytes += u64::from(len);
            if service & NEW_FLOW != 0 {
                s.new_connections += 1;
            }
        }
    }
}

/// This CPU's `ferry_svc_stats` slot of the frontend `service_id`.
#[inline(always)]
pub fn service_stats(service_id: u32) -> Option<&'static mut ServiceStats> {
    // SAFETY: per-CPU slot; nothing else on this CPU runs concurrently.
    SERVICE_STATS
        .get_ptr_mut(service_id)
        .map(|s| unsafe { &mut *s })
}
