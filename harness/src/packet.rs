//! Exact packet bytes for the kernel tests and the benchmark, with every
//! checksum computed from scratch (independently of the datapath's
//! incremental updates, so a wrong incremental update cannot hide behind the
//! same arithmetic).
use std::net::Ipv4Addr;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x05];
pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        src_port: u16,
        dst_port: u16,
        flags: u8,
        payload: Vec<u8>,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
        payload: Vec<u8>,
        /// Send with checksum 0 ("no checksum", legal for UDP over IPv4).
        zero_checksum: bool,
    },
    Icmp {
        kind: u8,
        code: u8,
        /// Bytes after the type/code/checksum fields.
        rest: Vec<u8>,
    },
}

#[derive(Clone, Debug)]
pub struct Packet {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub ident: u16,
    /// IPv4 options, padded by the caller to a multiple of 4 bytes.
    pub options: Vec<u8>,
    /// Flags + fragment offset field (host order).
    pub frag: u16,
    pub l4: L4,
}

/// RFC 1071 checksum over `data` (odd length padded with zero).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl Packet {
    fn base(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), l4: L4) -> Self {
        let _ = (src.1, dst.1);
        Self {
            src_mac: CLIENT_MAC,
            dst_mac: HOST_MAC,
            src: src.0,
            dst: dst.0,
            ttl: 64,
            ident: 0x1234,
            options: Vec::new(),
            frag: 0x4000, // DF
            l4,
        }
    }

    pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8, payload: &[u8]) -> Self {
        Self::base(
            src,
            dst,
            L4::Tcp {
                src_port: src.1,
                dst_port: dst.1,
                flags,
                payload: payload.to_vec(),
            },
        )
    }

    pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Self {
        Self::base(
            src,
            dst,
            L4::Udp {
                src_port: src.1,
                dst_port: dst.1,
                payload: payload.to_vec(),
                zero_checksum: false,
            },
        )
    }

    pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        Self::base(
            (src, 0),
            (dst, 0),
            L4::Icmp {
                kind: 8,
                code: 0,
                rest: vec![0, 1, 0, 1, b'p', b'i', b'n', b'g'],
            },
        )
    }

    /// The same packet with the source rewritten.
    pub fn with_src(mut self, addr: Ipv4Addr, port: u16) -> Self {
        self.src = addr;
        match &mut self.l4 {
            L4::Tcp { src_port, .. } | L4::Udp { src_port, .. } => *src_port = port,
            L4::Icmp { .. } => {}
        }
        self
    }

    /// The same packet with the destination rewritten.
    pub fn with_dst(mut self, addr: Ipv4Addr, port: u16) -> Self {
        self.dst = addr;
        match &mut self.l4 {
            L4::Tcp { dst_port, .. } | L4::Udp { dst_port, .. } => *dst_port = port,
            L4::Icmp { .. } => {}
        }
        self
    }

    /// The same packet with new Ethernet addresses.
    pub fn with_macs(mut self, dst: [u8; 6], src: [u8; 6]) -> Self {
        self.dst_mac = dst;
        self.src_mac = src;
        self
    }

    pub fn zero_udp_checksum(mut self) -> Self {
        if let L4::Udp { zero_checksum, .. } = &mut self.l4 {
            *zero_checksum = true;
        }
        self
    }

    pub fn protocol(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Icmp { .. } => 1,
        }
    }

    fn l4_bytes(&self) -> Vec<u8> {
        let pseudo = |len: usize| {
            let mut p = Vec::with_capacity(12);
            p.extend_from_slice(&self.src.octets());
            p.extend_from_slice(&self.dst.octets());
            p.push(0);
            p.push(self.protocol());
            p.extend_from_slice(&(len as u16).to_be_bytes());
            p
        };
        match &self.l4 {
            L4::Tcp {
                src_port,
                dst_port,
                flags,
                payload,
            } => {
                let mut h = Vec::with_capacity(20 + payload.len());
                h.extend_from_slice(&src_port.to_be_bytes());
                h.extend_from_slice(&dst_port.to_be_bytes());
                h.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // seq
                let ack = if flags & TCP_ACK != 0 { 0x0a0b_0c0d } else { 0 };
                h.extend_from_slice(&u32::to_be_bytes(ack));
                h.push(5 << 4);
                h.push(*flags);
                h.extend_from_slice(&64240u16.to_be_bytes()); // window
                h.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
                h.extend_from_slice(payload);
                let mut sum_over = pseudo(h.len());
                sum_over.extend_from_slice(&h);
                let c = checksum(&sum_over);
                h[16..18].copy_from_slice(&c.to_be_bytes());
                h
            }
            L4::Udp {
                src_port,
                dst_port,
                payload,
                zero_checksum,
            } => {
                let len = 8 + payload.len();
                let mut h = Vec::with_capacity(len);
                h.extend_from_slice(&src_port.to_be_bytes());
                h.extend_from_slice(&dst_port.to_be_bytes());
                h.extend_from_slice(&(len as u16).to_be_bytes());
                h.extend_from_slice(&[0, 0]);
                h.extend_from_slice(payload);
                if !zero_checksum {
                    let mut sum_over = pseudo(len);
                    sum_over.extend_from_slice(&h);
                    let mut c = checksum(&sum_over);
                    if c == 0 {
                        c = 0xffff;
                    }
                    h[6..8].copy_from_slice(&c.to_be_bytes());
                }
                h
            }
            L4::Icmp { kind, code, rest } => {
                let mut h = vec![*kind, *code, 0, 0];
                h.extend_from_slice(rest);
                let c = checksum(&h);
                h[2..4].copy_from_slice(&c.to_be_bytes());
                h
            }
        }
    }

    /// The IPv4 header alone, checksummed.
    pub fn ip_header(&self, l4_len: usize) -> Vec<u8> {
        let ihl = 20 + self.options.len();
        assert!(
            ihl.is_multiple_of(4) && ihl <= 60,
            "options must pad to 4 bytes"
        );
        let mut ip = Vec::with_capacity(ihl);
        ip.push(0x40 | (ihl / 4) as u8);
        ip.push(0);
        ip.extend_from_slice(&((ihl + l4_len) as u16).to_be_bytes());
        ip.extend_from_slice(&self.ident.to_be_bytes());
        ip.extend_from_slice(&self.frag.to_be_bytes());
        ip.push(self.ttl);
        ip.push(self.protocol());
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        ip.extend_from_slice(&self.options);
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip
    }

    /// Ethernet frame bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        self.frame(&self.ip_header(l4.len()), &l4)
    }

    fn frame(&self, ip_header: &[u8], ip_payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(14 + ip_header.len() + ip_payload.len());
        out.extend_from_slice(&self.dst_mac);
        out.extend_from_slice(&self.src_mac);
        out.extend_from_slice(&0x0800u16.to_be_bytes());
        out.extend_from_slice(ip_header);
        out.extend_from_slice(ip_payload);
        out
    }

    /// The datagram (its L4 header and payload, checksummed whole) cut
    /// into IPv4 fragments of `chunk` bytes of IP payload each (the last
    /// one shorter), in order, as Ethernet frames: each with the packet's
    /// IP ID, the more-fragments flag on all but the last, its offset, and
    /// its own header checksum. `chunk` is a multiple of 8, as offsets
    /// count 8-byte units.
    pub fn fragments(&self, chunk: usize) -> Vec<Vec<u8>> {
        assert!(
            chunk > 0 && chunk.is_multiple_of(8),
            "fragment offsets count 8 bytes"
        );
        let l4 = self.l4_bytes();
        assert!(l4.len() > chunk, "the datagram fits one fragment");
        l4.chunks(chunk)
            .enumerate()
            .map(|(i, piece)| {
                let offset = i * chunk;
                let more = offset + piece.len() < l4.len();
                let fragment = Self {
                    frag: if more { FRAG_MORE } else { 0 } | (offset / 8) as u16,
                    ..self.clone()
                };
                self.frame(&fragment.ip_header(piece.len()), piece)
            })
            .collect()
    }
}

