//! `ferry-agent trace`: a packet run through the live programs with
//! BPF_PROG_TEST_RUN that changes no map. The tc programs recognise such a
//! run by a 64-bit marker in the skb's mark and priority (set through the
//! test run's context; no real packet reaches a ferry hook with both), and
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
