//! The host side's own reading of a frame and the checks every program run
//! must pass. Written from the RFCs (791, 768, 793, 792, 1071, 1624), not
//! from the datapath's parser, so that a parser bug cannot hide behind the
//! same reading.
//!
//! A frame is `Malformed` when its IPv4 header is invalid or its TCP/UDP
//! header is cut short: what the README promises is never rewritten. A
//! well-formed frame may still be `flawed` (a wrong checksum, a TCP data
//! offset or UDP length that lies): the datapath does not look, so it may
//! translate it, but only checksum-neutrally — a checksum that was wrong
//! stays exactly as wrong, one that was right stays right.
use std::fmt;

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// The packet programs (the cgroup socket programs take no packets).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    FromPod,
    FromNetwork,
    Xdp,
}

impl Hook {
    pub const ALL: [Hook; 3] = [Hook::FromPod, Hook::FromNetwork, Hook::Xdp];

    pub fn name(self) -> &'static str {
        match self {
            Hook::FromPod => "from_pod",
            Hook::FromNetwork => "from_network",
            Hook::Xdp => "xdp_uplink",
        }
    }

    /// The return codes this hook may give.
    pub fn verdicts(self) -> &'static [(u32, &'static str)] {
        match self {
            Hook::FromPod | Hook::FromNetwork => &[
                (TC_ACT_OK, "TC_ACT_OK"),
                (TC_ACT_SHOT, "TC_ACT_SHOT"),
                (TC_ACT_REDIRECT, "TC_ACT_REDIRECT"),
            ],
            Hook::Xdp => &[
                (XDP_PASS, "XDP_PASS"),
                (XDP_TX, "XDP_TX"),
                (XDP_REDIRECT, "XDP_REDIRECT"),
            ],
        }
    }
}

/// Why a frame is malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Malformed {
    HeaderCutShort,
    Version,
    IhlBelow5,
    TotalBelowIhl,
    FrameShorterThanTotal,
    TcpCutShort,
    UdpCutShort,
}

/// What a well-formed IPv4 frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Tcp,
    Udp,
    /// Offset 0 with more fragments to come: the L4 header is here, its
    /// checksum covers bytes that are not.
    TcpFirstFragment,
    UdpFirstFragment,
    LaterFragment,
    /// Destination unreachable, time exceeded or parameter problem quoting
    /// an IPv4 TCP/UDP packet's header and at least its ports.
    IcmpError,
    Icmp,
    OtherProtocol,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// Shorter than an Ethernet header: BPF_PROG_TEST_RUN refuses it.
    TooShort,
    NotIpv4,
    Malformed(Malformed),
    Ipv4 {
        kind: Kind,
        flawed: bool,
    },
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Class::TooShort => write!(f, "shorter than Ethernet"),
            Class::NotIpv4 => write!(f, "not IPv4"),
            Class::Malformed(m) => write!(f, "malformed: {m:?}"),
            Class::Ipv4 { kind, flawed } => {
                write!(f, "{kind:?}")?;
                if *flawed {
                    write!(f, " (flawed)")?;
                }
                Ok(())
            }
        }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The IPv4 header's fields, read from a frame whose header is valid.
#[derive(Clone, Copy, Debug)]
pub struct Ip {
    /// Offset of the IPv4 header in the frame.
    pub at: usize,
    pub ihl: usize,
    pub total: usize,
    pub protocol: u8,
    pub offset: u16,
    pub more: bool,
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

impl Ip {
    /// The header at `at` of `b`, if it is valid and `b` holds its total
    /// length; else why not.
    pub fn read(b: &[u8], at: usize) -> Result<Ip, Malformed> {
        if b.len() < at + 20 {
            return Err(Malformed::HeaderCutShort);
        }
        if b[at] >> 4 != 4 {
            return Err(Malformed::Version);
        }
        let ihl = usize::from(b[at] & 0x0f) * 4;
        if ihl < 20 {
            return Err(Malformed::IhlBelow5);
        }
        let total = usize::from(be16(b, at + 2));
        if total < ihl {
            return Err(Malformed::TotalBelowIhl);
        }
        if at + total > b.len() {
            return Err(Malformed::FrameShorterThanTotal);
        }
        let frag = be16(b, at + 6);
        Ok(Ip {
            at,
            ihl,
            total,
            protocol: b[at + 9],
            offset: frag & 0x1fff,
            more: frag & 0x2000 != 0,
            src: b[at + 12..at + 16].try_into().unwrap(),
            dst: b[at + 16..at + 20].try_into().unwrap(),
        })
    }

