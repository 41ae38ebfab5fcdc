//! Header parsing with direct packet access. Only what translation needs is
//! read; nothing here writes.
use aya_ebpf::programs::TcContext;
use ferry_common::{
    PROTO_ICMP, PROTO_TCP, PROTO_UDP,
    trace::{TRACE_MARK, TRACE_PRIORITY},
};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
/// The IPv4 flags+offset field: more fragments follow...
const FRAG_MORE: u16 = 0x2000;
/// ...and the fragment's offset (in 8-byte units).
const FRAG_OFFSET_MASK: u16 = 0x1fff;
/// Ethernet + the longest IPv4 header + a TCP header without options.
pub const MAX_PARSED_HEADERS: u32 = (ETH_HLEN + 60 + 20) as u32;

/// A TCP or UDP packet over IPv4, as far as translation is concerned.
pub struct L4Packet {
    /// Offset of the L4 header (Ethernet + IPv4 header with options).
    pub l4_off: usize,
    pub src_addr: [u8; 4],
    pub dst_addr: [u8; 4],
    /// Host byte order.
    pub src_port: u16,
    /// Host byte order.
    pub dst_port: u16,
    pub protocol: u8,
    /// TCP flag byte (0 for UDP).
    pub tcp_flags: u8,
    /// IPv4 header length in bytes (20..=60).
    pub ihl_bytes: usize,
    /// IPv4 identification field, host order.
    pub ip_id: u16,
    /// The first fragment of a fragmented datagram (offset 0, more
    /// fragments): it carries the ports for the datagram's other fragments.
    pub first_fragment: bool,
    /// A trace run (`ferry_common::trace`): decide as for a real packet,
    /// write no map.
    pub dry_run: bool,
    /// A new flow of this packet is reported to `ferry-agent monitor`
    /// (`monitor::new_flow`) while a monitor asks for flows.
    pub reports_flows: bool,
}

impl L4Packet {
    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        if self.protocol == PROTO_TCP {
            self.l4_off + 16
        } else {
            self.l4_off + 6
        }
    }
}

/// A fragment other than the first of an IPv4 datagram: the fields that
/// name its datagram.
pub struct LaterFragment {
    pub src_addr: [u8; 4],
    pub dst_addr: [u8; 4],
    /// IPv4 identification field, host order.
    pub ip_id: u16,
    pub protocol: u8,
}

pub enum Parsed {
    L4(L4Packet),
    NotIpv4,
    /// ICMP, not a fragment: an error about a Service flow's packet is
    /// translated (`icmp_error`), anything else is like `OtherIpv4`.
    /// Carries the destination address.
    Icmp([u8; 4]),
    /// IPv4 but neither TCP, UDP nor ICMP: nothing to translate. Carries
    /// the destination address.
    OtherIpv4([u8; 4]),
    /// A fragment after the first: no L4 header.
    Fragment(LaterFragment),
    MalformedIpv4,
    TruncatedL4,
}

/// The packet's bytes as direct packet access sees them: [start, end), and
/// the whole packet's length (an skb may hold more than its linear part).
#[derive(Clone, Copy)]
pub struct Frame {
    pub start: usize,
    pub end: usize,
    pub len: usize,
}

impl Frame {
    #[inline(always)]
    pub fn of_tc(ctx: &TcContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
            len: ctx.len() as usize,
        }
    }

    /// N bytes at `off`, if they are inside the frame.
    #[inline(always)]
    pub fn bytes_at<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        if self.start + off + N > self.end {
            return None;
        }
        // SAFETY: bounds checked against the end just above.
        Some(unsafe { core::ptr::read_unaligned((self.start + off) as *const [u8; N]) })
    }

    /// Write N bytes at `off`, if they are inside the frame.
    #[inline(always)]
    pub fn store<const N: usize>(&self, off: usize, bytes: [u8; N]) -> Option<()> {
        if self.start + off + N > self.end {
            return None;
        }
        // SAFETY: bounds checked against the end just above; the program
        // owns the packet while it runs.
        unsafe { core::ptr::write_unaligned((self.start + off) as *mut [u8; N], bytes) };
        Some(())
    }
}

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Parsed {
    pull_headers(ctx);
    parse_frame(&Frame::of_tc(ctx), false, false)
}

/// `parse`, for the tc hooks' TCP/UDP path, which honours trace runs
/// (`L4Packet::dry_run`) and reports new flows to the monitor.
#[inline(always)]
pub fn parse_traced(ctx: &TcContext, traced: bool) -> Parsed {
    pull_headers(ctx);
    parse_frame(&Frame::of_tc(ctx), traced, true)
}

