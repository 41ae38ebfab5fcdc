//! Frames for the fuzz: well-formed packets of the world's flows and of
//! everything around them (new flows, strays, the service range, ICMP
//! echo and errors quoting flows' packets, other protocols, fragments,
//! frames that are not IPv4, noise), then some of them mutated (bit flips,
//! truncation, trailing bytes, length fields that lie, IHL and version
//! garbage, another protocol, fragment bits, VLAN tags, an address or port
//! swapped for an interesting one), their checksums fixed afterwards half
//! the time so that a mutation reaches past the first checksum a receiver
//! would check. Everything is drawn from one seeded PRNG (fastrand's
//! wyrand), so a seed gives the same frames for the same flows.
use std::net::Ipv4Addr;

use fastrand::Rng;

use super::{
    Via,
    check::{ETH_HLEN, Hook, PROTO_ICMP, PROTO_TCP, PROTO_UDP, ones_sum},
    world::{
        EXTERNAL_CLIENTS, Flow, LOCAL_PODS, NODE, REMOTE_PODS, ROUTERS, Reach, UNALLOCATED, World,
        via_for_sender,
    },
};
use crate::packet::{
    self, L4, Packet, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, icmp_error, next_hop_mtu,
};

/// What one draw produced: frames to send in order, and how they were made.
pub struct Burst {
    pub template: &'static str,
    pub frames: Vec<(Vec<u8>, Via)>,
    pub mutated: bool,
}

pub struct Gen {
    pub rng: Rng,
}

type End = (Ipv4Addr, u16);

const TEMPLATES: &[(&str, u32)] = &[
    ("flow request", 12),
    ("flow reply", 12),
    ("ICMP error to a flow's client", 8),
    ("ICMP error to a flow's backend", 6),
    ("new flow", 10),
    ("stray TCP/UDP", 8),
    ("service range", 4),
    ("ICMP", 5),
    ("other protocol", 3),
    ("fragments", 6),
    ("not IPv4", 5),
    ("noise", 3),
];

