//! ferry's conntrack state machine, pure so that the host tests exercise the
//! exact code the kernel runs.
//!
//! Each flow has two entries (original and reply direction). Data packets only
//! refresh their own entry; packets that change the state (SYN, SYN-ACK,
//! FIN, RST) rewrite both, so the two always agree on state and flags.

/// TCP: the client's SYN was seen, no reply yet.
pub const STATE_TCP_SYN_SENT: u8 = 1;
/// TCP: traffic seen both ways (or picked up mid-stream).
pub const STATE_TCP_ESTABLISHED: u8 = 2;
/// TCP: RST seen, or FIN seen in both directions.
pub const STATE_TCP_CLOSING: u8 = 3;
/// UDP (and any other non-TCP protocol).
pub const STATE_UDP: u8 = 4;

/// A FIN was seen from the client.
pub const FLAG_FIN_ORIGINAL: u8 = 1;
/// A FIN was seen from the backend.
pub const FLAG_FIN_REPLY: u8 = 2;
/// A reply was seen.
pub const FLAG_SEEN_REPLY: u8 = 4;
/// TCP: the connection is over on both ends: an RST, or, after both FINs,
/// the last ACK. Only then may its tuple (a source-NAT port) be given to a
/// new connection: before it, the side that closed last may still
/// retransmit its FIN into the new connection.
pub const FLAG_CLOSED: u8 = 8;
/// TCP: the backend sent its FIN before the client did. The backend's
/// socket then waits out TIME_WAIT on the tuple (60 s on Linux); a SYN
/// from a different client given the same source-NAT tuple could meet it
/// and be answered with an ACK instead of a SYN-ACK. Cleared by an RST,
/// which ends TIME_WAIT.
pub const FLAG_BACKEND_CLOSED_FIRST: u8 = 16;
/// The flow's source was rewritten to the node's address and a port of the
/// node's source-NAT range (set when the flow is created).
pub const FLAG_SOURCE_NAT: u8 = 32;

const SECOND_NS: u64 = 1_000_000_000;
/// Timeouts, as Cilium's defaults: long for established flows (idle
/// keepalive-less connections must survive), short for half-open and closed.
pub const TIMEOUT_SYN_SENT_NS: u64 = 60 * SECOND_NS;
pub const TIMEOUT_ESTABLISHED_NS: u64 = 6 * 3600 * SECOND_NS;
pub const TIMEOUT_CLOSING_NS: u64 = 10 * SECOND_NS;
pub const TIMEOUT_UDP_NS: u64 = 60 * SECOND_NS;
/// A source-NATed flow the backend closed first is kept as long as Linux
/// keeps the backend's TIME_WAIT socket (TCP_TIMEWAIT_LEN), so its port is
/// not given away before the backend has forgotten the tuple.
pub const TIMEOUT_TIME_WAIT_NS: u64 = 60 * SECOND_NS;
/// How long a closed flow's source-NAT port rests before a new connection
/// may take it. The last ACK and the next SYN for the port can be handled
/// on different CPUs and cross on the way to the backend; a SYN that
/// overtakes the ACK meets the backend's socket still in LAST_ACK and is
/// lost until its retransmit a second later. The rest also covers a lost
/// last ACK: the backend retransmits its FIN after its minimum RTO (200 ms).
pub const SNAT_PORT_REST_NS: u64 = SECOND_NS;
/// The rest a port is held to when the range is under pressure (no fully
/// rested port found by a whole search): long past any reordering between
/// CPUs, so only a lost last ACK (retransmitted FIN after 200 ms) is left
/// uncovered, rather than refusing the new connection.
pub const SNAT_PORT_REST_MIN_NS: u64 = SECOND_NS / 10;

