//! `ferry-agent trace`: what a tc hook (a pod's veth, or the uplink) does
//! with a packet, asked of the live pinned program. The packet runs through BPF_PROG_TEST_RUN with the
//! trace marker (`ferry_common::trace`), under which the program decides
//! exactly as for a real packet (the same maps, the same code) and writes
//! no map: no conntrack or affinity entry, no fragment record, no counter.
//! It hands its outcome back in the skb's `cb`; the rest of the report is
//! read from the bytes it wrote and from the maps it read.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use aya_obj::programs::XdpAttachType;
use ferry_common::{
    CT_DIR_ORIGINAL, CT_DIR_REPLY, CtKey, PIN_PROG_FROM_NETWORK, PIN_PROG_FROM_POD,
    PIN_PROG_XDP_UPLINK, PROTO_ICMP, PROTO_TCP, PROTO_UDP, SCOPE_CLUSTER_IP, SCOPE_EXTERNAL,
    SCOPE_EXTERNAL_FROM_PODS, ServiceKey, outcome,
    trace::{TRACE_CB_OUTCOME, TRACE_MARK, TRACE_META_LEN, TRACE_OUTCOME_WRITTEN, TRACE_PRIORITY},
};
use serde::Serialize;

use crate::maps::{Conntrack, Endpoints, ServiceTable, monotonic_now_ns};