/// The IPv4 more-fragments flag (in `Packet::frag`).
pub const FRAG_MORE: u16 = 0x2000;

/// What the datapath must answer for `offending` sent to a frontend without
/// endpoints: ICMP port unreachable from the frontend back to the sender,
/// quoting the offending IPv4 header and the first 8 bytes of its payload,
/// with the MAC addresses swapped.
pub fn port_unreachable_for(offending: &Packet) -> Vec<u8> {
    let original = offending.bytes();
    let ihl = 20 + offending.options.len();
    let quote = original[14..14 + ihl + 8].to_vec();
    let mut rest = vec![0, 0, 0, 0]; // unused + next-hop MTU
    rest.extend_from_slice(&quote);
    let reply = Packet {
        src_mac: offending.dst_mac,
        dst_mac: offending.src_mac,
        src: offending.dst,
        dst: offending.src,
        ttl: 64,
        ident: 0,
        options: Vec::new(),
        frag: 0,
        l4: L4::Icmp {
            kind: 3,
            code: 3,
            rest,
        },
    };
    reply.bytes()
}

pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_PORT_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;
pub const ICMP_TIME_EXCEEDED: u8 = 11;

/// The second word of an ICMP "fragmentation needed" header: unused, then
/// the next-hop MTU.
pub fn next_hop_mtu(mtu: u16) -> [u8; 4] {
    let m = mtu.to_be_bytes();
    [0, 0, m[0], m[1]]
}