/// TCP header flag bits (byte 13 of the TCP header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// How long an entry in (state, flags) lives after its last packet.
#[inline(always)]
pub const fn timeout_ns(state: u8, flags: u8) -> u64 {
    const TIME_WAIT: u8 = FLAG_SOURCE_NAT | FLAG_BACKEND_CLOSED_FIRST;
    match state {
        STATE_TCP_SYN_SENT => TIMEOUT_SYN_SENT_NS,
        STATE_TCP_ESTABLISHED => TIMEOUT_ESTABLISHED_NS,
        // Only source-NATed flows: their tuple is ferry's to hand out
        // again. Any other flow's tuple is the client's own, and the
        // client's socket guards it.
        STATE_TCP_CLOSING if flags & TIME_WAIT == TIME_WAIT => TIMEOUT_TIME_WAIT_NS,
        STATE_TCP_CLOSING => TIMEOUT_CLOSING_NS,
        _ => TIMEOUT_UDP_NS,
    }
}

/// May a new connection take the source-NAT tuple held by a flow in
/// (state, flags) whose entry expires at `expires_ns`? Yes once the entry
/// has expired; for TCP also once the connection is closed on both ends,
/// the backend did not close first (its TIME_WAIT would still hold the
/// tuple), and the port has rested `SNAT_PORT_REST_NS` since the flow's
/// last packet.
#[inline(always)]
pub const fn snat_tuple_reusable(
    state: u8,
    flags: u8,
    expires_ns: u64,
    now_ns: u64,
    protocol: u8,
) -> bool {
    snat_tuple_reusable_after(
        state,
        flags,
        expires_ns,
        now_ns,
        protocol,
        SNAT_PORT_REST_NS,
    )
}

/// `snat_tuple_reusable` with a rest of `rest_ns` after a close.
#[inline(always)]
pub const fn snat_tuple_reusable_after(
    state: u8,
    flags: u8,
    expires_ns: u64,
    now_ns: u64,
    protocol: u8,
    rest_ns: u64,
) -> bool {
    if expires_ns < now_ns {
        return true;
    }
    let last_packet_ns = expires_ns.saturating_sub(timeout_ns(state, flags));
    protocol == crate::PROTO_TCP
        && flags & FLAG_CLOSED != 0
        && flags & FLAG_BACKEND_CLOSED_FIRST == 0
        && now_ns >= last_packet_ns + rest_ns
}

/// State of a flow created by its first packet (always original direction).
#[inline(always)]
pub const fn initial_state(protocol: u8, tcp_flags: u8) -> u8 {
    if protocol != crate::PROTO_TCP {
        STATE_UDP
    } else if tcp_flags & TCP_RST != 0 {
        STATE_TCP_CLOSING
    } else if tcp_flags & TCP_SYN != 0 && tcp_flags & TCP_ACK == 0 {
        STATE_TCP_SYN_SENT
    } else {
        // Picked up mid-stream, e.g. the conntrack entry was evicted: keep
        // the connection going rather than starve it on a SYN timeout.
        STATE_TCP_ESTABLISHED
    }
}

/// (state, flags) after a packet with `tcp_flags` travelling in `direction`
/// (`CT_DIR_*`) on a flow in (state, flags).
#[inline(always)]
pub const fn advance(state: u8, flags: u8, direction: u8, tcp_flags: u8) -> (u8, u8) {
    let reply = direction == crate::CT_DIR_REPLY;
    let mut flags = flags;
    if reply {
        flags |= FLAG_SEEN_REPLY;
    }
    if state == STATE_UDP {
        return (state, flags);
    }
    if tcp_flags & TCP_FIN != 0 {
        if reply && flags & (FLAG_FIN_ORIGINAL | FLAG_FIN_REPLY) == 0 {
            flags |= FLAG_BACKEND_CLOSED_FIRST;
        }
        flags |= if reply {
            FLAG_FIN_REPLY
        } else {
            FLAG_FIN_ORIGINAL
        };
    }
    if tcp_flags & TCP_RST != 0 {
        flags &= !FLAG_BACKEND_CLOSED_FIRST;
    }
    if tcp_flags & TCP_RST != 0
        || (state == STATE_TCP_CLOSING && tcp_flags & TCP_FIN == 0 && tcp_flags & TCP_ACK != 0)
    {
        flags |= FLAG_CLOSED;
    }
    let state = if tcp_flags & TCP_RST != 0
        || flags & (FLAG_FIN_ORIGINAL | FLAG_FIN_REPLY) == FLAG_FIN_ORIGINAL | FLAG_FIN_REPLY
    {
        STATE_TCP_CLOSING
    } else if state == STATE_TCP_SYN_SENT && reply {
        STATE_TCP_ESTABLISHED
    } else {
        state
    };
    (state, flags)
}