/// `struct __sk_buff` (include/uapi/linux/bpf.h): its size, and the
/// offsets of the fields a test run's context may set.
pub const SKB_CTX_LEN: usize = 192;
const SKB_MARK: usize = 8;
const SKB_PRIORITY: usize = 32;
const SKB_INGRESS_IFINDEX: usize = 36;
const SKB_IFINDEX: usize = 40;
const SKB_CB: usize = 48;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(
        "{0} is not a pod on this node (no entry in ferry_endpoints): a trace runs on the veth of the pod it comes from; give --from a pod's address (`ferry-agent inspect endpoints`)"
    )]
    NotALocalPod(Ipv4Addr),
    #[error(
        "cannot open the pinned pod program {path}: {source}; is the agent running with this --pin-dir?"
    )]
    Program {
        path: String,
        source: aya::programs::ProgramError,
    },
    #[error(
        "the packet is not IPv4 TCP, UDP or ICMP over Ethernet: ferry's hooks pass anything else as it is"
    )]
    NotTraceable,
    #[error("cannot tell the uplink: {0}")]
    NoUplink(String),
    #[error("the test run failed: {0}; the kernel must allow BPF_PROG_TEST_RUN (root, CAP_BPF)")]
    Run(aya::programs::ProgramError),
    #[error(transparent)]
    Open(#[from] crate::maps::OpenError),
    #[error("reading {what}: {source}")]
    Read {
        what: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn read_err<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> TraceError {
    move |e| TraceError::Read {
        what,
        source: Box::new(e),
    }
}

/// The packet to trace.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pub from: SocketAddrV4,
    pub to: SocketAddrV4,
    pub protocol: u8,
    /// TCP flags (`ferry_common::conntrack::TCP_*`); ignored otherwise.
    pub tcp_flags: u8,
}

/// A test run's context: the trace marker, and the device the packet comes
/// in on.
pub fn trace_context(ifindex: u32) -> [u8; SKB_CTX_LEN] {
    let mut ctx = [0u8; SKB_CTX_LEN];
    ctx[SKB_MARK..SKB_MARK + 4].copy_from_slice(&TRACE_MARK.to_ne_bytes());
    ctx[SKB_PRIORITY..SKB_PRIORITY + 4].copy_from_slice(&TRACE_PRIORITY.to_ne_bytes());
    ctx[SKB_INGRESS_IFINDEX..SKB_INGRESS_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
    ctx[SKB_IFINDEX..SKB_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// `struct xdp_md`'s size.
pub const XDP_CTX_LEN: usize = 24;

/// An XDP trace run's input: the marker as metadata before `frame`, and
/// the context saying so (`ferry_common::trace::TRACE_META_LEN`), the
/// packet arriving on `ifindex` (queue 0).
pub fn xdp_trace_input(frame: &[u8], ifindex: u32) -> (Vec<u8>, [u8; XDP_CTX_LEN]) {
    let mut data = Vec::with_capacity(TRACE_META_LEN + frame.len());
    // Priority first: its top bit is clear, so the first word tells the
    // marker left as it was from an outcome written over it.
    data.extend_from_slice(&TRACE_PRIORITY.to_ne_bytes());
    data.extend_from_slice(&TRACE_MARK.to_ne_bytes());
    data.extend_from_slice(frame);
    let mut ctx = [0u8; XDP_CTX_LEN];
    // data, data_end, data_meta (offsets into the input), ingress_ifindex.
    ctx[0..4].copy_from_slice(&(TRACE_META_LEN as u32).to_ne_bytes());
    ctx[4..8].copy_from_slice(&(data.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    (data, ctx)
}

/// An XDP trace run's output split: the outcome it handed back in the
/// metadata (None: it left the packet to tc), and the frame.
pub fn xdp_trace_output(out: &[u8]) -> (Option<u32>, &[u8]) {
    let Some(word) = out.get(..4) else {
        return (None, out);
    };
    let word = u32::from_ne_bytes(word.try_into().expect("4 bytes"));
    let outcome = (word & TRACE_OUTCOME_WRITTEN != 0).then_some(word & !TRACE_OUTCOME_WRITTEN);
    (outcome, out.get(TRACE_META_LEN..).unwrap_or_default())
}

/// The outcome a trace run left in its context (`outcome::*`), if any.
pub fn traced_outcome(ctx_out: &[u8]) -> Option<u32> {
    let at = SKB_CB + 4 * TRACE_CB_OUTCOME;
    let word = u32::from_ne_bytes(ctx_out.get(at..at + 4)?.try_into().ok()?);
    (word & TRACE_OUTCOME_WRITTEN != 0).then_some(word & !TRACE_OUTCOME_WRITTEN)
}

/// Internet checksum of `data` (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The frame `probe` describes, as the pod would send it: Ethernet from
/// `macs.1` to `macs.0`, IPv4 (TTL 64), then TCP, UDP or an ICMP echo
/// request, every checksum right.
pub fn frame(probe: &Probe, macs: ([u8; 6], [u8; 6])) -> Vec<u8> {
    const PAYLOAD: &[u8] = b"ferry-trace";
    let (src, dst) = (probe.from, probe.to);
    let mut l4 = match probe.protocol {
        PROTO_TCP => {
            let mut tcp = vec![0u8; 20];
            tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
            tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
            tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
            tcp[12] = 5 << 4;
            tcp[13] = probe.tcp_flags;
            tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
            tcp
        }
        PROTO_UDP => {
            let mut udp = vec![0u8; 8];
            udp[0..2].copy_from_slice(&src.port().to_be_bytes());
            udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
            udp[4..6].copy_from_slice(&((8 + PAYLOAD.len()) as u16).to_be_bytes());
            udp.extend_from_slice(PAYLOAD);
            udp
        }
        _ => {
            // Echo request, id 1, sequence 1.
            let mut icmp = vec![8, 0, 0, 0, 0, 1, 0, 1];
            icmp.extend_from_slice(PAYLOAD);
            let sum = checksum(&icmp);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            icmp
        }
    };
    if probe.protocol == PROTO_TCP || probe.protocol == PROTO_UDP {
        let mut pseudo = Vec::with_capacity(12 + l4.len());
        pseudo.extend_from_slice(&src.ip().octets());
        pseudo.extend_from_slice(&dst.ip().octets());
        pseudo.extend_from_slice(&[0, probe.protocol]);
        pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(&l4);
        let sum = checksum(&pseudo);
        let at = if probe.protocol == PROTO_TCP { 16 } else { 6 };
        l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    }
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, probe.protocol, 0, 0];
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&src.ip().octets());
    ip.extend_from_slice(&dst.ip().octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut out = Vec::with_capacity(14 + ip.len() + l4.len());
    out.extend_from_slice(&macs.0);
    out.extend_from_slice(&macs.1);
    out.extend_from_slice(&[0x08, 0x00]);
    out.extend_from_slice(&ip);
    out.extend_from_slice(&l4);
    out
}

/// One header field the program rewrote.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Rewrite {
    pub field: &'static str,
    pub before: String,
    pub after: String,
}

/// The fields of an Ethernet/IPv4 frame a trace reports, by name.
fn fields(frame: &[u8]) -> Vec<(&'static str, String)> {
    let mac = |b: &[u8]| {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let mut out = Vec::new();
    if frame.len() < 34 {
        return out;
    }
    out.push(("eth.dst", mac(&frame[0..6])));
    out.push(("eth.src", mac(&frame[6..12])));
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    out.push(("ip.ttl", frame[22].to_string()));
    out.push(("ip.protocol", frame[23].to_string()));
    out.push((
        "ip.checksum",
        format!("0x{:04x}", u16::from_be_bytes([frame[24], frame[25]])),
    ));
    let addr = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string();
    out.push(("ip.src", addr(&frame[26..30])));
    out.push(("ip.dst", addr(&frame[30..34])));
    let l4 = 14 + ihl;
    let word = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    match frame[23] {
        PROTO_TCP | PROTO_UDP => {
            let csum_at = if frame[23] == PROTO_TCP { 16 } else { 6 };
            if let (Some(s), Some(d), Some(c)) = (word(l4), word(l4 + 2), word(l4 + csum_at)) {
                out.push(("l4.src_port", s.to_string()));
                out.push(("l4.dst_port", d.to_string()));
                out.push(("l4.checksum", format!("0x{c:04x}")));
            }
        }
        PROTO_ICMP => {
            if let (Some(t), Some(c)) = (frame.get(l4), word(l4 + 2)) {
                out.push(("icmp.type", t.to_string()));
                out.push(("icmp.checksum", format!("0x{c:04x}")));
            }
        }
        _ => {}
    }
    out
}

/// Every reported field whose value differs between `before` and `after`.
pub fn rewrites(before: &[u8], after: &[u8]) -> Vec<Rewrite> {
    let after = fields(after);
    fields(before)
        .into_iter()
        .filter_map(|(field, old)| {
            let new = after.iter().find(|(f, _)| *f == field)?.1.clone();
            (new != old).then_some(Rewrite {
                field,
                before: old,
                after: new,
            })
        })
        .collect()
}

/// The frontend a traced packet was addressed to.
#[derive(Debug, Serialize)]
pub struct FrontendMatch {
    /// "namespace/name:port" as the agent named it.
    pub service: String,
    pub frontend: String,
    pub scope: &'static str,
    /// The active backends a new flow is drawn from, slot order.
    pub backends: Vec<String>,
    /// sessionAffinity ClientIP timeout (seconds), 0 without.
    pub affinity_timeout_s: u32,
}

/// What the program did with the packet, and why.
#[derive(Debug, Serialize)]
pub struct TraceReport {
    pub hook: &'static str,
    pub packet: String,
    pub frontend: Option<FrontendMatch>,
    /// "existing flow" / "reply of a tracked flow" / "new flow" / "-".
    pub flow: String,
    /// The backend the packet went to, when it was translated to one.
    pub backend: Option<String>,
    pub outcome: String,
    pub verdict: &'static str,
    pub next_hop: String,
    pub rewrites: Vec<Rewrite>,
}

fn protocol_name(p: u8) -> &'static str {
    match p {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_ICMP => "icmp",
        _ => "?",
    }
}

/// The hook a trace runs through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum On {
    /// The sending pod's veth (`ferry_from_pod`).
    Pod,
    /// The node's uplink, the device with this ifindex (`ferry_from_network`).
    Uplink { ifindex: u32 },
    /// The uplink's XDP program (`ferry_xdp_uplink`), before tc.
    Xdp { ifindex: u32 },
}

/// Run `probe` through the hook `on` pinned under `pin_dir`: on `Pod`, as
/// sent by the local pod `probe.from` through its own veth; on `Uplink`,
/// as arriving from the network.
pub fn trace(pin_dir: &Path, probe: &Probe, on: On) -> Result<TraceReport, TraceError> {
    let input = match on {
        On::Pod => {
            let pod = local_pod(pin_dir, *probe.from.ip())?;
            frame(probe, (pod.host_mac, pod.pod_mac))
        }
        On::Uplink { ifindex } | On::Xdp { ifindex } => {
            frame(probe, (uplink_mac(ifindex), EXTERNAL_MAC))
        }
    };
    run(pin_dir, probe, input, on)
}

/// Run a captured frame (Ethernet, IPv4) through the hook `on`, as
/// `trace` does a described one.
pub fn trace_frame(pin_dir: &Path, input: &[u8], on: On) -> Result<TraceReport, TraceError> {
    let probe = probe_of(input).ok_or(TraceError::NotTraceable)?;
    run(pin_dir, &probe, input.to_vec(), on)
}

/// A source MAC for a described packet from the network (locally
/// administered; the hooks do not look at it).
const EXTERNAL_MAC: [u8; 6] = [0x02, 0xfe, 0x77, 0, 0, 1];

/// The MAC of the device `ifindex`, as a frame for it carries; zeros when
/// it cannot be read (the hooks do not look at it).
fn uplink_mac(ifindex: u32) -> [u8; 6] {
    let mut mac = [0u8; 6];
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: name has IF_NAMESIZE bytes, as if_indextoname requires.
    if unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) }.is_null() {
        return mac;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_string_lossy();
    if let Ok(text) = std::fs::read_to_string(format!("/sys/class/net/{name}/address")) {
        for (byte, hex) in mac.iter_mut().zip(text.trim().split(':')) {
            *byte = u8::from_str_radix(hex, 16).unwrap_or(0);
        }
    }
    mac
}

/// The local pod `addr`'s endpoint record.
fn local_pod(pin_dir: &Path, addr: Ipv4Addr) -> Result<ferry_common::Endpoint, TraceError> {
    Endpoints::open(pin_dir)?
        .get(addr)
        .map_err(read_err("ferry_endpoints"))?
        .ok_or(TraceError::NotALocalPod(addr))
}

/// The packet a frame carries, as a trace reports it: addresses, ports,
/// protocol and TCP flags. None for what is not IPv4 TCP, UDP or ICMP.
pub fn probe_of(frame: &[u8]) -> Option<Probe> {
    if frame.get(12..14)? != [0x08, 0x00] || frame.get(14)? >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let protocol = *frame.get(23)?;
    let addr = |at: usize| -> Option<Ipv4Addr> {
        let b: [u8; 4] = frame.get(at..at + 4)?.try_into().ok()?;
        Some(b.into())
    };
    let (src, dst) = (addr(26)?, addr(30)?);
    let l4 = 14 + ihl;
    let port = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?))
    };
    let (src_port, dst_port, tcp_flags) = match protocol {
        PROTO_TCP => (port(l4)?, port(l4 + 2)?, *frame.get(l4 + 13)?),
        PROTO_UDP => (port(l4)?, port(l4 + 2)?, 0),
        PROTO_ICMP => (0, 0, 0),
        _ => return None,
    };
    Some(Probe {
        from: SocketAddrV4::new(src, src_port),
        to: SocketAddrV4::new(dst, dst_port),
        protocol,
        tcp_flags,
    })
}