    pub fn l4(&self) -> usize {
        self.at + self.ihl
    }

    pub fn end(&self) -> usize {
        self.at + self.total
    }

    pub fn payload_len(&self) -> usize {
        self.total - self.ihl
    }

    /// The TCP/UDP pseudo header with `len` as the L4 length.
    fn pseudo(&self, len: usize) -> [u8; 12] {
        let mut p = [0u8; 12];
        p[..4].copy_from_slice(&self.src);
        p[4..8].copy_from_slice(&self.dst);
        p[9] = self.protocol;
        p[10..].copy_from_slice(&(len as u16).to_be_bytes());
        p
    }
}

/// An ICMP error's quoted packet, as far as the quote holds it.
#[derive(Clone, Copy, Debug)]
pub struct Quote {
    /// The quoted IPv4 header (its fields; `total` as it claims).
    pub ip: QuotedIp,
    /// Offset of the quoted L4 header in the frame.
    pub l4: usize,
    /// Bytes of L4 header and payload the quote holds.
    pub l4_len: usize,
}

#[derive(Clone, Copy, Debug)]
pub struct QuotedIp {
    pub at: usize,
    pub ihl: usize,
    pub protocol: u8,
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

/// The quote of the ICMP error of `ip` in `b`, if the ICMP message is an
/// error quoting an IPv4 TCP/UDP packet that is no later fragment, with at
/// least its ports.
pub fn quote(b: &[u8], ip: &Ip) -> Option<Quote> {
    if ip.protocol != PROTO_ICMP || ip.offset != 0 || ip.more || ip.payload_len() < 8 + 20 {
        return None;
    }
    let icmp = ip.l4();
    if !matches!(
        b[icmp],
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
    ) {
        return None;
    }
    let q = icmp + 8;
    let q_ihl = usize::from(b[q] & 0x0f) * 4;
    let protocol = b[q + 9];
    let quoted = ip.end() - q;
    if b[q] >> 4 != 4
        || q_ihl < 20
        || be16(b, q + 6) & 0x1fff != 0
        || (protocol != PROTO_TCP && protocol != PROTO_UDP)
        || quoted < q_ihl + 8
    {
        return None;
    }
    Some(Quote {
        ip: QuotedIp {
            at: q,
            ihl: q_ihl,
            protocol,
            src: b[q + 12..q + 16].try_into().unwrap(),
            dst: b[q + 16..q + 20].try_into().unwrap(),
        },
        l4: q + q_ihl,
        l4_len: quoted - q_ihl,
    })
}

/// The classification of `b` (an Ethernet frame).
pub fn classify(b: &[u8]) -> Class {
    if b.len() < ETH_HLEN {
        return Class::TooShort;
    }
    if be16(b, 12) != ETH_P_IP {
        return Class::NotIpv4;
    }
    let ip = match Ip::read(b, ETH_HLEN) {
        Ok(ip) => ip,
        Err(m) => return Class::Malformed(m),
    };
    let mut flawed = !verifies(&[&b[ip.at..ip.l4()]]);
    let kind = if ip.offset != 0 {
        Kind::LaterFragment
    } else {
        match ip.protocol {
            PROTO_TCP | PROTO_UDP => {
                let tcp = ip.protocol == PROTO_TCP;
                let header = if tcp { 20 } else { 8 };
                if ip.payload_len() < header {
                    return Class::Malformed(if tcp {
                        Malformed::TcpCutShort
                    } else {
                        Malformed::UdpCutShort
                    });
                }
                let l4 = ip.l4();
                let len = ip.payload_len();
                if tcp {
                    let doff = usize::from(b[l4 + 12] >> 4) * 4;
                    flawed |= doff < 20 || doff > len;
                } else {
                    let ulen = usize::from(be16(b, l4 + 4));
                    // A first fragment's UDP length is the whole datagram's.
                    flawed |= ulen < 8 || if ip.more { ulen < len } else { ulen != len };
                }
                if !ip.more {
                    flawed |= !l4_checksum_ok(b, &ip);
                }
                match (tcp, ip.more) {
                    (true, false) => Kind::Tcp,
                    (false, false) => Kind::Udp,
                    (true, true) => Kind::TcpFirstFragment,
                    (false, true) => Kind::UdpFirstFragment,
                }
            }
            PROTO_ICMP => {
                if !ip.more {
                    flawed |= !verifies(&[&b[ip.l4()..ip.end()]]);
                }
                match quote(b, &ip) {
                    Some(q) => {
                        flawed |= !verifies(&[&b[q.ip.at..q.ip.at + q.ip.ihl]]);
                        Kind::IcmpError
                    }
                    None => Kind::Icmp,
                }
            }
            _ => Kind::OtherProtocol,
        }
    };
    Class::Ipv4 { kind, flawed }
}

/// A whole TCP/UDP datagram's checksum verifies (a UDP checksum of zero
/// means none).
fn l4_checksum_ok(b: &[u8], ip: &Ip) -> bool {
    let l4 = &b[ip.l4()..ip.end()];
    if ip.protocol == PROTO_UDP && be16(l4, 6) == 0 {
        return true;
    }
    verifies(&[&ip.pseudo(l4.len()), l4])
}

/// The one's complement sum of the 16-bit words of `parts`, folded, not
/// inverted (each part starts on a word boundary; an odd tail is padded).
pub fn ones_sum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for part in parts {
        for w in part.chunks(2) {
            sum += u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// A region holding its own checksum verifies: its sum is negative zero.
pub fn verifies(parts: &[&[u8]]) -> bool {
    ones_sum(parts) == 0xffff
}

/// Equal as one's complement numbers (0 and 0xffff are both zero).
fn same_sum(a: u16, b: u16) -> bool {
    a % 0xffff == b % 0xffff
}

/// What a program did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Effect {
    /// TC_ACT_SHOT.
    Dropped,
    /// Left exactly as it came.
    Unchanged,
    /// Only the Ethernet addresses written (delivery to a pod or a next hop).
    MacsOnly,
    /// Addresses, ports and checksums rewritten (translation).
    Rewritten,
    /// Turned into an ICMP port unreachable back to its sender.
    Rejected,
}

/// One program run, as the checks see it.
pub struct Run<'a> {
    pub hook: Hook,
    pub input: &'a [u8],
    pub verdict: u32,
    pub output: &'a [u8],
    /// Names of the outcomes counted during the run, one per packet counted.
    pub counted: &'a [&'static str],
}

/// Every check of one run; the effect, or what is wrong.
pub fn check(run: &Run) -> Result<Effect, String> {
    let Run {
        hook,
        input,
        verdict,
        output,
        counted,
    } = *run;
    if !hook.verdicts().iter().any(|(v, _)| *v == verdict) {
        return Err(format!(
            "return code {verdict} is not an action of {}",
            hook.name()
        ));
    }
    let class = classify(input);
    // The counting policy: a packet is counted once by the hook that
    // settles it; XDP counts only what it sends, the uplink's tc only what
    // is ferry's.
    let uncounted_ok = match hook {
        Hook::FromPod => false,
        Hook::FromNetwork => true,
        Hook::Xdp => verdict == XDP_PASS,
    };
    match counted {
        [] if !uncounted_ok => return Err("no outcome counted".into()),
        [] => {
            if output != input || (hook != Hook::Xdp && verdict != TC_ACT_OK) {
                return Err(format!(
                    "not counted (not ferry's), yet verdict {verdict} and {}",
                    if output == input {
                        "unchanged"
                    } else {
                        "changed"
                    }
                ));
            }
            return Ok(Effect::Unchanged);
        }
        [one] => {
            if hook == Hook::Xdp && verdict == XDP_PASS {
                return Err(format!("XDP handed the frame to tc but counted {one}"));
            }
            if one.starts_with("drop_") != (hook != Hook::Xdp && verdict == TC_ACT_SHOT) {
                return Err(format!("outcome {one} with verdict {verdict}"));
            }
        }
        more => return Err(format!("counted more than once: {more:?}")),
    }
    let outcome = counted[0];
    if hook != Hook::Xdp && verdict == TC_ACT_SHOT {
        return Ok(Effect::Dropped);
    }
    if output == input {
        return Ok(Effect::Unchanged);
    }
    if matches!(class, Class::Malformed(_) | Class::NotIpv4) {
        return Err(format!("{class} frame changed (outcome {outcome})"));
    }
    if outcome.starts_with("rejected") {
        if hook == Hook::Xdp || verdict != TC_ACT_REDIRECT {
            return Err(format!("{outcome} with verdict {verdict}"));
        }
        check_reject(input, output)?;
        return Ok(Effect::Rejected);
    }
    if output.len() != input.len() {
        return Err(format!(
            "length changed {} -> {} (outcome {outcome})",
            input.len(),
            output.len()
        ));
    }
    let changed: Vec<usize> = (0..input.len())
        .filter(|&i| input[i] != output[i])
        .collect();
    if changed.iter().all(|&i| i < 12) {
        return Ok(Effect::MacsOnly);
    }
    if hook == Hook::Xdp && verdict == XDP_PASS {
        return Err("XDP handed a rewritten frame to tc".into());
    }
    if outcome.starts_with("passed") {
        return Err(format!("rewritten, yet counted {outcome}"));
    }
    let Class::Ipv4 { kind, .. } = class else {
        return Err(format!("{class} frame changed (outcome {outcome})"));
    };
    let ip = Ip::read(input, ETH_HLEN).expect("classified as IPv4");
    let allowed = allowed_offsets(input, &ip, kind)
        .ok_or_else(|| format!("{kind:?} rewritten, but ferry translates no such packet"))?;
    let stray: Vec<usize> = changed
        .iter()
        .copied()
        .filter(|i| !allowed.iter().any(|r| r.contains(i)))
        .collect();
    if !stray.is_empty() {
        return Err(format!(
            "{kind:?}: bytes changed outside the fields NAT may write, at offsets {stray:?}"
        ));
    }
    let out_ip = Ip::read(output, ETH_HLEN).map_err(|m| format!("output IPv4 header: {m:?}"))?;
    checked_sum(
        "IPv4 header checksum",
        &[&input[ip.at..ip.l4()]],
        &[&output[ip.at..ip.l4()]],
    )?;
    match kind {
        Kind::Tcp | Kind::Udp | Kind::TcpFirstFragment | Kind::UdpFirstFragment => {
            let whole = matches!(kind, Kind::Tcp | Kind::Udp);
            check_l4(input, &ip, output, &out_ip, whole)?;
        }
        Kind::IcmpError => check_icmp_error(input, &ip, output, &out_ip)?,
        // Only the IPv4 header's addresses: its checksum, checked above.
        Kind::LaterFragment => {}
        Kind::Icmp | Kind::OtherProtocol => unreachable!("no offsets allowed"),
    }
    Ok(Effect::Rewritten)
}

/// The byte ranges a translation of `kind` may write: the MACs, the IPv4
/// addresses and checksum, and per kind the ports and L4 checksum, or an
/// ICMP error's checksum and its quote's addresses, ports and checksums.
fn allowed_offsets(b: &[u8], ip: &Ip, kind: Kind) -> Option<Vec<std::ops::Range<usize>>> {
    let mut r = vec![0..12, ip.at + 10..ip.at + 20];
    let l4 = ip.l4();
    match kind {
        Kind::Tcp | Kind::TcpFirstFragment => r.extend([l4..l4 + 4, l4 + 16..l4 + 18]),
        Kind::Udp | Kind::UdpFirstFragment => r.extend([l4..l4 + 4, l4 + 6..l4 + 8]),
        Kind::LaterFragment => {}
        Kind::IcmpError => {
            let q = quote(b, ip)?;
            let csum = if q.ip.protocol == PROTO_TCP { 16 } else { 6 };
            r.extend([
                l4 + 2..l4 + 4,
                q.ip.at + 10..q.ip.at + 20,
                q.l4..q.l4 + 4,
                q.l4 + csum..(q.l4 + csum + 2).min(ip.end()),
            ]);
        }
        Kind::Icmp | Kind::OtherProtocol => return None,
    }
    Some(r)
}

/// A rewritten region's checksum: as wrong as before (neutral), and right
/// if it was right.
fn checked_sum(what: &str, before: &[&[u8]], after: &[&[u8]]) -> Result<(), String> {
    let (a, b) = (ones_sum(before), ones_sum(after));
    if verifies(before) && !verifies(after) {
        return Err(format!(
            "{what} was valid and is not after the rewrite (sum {b:#06x})"
        ));
    }
    if !same_sum(a, b) {
        return Err(format!(
            "{what} not updated neutrally: sum {a:#06x} before, {b:#06x} after"
        ));
    }
    Ok(())
}

/// A translated TCP/UDP packet (or first fragment: only the bytes here,
/// so neutrality is all that can be checked).
fn check_l4(input: &[u8], ip: &Ip, output: &[u8], out_ip: &Ip, whole: bool) -> Result<(), String> {
    let l4 = ip.l4();
    let (seg_in, seg_out) = (&input[l4..ip.end()], &output[l4..ip.end()]);
    let len = seg_in.len();
    if ip.protocol == PROTO_UDP {
        let (c_in, c_out) = (be16(seg_in, 6), be16(seg_out, 6));
        if c_in == 0 || c_out == 0 {
            return if c_in == c_out {
                Ok(())
            } else {
                Err(format!(
                    "UDP checksum {c_in:#06x} became {c_out:#06x} (zero means none)"
                ))
            };
        }
    }
    let what = if whole {
        "L4 checksum"
    } else {
        "L4 checksum (first fragment)"
    };
    checked_sum(
        what,
        &[&ip.pseudo(len), seg_in],
        &[&out_ip.pseudo(len), seg_out],
    )
}

/// A translated ICMP error: its checksums (outer IPv4, ICMP, the quoted
/// IPv4 header, the quoted L4 checksum when quoted) and what it says: it
/// goes to the quoted packet's sender, and a router keeps its address.
fn check_icmp_error(input: &[u8], ip: &Ip, output: &[u8], out_ip: &Ip) -> Result<(), String> {
    let (icmp, end) = (ip.l4(), ip.end());
    checked_sum("ICMP checksum", &[&input[icmp..end]], &[&output[icmp..end]])?;
    let q = quote(input, ip).expect("an ICMP error");
    let q_out = quote(output, out_ip).ok_or("the quote no longer parses")?;
    let qh = q.ip.at..q.ip.at + q.ip.ihl;
    checked_sum(
        "quoted IPv4 header checksum",
        &[&input[qh.clone()]],
        &[&output[qh]],
    )?;
    let csum_at = if q.ip.protocol == PROTO_TCP { 16 } else { 6 };
    if q.l4_len >= csum_at + 2 {
        let (seg_in, seg_out) = (&input[q.l4..end], &output[q.l4..end]);
        let (c_in, c_out) = (be16(seg_in, csum_at), be16(seg_out, csum_at));
        if q.ip.protocol == PROTO_UDP && (c_in == 0 || c_out == 0) {
            if c_in != c_out {
                return Err(format!(
                    "quoted UDP checksum {c_in:#06x} became {c_out:#06x} (zero means none)"
                ));
            }
        } else {
            let pseudo = |qi: &QuotedIp| {
                let mut p = [0u8; 12];
                p[..4].copy_from_slice(&qi.src);
                p[4..8].copy_from_slice(&qi.dst);
                p[9] = qi.protocol;
                p
            };
            // The quote is cut short: only neutrality can be checked.
            checked_sum(
                "quoted L4 checksum",
                &[&pseudo(&q.ip), seg_in],
                &[&pseudo(&q_out.ip), seg_out],
            )?;
        }
    }
    if out_ip.dst != q_out.ip.src {
        return Err(format!(
            "the error goes to {:?}, not to the quoted packet's sender {:?}",
            out_ip.dst, q_out.ip.src
        ));
    }
    if ip.src != q.ip.dst && out_ip.src != ip.src {
        return Err(format!(
            "a router's error ({:?}) now claims to come from {:?}",
            ip.src, out_ip.src
        ));
    }
    Ok(())
}

/// `output` is the ICMP port unreachable answering `input`: from its
/// destination to its source, quoting its IPv4 header and 8 bytes, every
/// checksum right, the MACs swapped.
fn check_reject(input: &[u8], output: &[u8]) -> Result<(), String> {
    let ip = Ip::read(input, ETH_HLEN).map_err(|m| format!("rejected a malformed frame: {m:?}"))?;
    if !matches!(ip.protocol, PROTO_TCP | PROTO_UDP) || ip.offset != 0 {
        return Err("rejected a frame that is no TCP/UDP packet with ports".into());
    }
    let quote_len = ip.ihl + 8;
    let want_len = ETH_HLEN + 20 + 8 + quote_len;
    if output.len() != want_len {
        return Err(format!(
            "reject is {} bytes, expected {want_len}",
            output.len()
        ));
    }
    if output[..6] != input[6..12] || output[6..12] != input[..6] || be16(output, 12) != ETH_P_IP {
        return Err("reject: Ethernet header is not the input's, MACs swapped".into());
    }
    let out = Ip::read(output, ETH_HLEN).map_err(|m| format!("reject's IPv4 header: {m:?}"))?;
    if out.ihl != 20 || out.total != 20 + 8 + quote_len || out.protocol != PROTO_ICMP {
        return Err(format!("reject's IPv4 header: {out:?}"));
    }
    if out.src != ip.dst || out.dst != ip.src {
        return Err("reject is not from the destination back to the source".into());
    }
    if !verifies(&[&output[ETH_HLEN..ETH_HLEN + 20]]) {
        return Err("reject's IPv4 header checksum".into());
    }
    let icmp = &output[ETH_HLEN + 20..];
    if icmp[0] != ICMP_DEST_UNREACH || icmp[1] != ICMP_PORT_UNREACH || !verifies(&[icmp]) {
        return Err("reject: not a port unreachable with a valid checksum".into());
    }
    if icmp[8..] != input[ETH_HLEN..ETH_HLEN + quote_len] {
        return Err("reject does not quote the header and 8 bytes as they came".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::packet::{Packet, TCP_SYN, icmp_error, port_unreachable_for};

    const C: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 1, 5), 40000);
    const VIP: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 0, 10), 80);
    const POD: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 1, 11), 8080);

    fn run<'a>(input: &'a [u8], output: &'a [u8], counted: &'a [&'static str]) -> Run<'a> {
        Run {
            hook: Hook::FromPod,
            input,
            verdict: TC_ACT_OK,
            output,
            counted,
        }
    }

    #[test]
    fn a_translation_built_from_scratch_passes() {
        for p in [
            Packet::tcp(C, VIP, TCP_SYN, b"x"),
            Packet::udp(C, VIP, b"query"),
            Packet::udp(C, VIP, b"query").zero_udp_checksum(),
        ] {
            let (i, o) = (p.bytes(), p.clone().with_dst(POD.0, POD.1).bytes());
            assert_eq!(
                classify(&i),
                Class::Ipv4 {
                    kind: if p.protocol() == PROTO_TCP {
                        Kind::Tcp
                    } else {
                        Kind::Udp
                    },
                    flawed: false
                }
            );
            assert_eq!(check(&run(&i, &o, &["translated"])), Ok(Effect::Rewritten));
        }
    }

    #[test]
    fn a_wrong_checksum_is_caught() {
        let p = Packet::tcp(C, VIP, TCP_SYN, b"x");
        let i = p.bytes();
        let mut o = p.with_dst(POD.0, POD.1).bytes();
        o[14 + 20 + 16] ^= 1;
        let err = check(&run(&i, &o, &["translated"])).unwrap_err();
        assert!(err.contains("L4 checksum"), "{err}");
        // And outside the fields NAT may write.
        let mut o2 = i.clone();
        o2[14 + 20 + 8] ^= 1;
        let err = check(&run(&i, &o2, &["translated"])).unwrap_err();
        assert!(err.contains("outside"), "{err}");
    }

    #[test]
    fn a_lost_udp_checksum_is_caught() {
        let p = Packet::udp(C, VIP, b"query");
        let i = p.bytes();
        let mut o = p.with_dst(POD.0, POD.1).bytes();
        o[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
        assert!(check(&run(&i, &o, &["translated"])).is_err());
    }

    #[test]
    fn malformed_frames_must_come_back_as_they_came() {
        let mut i = Packet::tcp(C, VIP, TCP_SYN, b"").bytes();
        i[14] = 0x44; // IHL 4
        assert_eq!(classify(&i), Class::Malformed(Malformed::IhlBelow5));
        let mut o = i.clone();
        o[33] ^= 1;
        assert!(check(&run(&i, &o, &["translated"])).is_err());
        assert_eq!(check(&run(&i, &i, &["passed"])), Ok(Effect::Unchanged));
    }

    #[test]
    fn a_reject_is_checked_whole() {
        let p = Packet::udp(C, VIP, b"query");
        let i = p.bytes();
        let o = port_unreachable_for(&p);
        let r = Run {
            verdict: TC_ACT_REDIRECT,
            ..run(&i, &o, &["rejected_no_endpoints"])
        };
        assert_eq!(check(&r), Ok(Effect::Rejected));
        let mut bad = o.clone();
        *bad.last_mut().unwrap() ^= 1;
        let r = Run {
            verdict: TC_ACT_REDIRECT,
            ..run(&i, &bad, &["rejected_no_endpoints"])
        };
        assert!(check(&r).is_err());
    }

    #[test]
    fn an_icmp_error_translated_back_passes() {
        let request = Packet::tcp(C, POD, TCP_SYN, b"");
        let as_sent = Packet::tcp(C, VIP, TCP_SYN, b"");
        let from_pod = icmp_error(POD.0, &request, (3, 3), [0; 4], 20).bytes();
        let translated = icmp_error(VIP.0, &as_sent, (3, 3), [0; 4], 20).bytes();
        assert_eq!(
            classify(&from_pod),
            Class::Ipv4 {
                kind: Kind::IcmpError,
                flawed: false
            }
        );
        let r = run(&from_pod, &translated, &["translated_icmp_error"]);
        assert_eq!(check(&r), Ok(Effect::Rewritten));
        // A router's error must keep its address.
        let router = Ipv4Addr::new(192, 168, 77, 1);
        let from_router = icmp_error(router, &request, (3, 3), [0; 4], 20).bytes();
        let r = run(&from_router, &translated, &["translated_icmp_error"]);
        assert!(check(&r).unwrap_err().contains("router"));
    }

    #[test]
    fn counting_follows_the_policy() {
        let i = Packet::tcp(C, VIP, TCP_SYN, b"").bytes();
        assert!(check(&run(&i, &i, &[])).is_err(), "from_pod counts all");
        assert!(check(&run(&i, &i, &["passed", "passed"])).is_err());
        assert!(check(&run(&i, &i, &["drop_malformed_ipv4"])).is_err());
        let r = Run {
            hook: Hook::FromNetwork,
            ..run(&i, &i, &[])
        };
        assert_eq!(check(&r), Ok(Effect::Unchanged));
        let r = Run {
            verdict: 5,
            ..run(&i, &i, &["passed"])
        };
        assert!(check(&r).is_err(), "no such tc action");
    }
}