/// Does this packet change what is stored (so both entries must be written)?
#[inline(always)]
pub const fn changes_entry(state: u8, flags: u8, direction: u8, tcp_flags: u8) -> bool {
    let (s, f) = advance(state, flags, direction, tcp_flags);
    s != state || f != flags
}

/// Should a packet of the original direction start a new flow over an
/// existing entry (port reuse after close, or an expired entry)?
#[inline(always)]
pub const fn starts_new_flow(state: u8, expired: bool, protocol: u8, tcp_flags: u8) -> bool {
    if expired {
        return true;
    }
    protocol == crate::PROTO_TCP
        && state == STATE_TCP_CLOSING
        && tcp_flags & TCP_SYN != 0
        && tcp_flags & TCP_ACK == 0
}

/// Does a reply-direction packet belong to the tracked flow? A SYN-ACK on a
/// closed flow, or anything on an expired one, is a new connection that
/// happens to reuse the tuple (the client reused its port towards the
/// backend's own address): it must pass untranslated.
#[inline(always)]
pub const fn reply_matches(state: u8, expired: bool, protocol: u8, tcp_flags: u8) -> bool {
    if expired {
        return false;
    }
    !(protocol == crate::PROTO_TCP
        && state == STATE_TCP_CLOSING
        && tcp_flags & TCP_SYN != 0
        && tcp_flags & TCP_ACK != 0)
}

/// The key of the other direction of the flow that `(key, entry)` belongs
/// to. Source-NATed flows (hairpin, NodePort to another node) carry the
/// rewritten client side in `peer_nat_addr` / `peer_nat_port`.
/// Shared by the kernel (to update both entries) and the agent (GC).
#[inline(always)]
pub fn partner_key(key: &crate::CtKey, entry: &crate::CtEntry) -> crate::CtKey {
    let snat = entry.peer_nat_addr != [0; 4];
    if key.direction == crate::CT_DIR_ORIGINAL {
        // Reply travels backend -> client (or -> the source NAT address).
        crate::CtKey {
            src_addr: entry.nat_addr,
            dst_addr: if snat {
                entry.peer_nat_addr
            } else {
                key.src_addr
            },
            src_port: entry.nat_port,
            dst_port: if snat {
                entry.peer_nat_port
            } else {
                key.src_port
            },
            protocol: key.protocol,
            direction: crate::CT_DIR_REPLY,
            pad: [0; 2],
        }
    } else {
        // Original travels client -> frontend.
        crate::CtKey {
            src_addr: if snat {
                entry.peer_nat_addr
            } else {
                key.dst_addr
            },
            dst_addr: entry.nat_addr,
            src_port: if snat {
                entry.peer_nat_port
            } else {
                key.dst_port
            },
            dst_port: entry.nat_port,
            protocol: key.protocol,
            direction: crate::CT_DIR_ORIGINAL,
            pad: [0; 2],
        }
    }
}

