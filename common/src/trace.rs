//! `ferry-agent trace`: a packet run through the live programs with
//! BPF_PROG_TEST_RUN that changes no map. The tc programs recognise such a
//! run by a 64-bit marker in the skb's mark and priority (set through the
//! test run's context; no real packet reaches a ferry hook with both), XDP
//! by the same marker in the packet's metadata (`TRACE_META_LEN`), and
//! then write nothing: no conntrack, affinity or fragment entry, no
//! counter. Instead they leave their decision in the context's `cb`, which
//! the test run hands back.

/// `__sk_buff.mark` of a trace run.
pub const TRACE_MARK: u32 = 0xfe77_7ace;
/// `__sk_buff.priority` of a trace run.
pub const TRACE_PRIORITY: u32 = 0x7ace_fe77;
/// Set in `cb[TRACE_CB_OUTCOME]` with the outcome (`outcome::*`) in the
/// low bits, so zero ("translated") is told from "not written".
pub const TRACE_OUTCOME_WRITTEN: u32 = 0x8000_0000;
/// Index of `__sk_buff.cb` holding the outcome.
pub const TRACE_CB_OUTCOME: usize = 0;
/// XDP has no mark: an XDP trace run carries `TRACE_PRIORITY` then
/// `TRACE_MARK` (native order) as its first 8 bytes of metadata (the
/// test run's data before `xdp_md.data`), and the program hands the
/// outcome of a packet it would send back in the metadata's first word
/// (with `TRACE_OUTCOME_WRITTEN`); a packet it leaves to tc leaves the
/// marker as it was.
pub const TRACE_META_LEN: usize = 8;

// The first metadata word must not read as a written outcome.
const _: () = assert!(TRACE_PRIORITY & TRACE_OUTCOME_WRITTEN == 0);