/// The uplink's ifindex: `dev`, else the device the agent attached the
/// uplink's program to (its link pinned under `pin_dir`).
pub fn uplink_ifindex(pin_dir: &Path, dev: Option<&str>) -> Result<u32, TraceError> {
    let index = |name: &str| {
        let c = std::ffi::CString::new(name).ok()?;
        // SAFETY: c is a valid C string.
        let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
        (i != 0).then_some(i)
    };
    if let Some(dev) = dev {
        return index(dev).ok_or_else(|| TraceError::NoUplink(format!("no device {dev}")));
    }
    let dir = pin_dir.join(crate::reconcile::system::NET_LINKS_DIR);
    let pins: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with("xdp-") && n != crate::plan::network::VXLAN_DEVICE)
                .collect()
        })
        .unwrap_or_default();
    match pins.as_slice() {
        // bpffs names have '_' for the '.' of a VLAN device's name.
        [pin] => index(pin)
            .or_else(|| index(&pin.replace('_', ".")))
            .ok_or_else(|| TraceError::NoUplink(format!("no device named after the pin {pin}"))),
        [] => Err(TraceError::NoUplink(format!(
            "no uplink program is attached ({} holds no link)",
            dir.display()
        ))),
        _ => Err(TraceError::NoUplink(format!(
            "several uplinks attached ({}); name one with --dev",
            pins.join(", ")
        ))),
    }
}