/// The state as `ferry-agent inspect conntrack` shows it: CLOSING is split
/// by what holds a source-NAT port back (see `snat_tuple_reusable`).
pub fn state_label(state: u8, flags: u8) -> &'static str {
    if state != STATE_TCP_CLOSING || flags & FLAG_CLOSED == 0 {
        return state_name(state);
    }
    if flags & (FLAG_BACKEND_CLOSED_FIRST | FLAG_SOURCE_NAT)
        == FLAG_BACKEND_CLOSED_FIRST | FLAG_SOURCE_NAT
    {
        // The backend's socket sits in TIME_WAIT on ferry's tuple.
        "CLOSED_TIME_WAIT"
    } else {
        "CLOSED"
    }
}

pub fn state_name(state: u8) -> &'static str {
    match state {
        STATE_TCP_SYN_SENT => "SYN_SENT",
        STATE_TCP_ESTABLISHED => "ESTABLISHED",
        STATE_TCP_CLOSING => "CLOSING",
        STATE_UDP => "UDP",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CT_DIR_ORIGINAL as O, CT_DIR_REPLY as R, PROTO_TCP, PROTO_UDP};

    #[test]
    fn tcp_handshake_data_and_close() {
        let s = initial_state(PROTO_TCP, TCP_SYN);
        assert_eq!(s, STATE_TCP_SYN_SENT);
        let (s, f) = advance(s, 0, R, TCP_SYN | TCP_ACK);
        assert_eq!((s, f), (STATE_TCP_ESTABLISHED, FLAG_SEEN_REPLY));
        assert!(!changes_entry(s, f, O, TCP_ACK));
        assert!(!changes_entry(s, f, R, TCP_ACK));
        // Half-close keeps the established timeout: the other side may still send.
        let (s, f) = advance(s, f, O, TCP_FIN | TCP_ACK);
        assert_eq!(s, STATE_TCP_ESTABLISHED);
        assert_eq!(timeout_ns(s, f), TIMEOUT_ESTABLISHED_NS);
        let (s, f) = advance(s, f, R, TCP_FIN | TCP_ACK);
        assert_eq!(s, STATE_TCP_CLOSING);
        assert_eq!(timeout_ns(s, f), TIMEOUT_CLOSING_NS);
        // Closing, not yet closed: the backend's FIN is not acknowledged.
        assert_eq!(f & FLAG_CLOSED, 0);
        let (s, f) = advance(s, f, O, TCP_ACK);
        assert_eq!((s, f & FLAG_CLOSED), (STATE_TCP_CLOSING, FLAG_CLOSED));
    }

    /// (state, flags) after `packets`, each (direction, TCP flags), on a
    /// source-NATed flow opened by a SYN.
    fn snat_flow_after(packets: &[(u8, u8)]) -> (u8, u8) {
        let mut sf = (initial_state(PROTO_TCP, TCP_SYN), FLAG_SOURCE_NAT);
        for &(direction, tcp_flags) in packets {
            sf = advance(sf.0, sf.1, direction, tcp_flags);
        }
        sf
    }

    const OPEN: [(u8, u8); 3] = [(R, TCP_SYN | TCP_ACK), (O, TCP_ACK), (O, TCP_ACK)];
    const S: u64 = 1_000_000_000;

    #[test]
    fn a_source_nat_port_rests_after_the_client_closed_first() {
        let mut packets = OPEN.to_vec();
        packets.extend([(O, TCP_FIN | TCP_ACK), (R, TCP_FIN | TCP_ACK), (O, TCP_ACK)]);
        let (s, f) = snat_flow_after(&packets);
        assert_eq!(f & (FLAG_CLOSED | FLAG_BACKEND_CLOSED_FIRST), FLAG_CLOSED);
        let closed_at = 100 * S;
        let expires = closed_at + timeout_ns(s, f);
        assert_eq!(timeout_ns(s, f), TIMEOUT_CLOSING_NS);
        let reusable = |now| snat_tuple_reusable(s, f, expires, now, PROTO_TCP);
        assert!(!reusable(closed_at), "the last ACK may still be on its way");
        assert!(!reusable(closed_at + SNAT_PORT_REST_NS - 1));
        assert!(reusable(closed_at + SNAT_PORT_REST_NS));
        // Under pressure, the shorter rest.
        let pressed =
            |now| snat_tuple_reusable_after(s, f, expires, now, PROTO_TCP, SNAT_PORT_REST_MIN_NS);
        assert!(!pressed(closed_at + SNAT_PORT_REST_MIN_NS - 1));
        assert!(pressed(closed_at + SNAT_PORT_REST_MIN_NS));
        // TIME_WAIT is never shortened.
        let tw = f | FLAG_BACKEND_CLOSED_FIRST;
        let tw_expires = closed_at + timeout_ns(s, tw);
        assert!(!snat_tuple_reusable_after(
            s,
            tw,
            tw_expires,
            closed_at + 30 * S,
            PROTO_TCP,
            SNAT_PORT_REST_MIN_NS
        ));
    }

    #[test]
    fn a_source_nat_port_waits_out_the_backends_time_wait() {
        let mut packets = OPEN.to_vec();
        packets.extend([(R, TCP_FIN | TCP_ACK), (O, TCP_FIN | TCP_ACK), (R, TCP_ACK)]);
        let (s, f) = snat_flow_after(&packets);
        assert_eq!(
            f & (FLAG_CLOSED | FLAG_BACKEND_CLOSED_FIRST),
            FLAG_CLOSED | FLAG_BACKEND_CLOSED_FIRST
        );
        assert_eq!(timeout_ns(s, f), TIMEOUT_TIME_WAIT_NS);
        let closed_at = 100 * S;
        let expires = closed_at + timeout_ns(s, f);
        let reusable = |now| snat_tuple_reusable(s, f, expires, now, PROTO_TCP);
        assert!(!reusable(closed_at + 30 * S));
        assert!(reusable(expires + 1), "TIME_WAIT is over");
        // Without source NAT the tuple is the client's: no reason to keep it.
        let (s, f) = snat_flow_after(&packets);
        assert_eq!(timeout_ns(s, f & !FLAG_SOURCE_NAT), TIMEOUT_CLOSING_NS);
    }

    #[test]
    fn a_reset_ends_the_backends_time_wait() {
        let mut packets = OPEN.to_vec();
        packets.extend([(R, TCP_FIN | TCP_ACK), (O, TCP_RST)]);
        let (s, f) = snat_flow_after(&packets);
        assert_eq!(f & (FLAG_CLOSED | FLAG_BACKEND_CLOSED_FIRST), FLAG_CLOSED);
        let at = 100 * S;
        let expires = at + timeout_ns(s, f);
        assert!(!snat_tuple_reusable(s, f, expires, at, PROTO_TCP));
        assert!(snat_tuple_reusable(
            s,
            f,
            expires,
            at + SNAT_PORT_REST_NS,
            PROTO_TCP
        ));
    }

    #[test]
    fn open_flows_and_udp_keep_their_port_until_they_expire() {
        let (s, f) = snat_flow_after(&OPEN);
        let expires = 100 * S + timeout_ns(s, f);
        assert!(!snat_tuple_reusable(
            s,
            f,
            expires,
            100 * S + 3600 * S,
            PROTO_TCP
        ));
        assert!(snat_tuple_reusable(s, f, expires, expires + 1, PROTO_TCP));
        let udp_expires = 100 * S + TIMEOUT_UDP_NS;
        let udp =
            |now| snat_tuple_reusable(STATE_UDP, FLAG_SOURCE_NAT, udp_expires, now, PROTO_UDP);
        assert!(!udp(udp_expires - 1));
        assert!(udp(udp_expires + 1));
    }

    #[test]
    fn inspect_labels_say_what_holds_a_port() {
        let mut packets = OPEN.to_vec();
        assert_eq!(state_label(snat_flow_after(&packets).0, 0), "ESTABLISHED");
        packets.extend([(R, TCP_FIN | TCP_ACK), (O, TCP_FIN | TCP_ACK)]);
        let (s, f) = snat_flow_after(&packets);
        assert_eq!(state_label(s, f), "CLOSING");
        packets.push((R, TCP_ACK));
        let (s, f) = snat_flow_after(&packets);
        assert_eq!(state_label(s, f), "CLOSED_TIME_WAIT");
        // Without source NAT the tuple is the client's: plainly closed.
        assert_eq!(state_label(s, f & !FLAG_SOURCE_NAT), "CLOSED");
        packets.push((O, TCP_RST));
        let (s, f) = snat_flow_after(&packets);
        assert_eq!(state_label(s, f), "CLOSED");
    }

    #[test]
    fn a_reset_closes_at_once() {
        let s = initial_state(PROTO_TCP, TCP_SYN);
        let (s, f) = advance(s, 0, R, TCP_RST | TCP_ACK);
        assert_eq!((s, f & FLAG_CLOSED), (STATE_TCP_CLOSING, FLAG_CLOSED));
    }

    #[test]
    fn rst_closes_from_either_side() {
        assert_eq!(
            advance(STATE_TCP_ESTABLISHED, 0, O, TCP_RST).0,
            STATE_TCP_CLOSING
        );
        assert_eq!(
            advance(STATE_TCP_SYN_SENT, 0, R, TCP_RST | TCP_ACK).0,
            STATE_TCP_CLOSING
        );
    }

    #[test]
    fn syn_sent_waits_for_a_reply() {
        // A retransmitted SYN does not establish the flow.
        assert_eq!(
            advance(STATE_TCP_SYN_SENT, 0, O, TCP_SYN).0,
            STATE_TCP_SYN_SENT
        );
        assert_eq!(timeout_ns(STATE_TCP_SYN_SENT, 0), TIMEOUT_SYN_SENT_NS);
    }

    #[test]
    fn mid_stream_pickup_is_established() {
        assert_eq!(initial_state(PROTO_TCP, TCP_ACK), STATE_TCP_ESTABLISHED);
        assert_eq!(initial_state(PROTO_UDP, 0), STATE_UDP);
    }

    #[test]
    fn udp_only_records_replies() {
        assert_eq!(advance(STATE_UDP, 0, O, 0xff), (STATE_UDP, 0));
        assert_eq!(advance(STATE_UDP, 0, R, 0), (STATE_UDP, FLAG_SEEN_REPLY));
        assert_eq!(timeout_ns(STATE_UDP, FLAG_SOURCE_NAT), TIMEOUT_UDP_NS);
    }

    #[test]
    fn a_syn_ack_on_a_closed_flow_is_someone_else() {
        assert!(!reply_matches(
            STATE_TCP_CLOSING,
            false,
            PROTO_TCP,
            TCP_SYN | TCP_ACK
        ));
        assert!(reply_matches(
            STATE_TCP_CLOSING,
            false,
            PROTO_TCP,
            TCP_FIN | TCP_ACK
        ));
        assert!(reply_matches(
            STATE_TCP_ESTABLISHED,
            false,
            PROTO_TCP,
            TCP_SYN | TCP_ACK
        ));
        assert!(!reply_matches(STATE_UDP, true, PROTO_UDP, 0));
    }

    #[test]
    fn new_syn_reopens_a_closing_flow_only() {
        assert!(starts_new_flow(
            STATE_TCP_CLOSING,
            false,
            PROTO_TCP,
            TCP_SYN
        ));
        assert!(!starts_new_flow(
            STATE_TCP_CLOSING,
            false,
            PROTO_TCP,
            TCP_ACK
        ));
        assert!(!starts_new_flow(
            STATE_TCP_ESTABLISHED,
            false,
            PROTO_TCP,
            TCP_SYN
        ));
        assert!(starts_new_flow(
            STATE_TCP_ESTABLISHED,
            true,
            PROTO_TCP,
            TCP_ACK
        ));
        assert!(!starts_new_flow(STATE_UDP, false, PROTO_UDP, 0));
    }
}