impl Gen {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Rng::with_seed(seed),
        }
    }

    fn chance(&mut self, percent: u32) -> bool {
        self.rng.u32(0..100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.rng.usize(..items.len())]
    }

    /// An address from the world's vocabulary, or any.
    fn addr(&mut self, world: &World) -> Ipv4Addr {
        match self.rng.u32(0..12) {
            0 | 1 => self.pick(&LOCAL_PODS).0,
            2 => self.pick(&REMOTE_PODS),
            3 | 4 => self.pick(&world.frontends).addr,
            5 => NODE,
            6 => self.pick(&ROUTERS),
            7 => self.pick(&EXTERNAL_CLIENTS),
            8 => UNALLOCATED,
            9 => self.pick(&[
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::BROADCAST,
                Ipv4Addr::new(224, 0, 0, 1),
                Ipv4Addr::LOCALHOST,
            ]),
            _ => Ipv4Addr::from(self.rng.u32(..)),
        }
    }

    fn port(&mut self, world: &World) -> u16 {
        match self.rng.u32(0..8) {
            0 | 1 => self.pick(&world.frontends).port,
            2 => self.pick(&[8080, 5353, 8443, 8000]),
            3 => self.rng.u16(61_000..=65_535),
            4 => self.pick(&[0, 1, 65_535]),
            _ => self.rng.u16(..),
        }
    }

    fn tcp_flags(&mut self) -> u8 {
        match self.rng.u32(0..9) {
            0 => TCP_SYN,
            1 => TCP_SYN | TCP_ACK,
            2 | 3 => TCP_ACK,
            4 => TCP_ACK | TCP_PSH,
            5 => TCP_FIN | TCP_ACK,
            6 => TCP_RST,
            7 => TCP_RST | TCP_ACK,
            _ => self.rng.u8(..),
        }
    }

    fn payload(&mut self) -> Vec<u8> {
        let len = if self.chance(90) {
            self.rng.usize(0..=64)
        } else {
            self.rng.usize(65..=700)
        };
        let mut p = vec![0; len];
        self.rng.fill(&mut p);
        p
    }

    /// A TCP or UDP packet of `protocol` from `src` to `dst`.
    fn l4(&mut self, protocol: u8, src: End, dst: End) -> Packet {
        let payload = self.payload();
        let mut p = if protocol == PROTO_TCP {
            Packet::tcp(src, dst, self.tcp_flags(), &payload)
        } else {
            let p = Packet::udp(src, dst, &payload);
            if self.chance(15) {
                p.zero_udp_checksum()
            } else {
                p
            }
        };
        p.ident = self.rng.u16(..);
        if self.chance(20) {
            p.frag = 0;
        }
        p.ttl = self.rng.u8(1..);
        p
    }

    /// IPv4 options, padded to 4 bytes: well-formed ones or garbage.
    fn options(&mut self) -> Vec<u8> {
        let mut o = match self.rng.u32(0..4) {
            0 => vec![1, 1, 1, 0],
            // Record route, room for one address.
            1 => vec![7, 7, 4, 0, 0, 0, 0],
            // Router alert.
            2 => vec![148, 4, 0, 0],
            _ => {
                let mut g = vec![0; 4 * self.rng.usize(1..=10)];
                self.rng.fill(&mut g);
                g
            }
        };
        while o.len() % 4 != 0 {
            o.push(0);
        }
        o
    }

    fn maybe_options(&mut self, p: &mut Packet) {
        if self.chance(10) {
            p.options = self.options();
        }
    }

    pub fn burst(&mut self, world: &World) -> Burst {
        let total: u32 = TEMPLATES.iter().map(|(_, w)| w).sum();
        let mut draw = self.rng.u32(0..total);
        let template = TEMPLATES
            .iter()
            .find(|(_, w)| {
                if draw < *w {
                    true
                } else {
                    draw -= w;
                    false
                }
            })
            .expect("a template")
            .0;
        let mut frames = match template {
            "flow request" | "flow reply" => {
                let f = self.flow(world);
                let mut p = if template == "flow request" {
                    self.l4(f.protocol, f.client, f.frontend)
                } else {
                    self.l4(f.protocol, f.backend, f.client_as)
                };
                self.maybe_options(&mut p);
                let via = if template == "flow request" {
                    f.client_via
                } else {
                    f.backend_via
                };
                vec![(p.bytes(), via)]
            }
            "ICMP error to a flow's client" => {
                let f = self.flow(world);
                // The request as the backend got it.
                let quoted = self.l4(f.protocol, f.client_as, f.backend);
                let from = self.error_sender(world, f.backend.0);
                let via = if from == f.backend.0 {
                    f.backend_via
                } else {
                    via_for_sender(from)
                };
                vec![(self.icmp_error(from, quoted).bytes(), via)]
            }
            "ICMP error to a flow's backend" => {
                let f = self.flow(world);
                // The reply as the client got it.
                let quoted = self.l4(f.protocol, f.frontend, f.client);
                let from = self.error_sender(world, f.client.0);
                let via = if from == f.client.0 {
                    f.client_via
                } else {
                    via_for_sender(from)
                };
                vec![(self.icmp_error(from, quoted).bytes(), via)]
            }
            "new flow" => {
                let fe = self.pick(&world.frontends);
                let client = match fe.reach {
                    Reach::Pods => self.pick(&LOCAL_PODS).0,
                    Reach::Outside => self.pick(&EXTERNAL_CLIENTS),
                    Reach::Both if self.rng.bool() => self.pick(&LOCAL_PODS).0,
                    Reach::Both => self.pick(&EXTERNAL_CLIENTS),
                };
                let protocol = if self.chance(90) {
                    fe.protocol
                } else {
                    PROTO_TCP + PROTO_UDP - fe.protocol
                };
                let client = (client, self.rng.u16(1024..));
                let mut p = self.l4(protocol, client, (fe.addr, fe.port));
                if protocol == PROTO_TCP && self.chance(70) {
                    p = p.with_tcp_flags(TCP_SYN);
                }
                self.maybe_options(&mut p);
                vec![(p.bytes(), via_for_sender(client.0))]
            }
            "stray TCP/UDP" => {
                let src = (self.addr(world), self.port(world));
                let dst = (self.addr(world), self.port(world));
                let protocol = self.pick(&[PROTO_TCP, PROTO_UDP]);
                let mut p = self.l4(protocol, src, dst);
                self.maybe_options(&mut p);
                vec![(p.bytes(), via_for_sender(src.0))]
            }
            "service range" => {
                let client = (self.pick(&LOCAL_PODS).0, self.rng.u16(1024..));
                let cluster_ips: Vec<Ipv4Addr> = world
                    .frontends
                    .iter()
                    .filter(|f| f.reach == Reach::Pods)
                    .map(|f| f.addr)
                    .collect();
                let dst = if cluster_ips.is_empty() || self.rng.bool() {
                    UNALLOCATED
                } else {
                    self.pick(&cluster_ips)
                };
                let p = match self.rng.u32(0..3) {
                    0 => Packet::icmp_echo(client.0, dst),
                    n => {
                        let port = self.port(world);
                        let protocol = if n == 1 { PROTO_TCP } else { PROTO_UDP };
                        self.l4(protocol, client, (dst, port))
                    }
                };
                vec![(p.bytes(), Via::Pod)]
            }
            "ICMP" => {
                let (src, dst) = (self.addr(world), self.addr(world));
                let p = if self.chance(40) {
                    Packet::icmp_echo(src, dst)
                } else if self.chance(50) {
                    // An error about some stray packet.
                    let protocol = self.pick(&[PROTO_TCP, PROTO_UDP]);
                    let from = (dst, self.port(world));
                    let to = (self.addr(world), self.port(world));
                    let quoted = self.l4(protocol, from, to);
                    self.icmp_error(src, quoted)
                } else {
                    let mut rest = vec![0; self.rng.usize(0..80)];
                    self.rng.fill(&mut rest);
                    Packet {
                        l4: L4::Icmp {
                            kind: self.rng.u8(..20),
                            code: self.rng.u8(..16),
                            rest,
                        },
                        ..Packet::icmp_echo(src, dst)
                    }
                };
                vec![(p.bytes(), via_for_sender(src))]
            }
            "other protocol" => {
                let src = self.addr(world);
                let mut frame = Packet::icmp_echo(src, self.addr(world)).bytes();
                let any = self.rng.u8(..);
                frame[ETH_HLEN + 9] = self.pick(&[2, 4, 41, 47, 50, 132, 255, any]);
                fix_checksums(&mut frame);
                vec![(frame, via_for_sender(src))]
            }
            "fragments" => self.fragments(world),
            "not IPv4" => vec![(self.not_ipv4(world), self.any_via())],
            _ => {
                let mut frame = vec![0; self.rng.usize(0..=100)];
                self.rng.fill(&mut frame);
                if frame.len() >= 15 && self.rng.bool() {
                    frame[12..15].copy_from_slice(&[0x08, 0x00, 0x45]);
                }
                vec![(frame, self.any_via())]
            }
        };
        let mut mutated = false;
        for (frame, via) in &mut frames {
            if self.chance(35) {
                mutated = true;
                for _ in 0..self.rng.usize(1..=3) {
                    self.mutate(frame, world);
                }
                if self.rng.bool() {
                    fix_checksums(frame);
                }
            }
            if self.chance(8) {
                *via = self.any_via();
            }
        }
        Burst {
            template,
            frames,
            mutated,
        }
    }

    fn any_via(&mut self) -> Via {
        match self.rng.u32(0..5) {
            0 => Via::Pod,
            1 => Via::Network,
            n => Via::One(Hook::ALL[n as usize - 2]),
        }
    }

    fn flow(&mut self, world: &World) -> Flow {
        self.pick(&world.flows)
    }

    /// Who sends an error about a packet for `end`: `end` itself, a
    /// router, or anyone.
    fn error_sender(&mut self, world: &World, end: Ipv4Addr) -> Ipv4Addr {
        match self.rng.u32(0..10) {
            0..6 => end,
            6..9 => self.pick(&ROUTERS),
            _ => self.addr(world),
        }
    }

    /// An ICMP error quoting `quoted` (options sometimes), as much of it as
    /// RFC 792 asks, or a TCP header, or all, or anything in between.
    fn icmp_error(&mut self, from: Ipv4Addr, mut quoted: Packet) -> Packet {
        if self.chance(15) {
            quoted.options = self.options();
        }
        if self.chance(5) {
            // A datagram's first fragment: it quotes the ports too.
            quoted.frag = packet::FRAG_MORE;
        }
        let full = quoted.bytes().len() - ETH_HLEN - 20 - quoted.options.len();
        let l4_bytes = match self.rng.u32(0..4) {
            0 => 8,
            1 => 20,
            2 => full,
            _ => self.rng.usize(0..=full),
        }
        .min(full);
        let (kind, code) = match self.rng.u32(0..5) {
            0 => (packet::ICMP_DEST_UNREACH, packet::ICMP_FRAG_NEEDED),
            1 => (packet::ICMP_TIME_EXCEEDED, self.rng.u8(0..2)),
            2 => (12, 0),
            _ => (packet::ICMP_DEST_UNREACH, self.rng.u8(0..16)),
        };
        let word = if (kind, code) == (packet::ICMP_DEST_UNREACH, packet::ICMP_FRAG_NEEDED) {
            next_hop_mtu(self.rng.u16(68..=1500))
        } else {
            [0; 4]
        };
        icmp_error(from, &quoted, (kind, code), word, l4_bytes)
    }

    /// One datagram cut into fragments: a flow's (either way) or a stray
    /// one, sent in order, first then shuffled, or without its first.
    fn fragments(&mut self, world: &World) -> Vec<(Vec<u8>, Via)> {
        let (protocol, src, dst, via) = if self.chance(70) {
            let f = self.flow(world);
            if self.rng.bool() {
                (f.protocol, f.client, f.frontend, f.client_via)
            } else {
                (f.protocol, f.backend, f.client_as, f.backend_via)
            }
        } else {
            let src = (self.addr(world), self.port(world));
            let protocol = self.pick(&[PROTO_TCP, PROTO_UDP]);
            (
                protocol,
                src,
                (self.addr(world), self.port(world)),
                via_for_sender(src.0),
            )
        };
        let mut payload = vec![0; self.rng.usize(40..=1200)];
        self.rng.fill(&mut payload);
        let mut p = if protocol == PROTO_TCP {
            Packet::tcp(src, dst, TCP_ACK | TCP_PSH, &payload)
        } else {
            Packet::udp(src, dst, &payload)
        };
        p.ident = self.rng.u16(..);
        self.maybe_options(&mut p);
        let l4_len = payload.len() + if protocol == PROTO_TCP { 20 } else { 8 };
        // At most a dozen fragments or so.
        let units = (l4_len - 1) / 8;
        let chunk = 8 * self.rng.usize((units / 12).max(1)..=units);
        let mut frames = p.fragments(chunk);
        match self.rng.u32(0..10) {
            0..6 => {}
            6..8 => self.rng.shuffle(&mut frames[1..]),
            _ => {
                frames.remove(0);
                self.rng.shuffle(&mut frames);
            }
        }
        frames.into_iter().map(|f| (f, via)).collect()
    }

    fn not_ipv4(&mut self, world: &World) -> Vec<u8> {
        let src = (self.addr(world), self.port(world));
        let dst = (self.addr(world), self.port(world));
        let ipv4 = self.l4(PROTO_TCP, src, dst).bytes();
        match self.rng.u32(0..6) {
            0 => packet::arp_request(),
            1 | 2 => {
                // A VLAN tag (or two) in front of an IPv4 packet.
                let mut f = ipv4[..12].to_vec();
                let tpid: &[u8] = if self.rng.bool() {
                    &[0x81, 0x00]
                } else {
                    &[0x88, 0xa8, 0, 5, 0x81, 0x00]
                };
                f.extend_from_slice(tpid);
                f.extend_from_slice(&self.rng.u16(..4096).to_be_bytes());
                f.extend_from_slice(&ipv4[12..]);
                f
            }
            3 => {
                // IPv6 carrying the same TCP segment.
                let mut f = ipv4[..12].to_vec();
                f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
                let seg = &ipv4[ETH_HLEN + 20..];
                f.extend_from_slice(&(seg.len() as u16).to_be_bytes());
                f.extend_from_slice(&[PROTO_TCP, 64]);
                let mut addrs = [0u8; 32];
                self.rng.fill(&mut addrs);
                f.extend_from_slice(&addrs);
                f.extend_from_slice(seg);
                f
            }
            _ => {
                let mut f = ipv4;
                let ethertype = self.pick(&[0x88cc, 0x0806, 0x8035, 0x0042, 0x05ff, 0xffff]);
                f[12..14].copy_from_slice(&u16::to_be_bytes(ethertype));
                f
            }
        }
    }

    /// One mutation of `f`.
    fn mutate(&mut self, f: &mut Vec<u8>, world: &World) {
        let ip = ETH_HLEN;
        let l4 = ip + f.get(ip).map_or(20, |b| usize::from(b & 0x0f) * 4);
        match self.rng.u32(0..16) {
            0 | 1 => {
                for _ in 0..self.rng.usize(1..=8) {
                    if !f.is_empty() {
                        let at = self.rng.usize(..f.len());
                        f[at] ^= 1 << self.rng.u32(0..8);
                    }
                }
            }
            2 => {
                // Bit flips in the headers.
                let end = f.len().min(ip + 68);
                if end > 0 {
                    let at = self.rng.usize(..end);
                    f[at] ^= 1 << self.rng.u32(0..8);
                }
            }
            3 | 4 => {
                let len = self.rng.usize(0..=f.len());
                f.truncate(len);
            }
            5 => {
                let mut tail = vec![0; self.rng.usize(1..=64)];
                self.rng.fill(&mut tail);
                f.extend_from_slice(&tail);
            }
            6 => {
                // The total length lies.
                let len = f.len().saturating_sub(ip) as i32;
                let lie = match self.rng.u32(0..3) {
                    0 => len + self.rng.i32(-40..=40),
                    1 => self.rng.i32(0..=60),
                    _ => self.rng.i32(0..=65_535),
                };
                put16(f, ip + 2, lie.clamp(0, 65_535) as u16);
            }
            7 => {
                if let Some(b) = f.get_mut(ip) {
                    *b = (*b & 0xf0) | self.rng.u8(0..16);
                }
            }
            8 => {
                if let Some(b) = f.get_mut(ip) {
                    *b = (*b & 0x0f) | (self.rng.u8(0..16) << 4);
                }
            }
            9 => {
                let any = self.rng.u8(..);
                let p = self.pick(&[PROTO_ICMP, PROTO_TCP, PROTO_UDP, any]);
                if let Some(b) = f.get_mut(ip + 9) {
                    *b = p;
                }
            }
            10 => {
                // The L4 header's own length lies: TCP data offset, UDP length.
                if f.get(ip + 9) == Some(&PROTO_TCP) {
                    if let Some(b) = f.get_mut(l4 + 12) {
                        *b = (self.rng.u8(0..16) << 4) | (*b & 0x0f);
                    }
                } else {
                    put16(f, l4 + 4, self.rng.u16(..));
                }
            }
            11 => {
                // Fragment bits.
                let v = match self.rng.u32(0..3) {
                    0 => 0x2000,
                    1 => self.rng.u16(1..0x2000),
                    _ => self.rng.u16(..),
                };
                put16(f, ip + 6, v);
            }
            12 => {
                // An interesting address in the IPv4 header or a quote.
                let a = self.addr(world).octets();
                let at = self.pick(&[ip + 12, ip + 16, l4 + 8 + 12, l4 + 8 + 16]);
                if f.len() >= at + 4 {
                    f[at..at + 4].copy_from_slice(&a);
                }
            }
            13 => {
                let p = self.port(world);
                let at = self.pick(&[l4, l4 + 2]);
                put16(f, at, p);
            }
            14 => {
                // An ICMP error's quote: its IHL, protocol or fragment field.
                let q = l4 + 8;
                match self.rng.u32(0..3) {
                    0 => {
                        if let Some(b) = f.get_mut(q) {
                            *b = self.rng.u8(..);
                        }
                    }
                    1 => {
                        let p = self.pick(&[PROTO_TCP, PROTO_UDP, PROTO_ICMP]);
                        if let Some(b) = f.get_mut(q + 9) {
                            *b = p;
                        }
                    }
                    _ => put16(f, q + 6, self.rng.u16(..)),
                }
            }
            _ => {
                let len = self.rng.usize(0..=ETH_HLEN + 20);
                f.truncate(len);
            }
        }
    }
}