fn run(pin_dir: &Path, probe: &Probe, input: Vec<u8>, on: On) -> Result<TraceReport, TraceError> {
    let (hook, ran) = match on {
        On::Pod => {
            let ifindex = local_pod(pin_dir, *probe.from.ip())?.ifindex;
            (
                "pod veth (tc ingress, ferry_from_pod)",
                run_tc(pin_dir, PIN_PROG_FROM_POD, ifindex, &input)?,
            )
        }
        On::Uplink { ifindex } => (
            "uplink (tc ingress, ferry_from_network)",
            run_tc(pin_dir, PIN_PROG_FROM_NETWORK, ifindex, &input)?,
        ),
        On::Xdp { ifindex } => (
            "uplink (XDP, ferry_xdp_uplink)",
            run_xdp(pin_dir, ifindex, &input)?,
        ),
    };
    let Ran {
        action,
        out,
        outcome,
    } = ran;
    let frontend = frontend_of(pin_dir, probe, on)?;
    let flow = flow_of(pin_dir, probe, frontend.is_some())?;
    let translated = outcome == Some(outcome::TRANSLATED);
    let backend = translated.then(|| {
        let f = fields(&out);
        let get = |name| f.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
        match (get("ip.dst"), get("l4.dst_port")) {
            (Some(a), Some(p)) => format!("{a}:{p}"),
            (Some(a), None) => a,
            _ => "?".into(),
        }
    });
    let endpoints = Endpoints::open(pin_dir)?;
    let (verdict, next_hop) = match on {
        On::Xdp { .. } => xdp_verdict(action),
        On::Pod | On::Uplink { .. } => {
            let dst = if out.len() >= 34 {
                Ipv4Addr::new(out[30], out[31], out[32], out[33])
            } else {
                *probe.to.ip()
            };
            (
                tc_verdict(action, outcome),
                next_hop(&endpoints, action, dst, outcome)?,
            )
        }
    };
    Ok(TraceReport {
        hook,
        packet: format!(
            "{} {} -> {}{}",
            protocol_name(probe.protocol),
            probe.from,
            probe.to,
            if probe.protocol == PROTO_TCP {
                format!(" flags 0x{:02x}", probe.tcp_flags)
            } else {
                String::new()
            }
        ),
        frontend,
        flow,
        backend,
        outcome: outcome
            .and_then(|o| outcome::NAMES.get(o as usize))
            .map_or_else(|| "-".to_string(), |n| n.to_string()),
        verdict,
        next_hop,
        rewrites: rewrites(&input, &out),
    })
}