/// An ICMP error of `kind`/`code` from `from` to `quoted`'s source, about
/// `quoted` as it was on the wire: its IPv4 header (options included) and
/// the first `l4_bytes` bytes after it, checksums as they were; `word` is
/// the ICMP header's second word (`next_hop_mtu`, or zero).
pub fn icmp_error(
    from: Ipv4Addr,
    quoted: &Packet,
    (kind, code): (u8, u8),
    word: [u8; 4],
    l4_bytes: usize,
) -> Packet {
    let wire = quoted.bytes();
    let ihl = 20 + quoted.options.len();
    let end = (14 + ihl + l4_bytes).min(wire.len());
    let mut rest = word.to_vec();
    rest.extend_from_slice(&wire[14..end]);
    Packet::base((from, 0), (quoted.src, 0), L4::Icmp { kind, code, rest })
}

/// An ARP request frame (not IPv4).
pub fn arp_request() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&[10, 244, 1, 5]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[10, 244, 1, 1]);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 1, 5), 40000);
    const SERVICE: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 0, 10), 80);

    /// The L4 checksum, summed with its pseudo-header, is all ones.
    fn l4_verifies(frame: &[u8]) -> bool {
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        let l4 = &frame[14 + ihl..];
        let mut sum_over = frame[26..34].to_vec();
        sum_over.extend_from_slice(&[0, frame[23]]);
        sum_over.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        sum_over.extend_from_slice(l4);
        checksum(&sum_over) == 0
    }

    #[test]
    fn tcp_frame_layout_and_checksums() {
        let frame = Packet::tcp(CLIENT, SERVICE, TCP_SYN, b"hi").bytes();
        assert_eq!(frame.len(), 14 + 20 + 20 + 2);
        assert_eq!(&frame[0..6], &HOST_MAC);
        assert_eq!(&frame[6..12], &CLIENT_MAC);
        assert_eq!(&frame[12..14], &[0x08, 0x00]);
        assert_eq!(frame[14], 0x45);
        assert_eq!(frame[23], 6);
        assert_eq!(&frame[26..30], &CLIENT.0.octets());
        assert_eq!(&frame[30..34], &SERVICE.0.octets());
        assert_eq!(&frame[34..36], &CLIENT.1.to_be_bytes());
        assert_eq!(&frame[36..38], &SERVICE.1.to_be_bytes());
        assert_eq!(frame[47], TCP_SYN);
        assert_eq!(checksum(&frame[14..34]), 0, "IPv4 header checksum");
        assert!(l4_verifies(&frame), "TCP checksum");
    }

    #[test]
    fn udp_checksum_verifies_or_is_zero() {
        let p = Packet::udp(CLIENT, SERVICE, b"query");
        assert!(l4_verifies(&p.bytes()));
        let zero = p.zero_udp_checksum().bytes();
        assert_eq!(&zero[40..42], &[0, 0]);
    }

    #[test]
    fn options_lengthen_the_header() {
        let mut p = Packet::tcp(CLIENT, SERVICE, TCP_ACK, &[]);
        p.options = vec![1, 1, 1, 0];
        let frame = p.bytes();
        assert_eq!(frame[14], 0x46);
        assert_eq!(checksum(&frame[14..38]), 0);
        assert!(l4_verifies(&frame));
    }

    #[test]
    fn fragments_carry_the_datagram_in_order_with_offsets_and_checksums() {
        let payload: Vec<u8> = (0..100u8).collect();
        let mut p = Packet::udp(CLIENT, SERVICE, &payload);
        p.ident = 0xbeef;
        let whole = p.bytes();
        let frags = p.fragments(48);
        assert_eq!(frags.len(), 3);
        let mut l4 = Vec::new();
        for (i, f) in frags.iter().enumerate() {
            assert_eq!(
                checksum(&f[14..34]),
                0,
                "fragment {i}: IPv4 header checksum"
            );
            assert_eq!(&f[18..20], &[0xbe, 0xef], "fragment {i}: IP ID");
            let field = u16::from_be_bytes([f[20], f[21]]);
            assert_eq!(field & 0x1fff, (i * 48 / 8) as u16, "fragment {i}: offset");
            assert_eq!(
                field & FRAG_MORE != 0,
                i < 2,
                "fragment {i}: more fragments"
            );
            let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
            assert_eq!(total, f.len() - 14, "fragment {i}: total length");
            l4.extend_from_slice(&f[34..]);
        }
        assert_eq!(l4, whole[34..], "the fragments hold the whole datagram");
    }

    #[test]
    fn an_icmp_error_quotes_the_packet_as_sent_with_options_and_mtu() {
        let mut offending = Packet::tcp(CLIENT, SERVICE, TCP_ACK, b"payload");
        offending.options = vec![1, 1, 1, 0];
        let router = Ipv4Addr::new(192, 0, 2, 1);
        let err = icmp_error(
            router,
            &offending,
            (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED),
            next_hop_mtu(1400),
            20,
        );
        let frame = err.bytes();
        let sent = offending.bytes();
        assert_eq!(&frame[26..30], &router.octets());
        assert_eq!(&frame[30..34], &CLIENT.0.octets());
        assert_eq!(&frame[34..36], &[3, 4]);
        assert_eq!(&frame[38..42], &[0, 0, 0x05, 0x78]);
        assert_eq!(&frame[42..], &sent[14..14 + 24 + 20]);
        assert_eq!(checksum(&frame[34..]), 0, "ICMP checksum");
        assert_eq!(checksum(&frame[14..34]), 0, "IPv4 header checksum");
    }

    #[test]
    fn port_unreachable_quotes_header_and_eight_bytes() {
        let offending = Packet::udp(CLIENT, SERVICE, b"query");
        let reply = port_unreachable_for(&offending);
        let sent = offending.bytes();
        assert_eq!(&reply[0..6], &CLIENT_MAC);
        assert_eq!(&reply[26..30], &SERVICE.0.octets());
        assert_eq!(&reply[30..34], &CLIENT.0.octets());
        assert_eq!((reply[34], reply[35]), (3, 3));
        assert_eq!(&reply[42..], &sent[14..14 + 20 + 8]);
        assert_eq!(checksum(&reply[34..]), 0, "ICMP checksum");
    }
}