fn put16(f: &mut [u8], at: usize, v: u16) {
    if f.len() >= at + 2 {
        f[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
}

/// Write `sum`'s checksum at `at`, over `region` of `f` (with the field
/// zeroed) plus `extra`.
fn set_checksum(f: &mut [u8], at: usize, region: std::ops::Range<usize>, extra: &[u8]) {
    f[at..at + 2].copy_from_slice(&[0, 0]);
    let c = !ones_sum(&[extra, &f[region]]);
    f[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Recompute the checksums a receiver checks first, as far as the frame's
/// headers (true or not) say where they are: the IPv4 header's, an ICMP
/// error's quoted header's, then the L4 one's.
pub fn fix_checksums(f: &mut [u8]) {
    let ip = ETH_HLEN;
    if f.len() < ip + 20 || f[12..14] != [0x08, 0x00] {
        return;
    }
    let ihl = usize::from(f[ip] & 0x0f) * 4;
    if ihl < 20 || f.len() < ip + ihl {
        return;
    }
    set_checksum(f, ip + 10, ip..ip + ihl, &[]);
    let end = (ip + usize::from(u16::from_be_bytes([f[ip + 2], f[ip + 3]]))).min(f.len());
    let l4 = ip + ihl;
    if end <= l4 || u16::from_be_bytes([f[ip + 6], f[ip + 7]]) & 0x3fff != 0 {
        return;
    }
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&f[ip + 12..ip + 20]);
    pseudo[9] = f[ip + 9];
    pseudo[10..].copy_from_slice(&((end - l4) as u16).to_be_bytes());
    match f[ip + 9] {
        PROTO_TCP if end >= l4 + 18 => set_checksum(f, l4 + 16, l4..end, &pseudo),
        PROTO_UDP if end >= l4 + 8 && f[l4 + 6..l4 + 8] != [0, 0] => {
            set_checksum(f, l4 + 6, l4..end, &pseudo);
            if f[l4 + 6..l4 + 8] == [0, 0] {
                f[l4 + 6..l4 + 8].copy_from_slice(&[0xff, 0xff]);
            }
        }
        PROTO_ICMP if end >= l4 + 4 => {
            let q = l4 + 8;
            if end >= q + 20 {
                let q_ihl = usize::from(f[q] & 0x0f) * 4;
                if q_ihl >= 20 && end >= q + q_ihl {
                    set_checksum(f, q + 10, q..q + q_ihl, &[]);
                }
            }
            set_checksum(f, l4 + 2, l4..end, &[]);
        }
        _ => {}
    }
}

/// Packet helpers the harness's builder lacks.
trait WithFlags {
    fn with_tcp_flags(self, flags: u8) -> Self;
}

impl WithFlags for Packet {
    fn with_tcp_flags(mut self, new: u8) -> Self {
        if let L4::Tcp { flags, .. } = &mut self.l4 {
            *flags = new;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::check::{Class, classify};

    #[test]
    fn fixed_checksums_verify() {
        let mut p = Packet::udp(
            (Ipv4Addr::new(10, 0, 0, 1), 1),
            (Ipv4Addr::new(10, 0, 0, 2), 2),
            b"abc",
        )
        .bytes();
        p[ETH_HLEN + 20] = 9; // source port
        assert!(matches!(classify(&p), Class::Ipv4 { flawed: true, .. }));
        fix_checksums(&mut p);
        assert!(matches!(classify(&p), Class::Ipv4 { flawed: false, .. }));
    }

    #[test]
    fn a_seed_gives_the_same_frames() {
        let world = World {
            frontends: vec![super::super::world::Frontend {
                addr: Ipv4Addr::new(10, 96, 0, 10),
                port: 80,
                protocol: PROTO_TCP,
                reach: Reach::Both,
            }],
            flows: vec![Flow {
                protocol: PROTO_UDP,
                client: (Ipv4Addr::new(10, 244, 1, 5), 1000),
                frontend: (Ipv4Addr::new(10, 96, 0, 10), 80),
                client_as: (Ipv4Addr::new(10, 244, 1, 5), 1000),
                backend: (Ipv4Addr::new(10, 244, 1, 11), 8080),
                client_via: Via::Pod,
                backend_via: Via::Pod,
            }],
        };
        let frames = |seed| {
            let mut g = Gen::new(seed);
            (0..500)
                .flat_map(|_| g.burst(&world).frames)
                .map(|(f, _)| f)
                .collect::<Vec<_>>()
        };
        assert_eq!(frames(7), frames(7));
        assert_ne!(frames(7), frames(8));
    }
}