/// What a trace run gave: the program's action, the frame it left and the
/// outcome it handed back (None: it wrote none).
#[derive(Debug)]
pub struct Ran {
    pub action: u32,
    pub out: Vec<u8>,
    pub outcome: Option<u32>,
}

/// Run the tc `program` on `input` under the trace marker, as arriving on
/// `ifindex`.
pub fn trace_run_tc(
    program: &SchedClassifier,
    ifindex: u32,
    input: &[u8],
) -> Result<Ran, aya::programs::ProgramError> {
    let ctx_in = trace_context(ifindex);
    let mut ctx_out = [0u8; SKB_CTX_LEN];
    let mut out = vec![0u8; input.len() + 256];
    let result = program.test_run(TestRunOptions {
        data_in: Some(input),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx_in),
        ctx_out: Some(&mut ctx_out),
        ..TestRunOptions::new()
    })?;
    out.truncate(result.data_size_out as usize);
    Ok(Ran {
        action: result.return_value,
        out,
        outcome: traced_outcome(&ctx_out),
    })
}

/// Run the XDP `program` on `input` under the trace marker, as arriving
/// on `ifindex` (whose routes and neighbours its next hop comes from; 0:
/// none).
pub fn trace_run_xdp(
    program: &Xdp,
    ifindex: u32,
    input: &[u8],
) -> Result<Ran, aya::programs::ProgramError> {
    let (data, ctx_in) = xdp_trace_input(input, ifindex);
    let mut out = vec![0u8; data.len() + 256];
    let result = program.test_run(TestRunOptions {
        data_in: Some(&data),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx_in),
        ..TestRunOptions::new()
    })?;
    out.truncate(result.data_size_out as usize);
    let (outcome, frame) = xdp_trace_output(&out);
    Ok(Ran {
        action: result.return_value,
        out: frame.to_vec(),
        outcome,
    })
}

