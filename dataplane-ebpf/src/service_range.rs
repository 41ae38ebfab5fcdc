//! Pod traffic into the service range that no frontend and no tracked flow
//! took (`ferry_svc_cidrs`, filled only with `--service-cidr`): a
//! ClusterIP's unserved port is rejected, an address no Service holds is
//! dropped, as kube-proxy does; neither leaves the node.
use aya_ebpf::{btf_maps::lpm_trie::Key, programs::TcContext};
use ferry_common::{SERVICE_RANGE_ALLOCATED, outcome};

use crate::{
    decision::{Decision, TcVerdict},
    maps::SERVICE_RANGES,
    parse::L4Packet,
    reject,
};

/// `SERVICE_RANGE_*` of the longest prefix holding `dst`; None outside
/// every service CIDR and ClusterIP.
#[inline(always)]
fn kind(dst: [u8; 4]) -> Option<u32> {
    SERVICE_RANGES.get(&Key::new(32, dst)).map(|r| r.kind)
}

/// A TCP or UDP packet for the service range: rejected when its
/// destination is a ClusterIP, else dropped. None outside the range.
#[inline(always)]
pub fn unmatched(ctx: &TcContext, pkt: &L4Packet) -> Option<Decision<TcVerdict>> {
    Some(match kind(pkt.dst_addr)? {
        SERVICE_RANGE_ALLOCATED => reject::unserved_port(ctx, pkt),
        _ => Decision::drop(outcome::DROP_UNALLOCATED_SERVICE_IP),
    })
}

/// Neither TCP nor UDP (a ping) for the service range: dropped, ClusterIP
/// or not. None outside the range.
#[inline(always)]
pub fn other_protocol(dst: [u8; 4]) -> Option<Decision<TcVerdict>> {
    kind(dst).map(|_| Decision::drop(outcome::DROP_SERVICE_IP_OTHER_PROTOCOL))
}

/// A later fragment for the service range that follows no recorded first
/// fragment: dropped, since no backend is known for it. None outside the
/// range.
#[inline(always)]
pub fn untracked_fragment(dst: [u8; 4]) -> Option<Decision<TcVerdict>> {
    kind(dst).map(|_| Decision::drop(outcome::DROP_FRAGMENT_UNTRACKED))
}