/// Is this skb a trace run's (`ferry_common::trace`)?
#[inline(always)]
pub fn is_trace(ctx: &TcContext) -> bool {
    // SAFETY: reading fields of our own skb.
    let (mark, priority) = unsafe { ((*ctx.skb.skb).mark, (*ctx.skb.skb).priority) };
    mark == TRACE_MARK && priority == TRACE_PRIORITY
}

/// Headers of a non-linear skb may sit outside the linear area that direct
/// packet access sees: pull them in (a no-op when already there).
#[inline(always)]
fn pull_headers(ctx: &TcContext) {
    let want = if ctx.len() < MAX_PARSED_HEADERS {
        ctx.len()
    } else {
        MAX_PARSED_HEADERS
    };
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        let _ = ctx.pull_data(want);
    }
}

/// IPv4, ICMP, not a fragment: what `parse` makes `Parsed::Icmp` of (or
/// `Parsed::MalformedIpv4`, with a bad header). A look at three fields and
/// nothing kept, so a hook can send ICMP down a path of its own before its
/// frame holds a parsed packet.
#[inline(always)]
pub fn is_icmp(ctx: &TcContext) -> bool {
    pull_headers(ctx);
    let frame = Frame::of_tc(ctx);
    let (Some(eth_type), Some(ip)) = (frame.bytes_at::<2>(12), frame.bytes_at::<20>(ETH_HLEN))
    else {
        return false;
    };
    u16::from_be_bytes(eth_type) == ETH_P_IP
        && ip[9] == PROTO_ICMP
        && u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff == 0
}

/// The source address of an IPv4 packet (None for other ethertypes, and
/// for a header too short to hold one, which `parse` drops as malformed).
#[inline(always)]
pub fn ipv4_source(ctx: &TcContext) -> Option<[u8; 4]> {
    pull_headers(ctx);
    let frame = Frame::of_tc(ctx);
    if u16::from_be_bytes(frame.bytes_at::<2>(12)?) != ETH_P_IP {
        return None;
    }
    frame.bytes_at::<4>(ETH_HLEN + 12)
}

/// Parse the headers of `frame` (tc after pulling, or XDP); `dry_run` and
/// `reports_flows`: see `L4Packet`.
#[inline(always)]
pub fn parse_frame(frame: &Frame, dry_run: bool, reports_flows: bool) -> Parsed {
    let Some(eth_type) = frame.bytes_at::<2>(12) else {
        return Parsed::NotIpv4;
    };
    if u16::from_be_bytes(eth_type) != ETH_P_IP {
        return Parsed::NotIpv4;
    }
    let Some(ip) = frame.bytes_at::<20>(ETH_HLEN) else {
        return Parsed::MalformedIpv4;
    };
    if ip[0] >> 4 != 4 {
        return Parsed::MalformedIpv4;
    }
    let ihl_bytes = ((ip[0] & 0x0f) as usize) << 2;
    let total_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if ihl_bytes < 20 || total_len < ihl_bytes || ETH_HLEN + total_len > frame.len {
        return Parsed::MalformedIpv4;
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    let src_addr = [ip[12], ip[13], ip[14], ip[15]];
    let dst_addr = [ip[16], ip[17], ip[18], ip[19]];
    let ip_id = u16::from_be_bytes([ip[4], ip[5]]);
    let protocol = ip[9];
    // Only the first fragment (offset 0) carries the L4 header.
    if frag & FRAG_OFFSET_MASK != 0 {
        return Parsed::Fragment(LaterFragment {
            src_addr,
            dst_addr,
            ip_id,
            protocol,
        });
    }
    if protocol == PROTO_ICMP {
        return Parsed::Icmp(dst_addr);
    }
    if protocol != PROTO_TCP && protocol != PROTO_UDP {
        return Parsed::OtherIpv4(dst_addr);
    }
    let l4_off = ETH_HLEN + ihl_bytes;
    // The ports lead both headers; TCP's flags follow at byte 13.
    let (header, header_len) = if protocol == PROTO_TCP {
        let Some(tcp) = frame.bytes_at::<20>(l4_off) else {
            return Parsed::TruncatedL4;
        };
        ([tcp[0], tcp[1], tcp[2], tcp[3], tcp[13]], 20)
    } else {
        let Some(udp) = frame.bytes_at::<8>(l4_off) else {
            return Parsed::TruncatedL4;
        };
        ([udp[0], udp[1], udp[2], udp[3], 0], 8)
    };
    if total_len - ihl_bytes < header_len {
        return Parsed::TruncatedL4;
    }
    Parsed::L4(L4Packet {
        l4_off,
        src_addr,
        dst_addr,
        src_port: u16::from_be_bytes([header[0], header[1]]),
        dst_port: u16::from_be_bytes([header[2], header[3]]),
        protocol,
        tcp_flags: header[4],
        ihl_bytes,
        ip_id,
        first_fragment: frag & FRAG_MORE != 0,
        dry_run,
        reports_flows,
    })
}