/// Run the pinned tc program `pin` on `input` under the trace marker.
fn run_tc(pin_dir: &Path, pin: &str, ifindex: u32, input: &[u8]) -> Result<Ran, TraceError> {
    let path = pin_dir.join(pin);
    let program = SchedClassifier::from_pin(&path).map_err(|source| TraceError::Program {
        path: path.display().to_string(),
        source,
    })?;
    trace_run_tc(&program, ifindex, input).map_err(TraceError::Run)
}

/// Run the pinned XDP program on `input` under the trace marker.
fn run_xdp(pin_dir: &Path, ifindex: u32, input: &[u8]) -> Result<Ran, TraceError> {
    let path = pin_dir.join(PIN_PROG_XDP_UPLINK);
    let program =
        Xdp::from_pin(&path, XdpAttachType::Interface).map_err(|source| TraceError::Program {
            path: path.display().to_string(),
            source,
        })?;
    trace_run_xdp(&program, ifindex, input).map_err(TraceError::Run)
}

fn tc_verdict(action: u32, outcome: Option<u32>) -> &'static str {
    match (action, outcome) {
        // The uplink hands what is not ferry's to the kernel unjudged.
        (TC_ACT_OK, None) => "pass (not ferry's: the node's own traffic)",
        (TC_ACT_OK, _) => "pass (to the node's stack)",
        (TC_ACT_SHOT, _) => "drop",
        (TC_ACT_REDIRECT, _) => "redirect",
        _ => "other",
    }
}

/// XDP's verdict, and where the packet goes.
fn xdp_verdict(action: u32) -> (&'static str, String) {
    const XDP_PASS: u32 = 2;
    const XDP_TX: u32 = 3;
    const XDP_REDIRECT: u32 = 4;
    match action {
        XDP_PASS => (
            "pass (left to tc)",
            "the uplink's tc program, which settles it: XDP sends only a packet of an external flow to a backend on another node whose neighbour is resolved (`trace --on uplink` shows what tc does)"
                .into(),
        ),
        XDP_TX => (
            "transmit (XDP_TX)",
            "back out of the uplink, towards the backend's node or the client".into(),
        ),
        XDP_REDIRECT => (
            "redirect (XDP)",
            "out of another interface, towards the backend's node or the client".into(),
        ),
        _ => ("other", "-".into()),
    }
}

/// The frontend `probe` is addressed to, as the hook `on` looks it up:
/// the pod's, a ClusterIP, else an external address as pods reach it; the
/// uplink's, an external address (NodePort, LoadBalancer IP, externalIP).
fn frontend_of(pin_dir: &Path, probe: &Probe, on: On) -> Result<Option<FrontendMatch>, TraceError> {
    if probe.protocol != PROTO_TCP && probe.protocol != PROTO_UDP {
        return Ok(None);
    }
    let table = ServiceTable::open(pin_dir)?;
    let scopes: &[(u8, &'static str)] = match on {
        On::Pod => &[
            (SCOPE_CLUSTER_IP, "ClusterIP"),
            (
                SCOPE_EXTERNAL_FROM_PODS,
                "external address (as pods reach it)",
            ),
        ],
        On::Uplink { .. } | On::Xdp { .. } => &[(
            SCOPE_EXTERNAL,
            "external address (NodePort, LoadBalancer IP or externalIP)",
        )],
    };
    for &(scope, scope_name) in scopes {
        let key = ServiceKey {
            addr: probe.to.ip().octets(),
            port: probe.to.port(),
            protocol: probe.protocol,
            scope,
        };
        if table
            .get(&key)
            .map_err(read_err("ferry_services"))?
            .is_none()
        {
            continue;
        }
        let record = table
            .list()
            .map_err(read_err("ferry_services"))?
            .into_iter()
            .find(|r| r.frontend == key);
        if let Some(r) = record {
            return Ok(Some(FrontendMatch {
                service: r.name,
                frontend: format!("{}", probe.to),
                scope: scope_name,
                backends: r
                    .backends
                    .iter()
                    .map(|b| SocketAddrV4::new(b.addr.into(), b.port).to_string())
                    .collect(),
                affinity_timeout_s: r.options.affinity_timeout_s,
            }));
        }
    }
    Ok(None)
}

/// Whether the packet belongs to a live flow in conntrack.
fn flow_of(pin_dir: &Path, probe: &Probe, to_frontend: bool) -> Result<String, TraceError> {
    if probe.protocol != PROTO_TCP && probe.protocol != PROTO_UDP {
        return Ok("-".into());
    }
    let ct = Conntrack::open(pin_dir)?;
    let now = monotonic_now_ns();
    let key = |direction| CtKey {
        src_addr: probe.from.ip().octets(),
        dst_addr: probe.to.ip().octets(),
        src_port: probe.from.port(),
        dst_port: probe.to.port(),
        protocol: probe.protocol,
        direction,
        pad: [0; 2],
    };
    let live = |direction| -> Result<Option<ferry_common::CtEntry>, TraceError> {
        Ok(ct
            .get(&key(direction))
            .map_err(read_err("ferry_conntrack"))?
            .filter(|e| e.expires_ns >= now))
    };
    if let Some(e) = live(CT_DIR_ORIGINAL)? {
        return Ok(format!(
            "existing flow (conntrack) to {}",
            SocketAddrV4::new(e.nat_addr.into(), e.nat_port)
        ));
    }
    if live(CT_DIR_REPLY)?.is_some() {
        return Ok("reply of a tracked flow".into());
    }
    Ok(if to_frontend {
        "new flow".into()
    } else {
        "-".into()
    })
}

/// Where the packet goes after the hook, as its verdict and the maps say.
fn next_hop(
    endpoints: &Endpoints,
    verdict: u32,
    dst: Ipv4Addr,
    outcome: Option<u32>,
) -> Result<String, TraceError> {
    Ok(match verdict {
        TC_ACT_SHOT => "none (dropped)".into(),
        TC_ACT_REDIRECT if outcome == Some(outcome::REJECTED_NO_ENDPOINTS) => {
            "back to the sender (the reject's answer)".into()
        }
        TC_ACT_REDIRECT => match endpoints.get(dst).map_err(read_err("ferry_endpoints"))? {
            Some(ep) => format!(
                "local pod {dst}, into its namespace (veth ifindex {})",
                ep.ifindex
            ),
            None => format!("{dst} on another node (ferry_routes) or by the node's routes"),
        },
        _ => format!("the node's stack, routed to {dst}"),
    })
}

impl TraceReport {
    pub fn render(&self) -> String {
        let mut s = String::new();
        s += &format!("hook:      {}\n", self.hook);
        s += &format!("packet:    {}\n", self.packet);
        match &self.frontend {
            Some(f) => {
                s += &format!("frontend:  {} {} ({})\n", f.frontend, f.service, f.scope);
                s += &format!(
                    "backends:  {}\n",
                    if f.backends.is_empty() {
                        "(none)".to_string()
                    } else {
                        f.backends.join(", ")
                    }
                );
                if f.affinity_timeout_s > 0 {
                    s += &format!("affinity:  ClientIP, {}s\n", f.affinity_timeout_s);
                }
            }
            None => s += "frontend:  none\n",
        }
        s += &format!("flow:      {}\n", self.flow);
        if let Some(b) = &self.backend {
            s += &format!("backend:   {b}\n");
        }
        s += &format!("outcome:   {}\n", self.outcome);
        s += &format!("verdict:   {}\n", self.verdict);
        s += &format!("next hop:  {}\n", self.next_hop);
        if self.rewrites.is_empty() {
            s += "rewritten: nothing\n";
        } else {
            s += "rewritten:\n";
            for r in &self.rewrites {
                s += &format!("  {:<14} {} -> {}\n", r.field, r.before, r.after);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_carry_valid_checksums() {
        for protocol in [PROTO_TCP, PROTO_UDP, PROTO_ICMP] {
            let probe = Probe {
                from: "10.244.1.5:40000".parse().unwrap(),
                to: "10.96.0.10:80".parse().unwrap(),
                protocol,
                tcp_flags: 0x02,
            };
            let f = frame(&probe, ([2; 6], [4; 6]));
            assert_eq!(checksum(&f[14..34]), 0, "IPv4 header checksum");
            let l4 = &f[34..];
            if protocol == PROTO_ICMP {
                assert_eq!(checksum(l4), 0);
            } else {
                let mut pseudo = f[26..34].to_vec();
                pseudo.extend_from_slice(&[0, protocol]);
                pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                pseudo.extend_from_slice(l4);
                assert_eq!(checksum(&pseudo), 0, "L4 checksum of protocol {protocol}");
            }
        }
    }

    #[test]
    fn rewrites_name_each_changed_field() {
        let probe = Probe {
            from: "10.244.1.5:40000".parse().unwrap(),
            to: "10.96.0.10:80".parse().unwrap(),
            protocol: PROTO_TCP,
            tcp_flags: 0x02,
        };
        let before = frame(&probe, ([2; 6], [4; 6]));
        let after = frame(
            &Probe {
                to: "10.244.2.7:8080".parse().unwrap(),
                ..probe
            },
            ([2; 6], [4; 6]),
        );
        let changed: Vec<&str> = rewrites(&before, &after).iter().map(|r| r.field).collect();
        assert_eq!(
            changed,
            ["ip.checksum", "ip.dst", "l4.dst_port", "l4.checksum"]
        );
    }

    #[test]
    fn the_outcome_is_read_only_when_written() {
        let mut ctx = [0u8; SKB_CTX_LEN];
        assert_eq!(traced_outcome(&ctx), None);
        ctx[SKB_CB..SKB_CB + 4].copy_from_slice(&TRACE_OUTCOME_WRITTEN.to_ne_bytes());
        assert_eq!(traced_outcome(&ctx), Some(0));
    }
}
