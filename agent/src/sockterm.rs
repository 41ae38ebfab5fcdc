//! Terminating sockets stuck on a departed UDP backend.
//!
//! Socket-level translation picks a connected UDP socket's backend once, at
//! `connect()`; the socket then sends to the backend's address and no later
//! change of the Service moves it. When such a backend leaves its
//! frontend's set, the agent finds the sockets connected to it through the
//! kernel's sock_diag netlink interface (`SOCK_DIAG_BY_FAMILY` dump of the
//! node's connected IPv4 UDP sockets, then `SOCK_DESTROY` for each one it
//! picked, as `ss -K` does): the kernel sets `ECONNABORTED` on the socket
//! and disconnects it, so the application's next (or pending) `recv` or
//! `send` fails and it reconnects, drawing a current backend.
//!
//! Only sockets that ferry translated are picked: the socket's cookie and
//! the backend must be a key of `ferry_sock_rev` whose frontend is the one
//! the backend left. A socket that dialled the pod IP itself has no such
//! entry and is left alone. The picked sockets' reverse entries are removed
//! (counted as `sock_reverse_removed`, so the eviction count stays right).
//!
//! sock_diag sees the sockets of the caller's network namespace only. The
//! node's own are swept from the agent's thread; with `--socket-lb on`,
//! pods' sockets are translated too, so the same dump, pick and destroy
//! runs in each pod's namespace that ferry-cni recorded (`cni::podns`), on
//! a short-lived OS thread that enters it (`setns`, which needs
//! CAP_SYS_ADMIN), opens its own sock_diag socket there and ends with the
//! work; a namespace gone meanwhile, or one the agent may not enter, is
//! logged and skipped.
use std::{
    io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::maps::{HashMap, MapData};
use ferry_common::{MAP_SOCK_REVERSE, PROTO_UDP, SockRevKey, SockRevValue, outcome};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    AF_INET, IPPROTO_UDP, SockDiagDestroy, SockDiagMessage,
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use crate::{
    cni::podns::{self, NetnsId, OpenNetnsError, PodNetns},
    maps::{Counters, OpenError, found, missing_is_fine, open_pinned},
    reconcile::targets::{SocketTerminator, StaleFlows, TargetError, TargetResult},
};

/// A connected IPv4 UDP socket of the node, as the dump reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectedUdp {
    /// `bpf_get_socket_cookie`'s value for it (the dump's `idiag_cookie`).
    pub cookie: u64,
    /// The peer it is connected to: address (network order) and port.
    pub peer: ([u8; 4], u16),
    /// The dump's identity of the socket, sent back to destroy it.
    pub id: SocketId,
}

/// The socket cookie as the dump reports it: `idiag_cookie[0]` holds the
/// low 32 bits and `[1]` the high ones, each in host order.
pub fn cookie_of(raw: [u8; 8]) -> u64 {
    let low = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let high = u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]);
    (u64::from(high) << 32) | u64::from(low)
}

/// The sockets of `sockets` to terminate, each with its reverse entry:
/// connected to the backend of a UDP flow in `stale` and translated by
/// ferry from that flow's frontend (`reverse` finds the entry).
pub fn to_terminate<'a>(
    sockets: &'a [ConnectedUdp],
    stale: &[StaleFlows],
    reverse: impl Fn(&SockRevKey) -> Option<SockRevValue>,
) -> Vec<(&'a ConnectedUdp, SockRevKey)> {
    sockets
        .iter()
        .filter_map(|s| {
            let key = SockRevKey {
                cookie: s.cookie,
                backend_addr: s.peer.0,
                backend_port: s.peer.1,
                pad: 0,
            };
            let departed = stale
                .iter()
                .any(|f| f.protocol == PROTO_UDP && (f.backend.addr, f.backend.port) == s.peer);
            if !departed {
                return None;
            }
            let entry = reverse(&key)?;
            stale
                .iter()
                .any(|f| {
                    f.protocol == PROTO_UDP
                        && (f.backend.addr, f.backend.port) == s.peer
                        && (f.addr, f.port) == (entry.frontend_addr, entry.frontend_port)
                })
                .then_some((s, key))
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error(
        "the kernel's sock_diag netlink interface failed ({step}): {source}; the agent needs CAP_NET_ADMIN, and the kernel CONFIG_INET_DIAG and CONFIG_INET_UDP_DIAG (and CONFIG_INET_DIAG_DESTROY to terminate sockets)"
    )]
    Netlink {
        step: &'static str,
        source: io::Error,
    },
    #[error("the sock_diag answer did not decode: {0}")]
    Decode(String),
}

fn netlink(step: &'static str) -> impl Fn(io::Error) -> DiagError {
    move |source| DiagError::Netlink { step, source }
}

fn diag_socket() -> Result<Socket, DiagError> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(netlink("socket"))?;
    socket.bind_auto().map_err(netlink("bind"))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(netlink("connect"))?;
    Ok(socket)
}

fn send<T: netlink_packet_core::NetlinkSerializable>(
    socket: &Socket,
    flags: u16,
    payload: T,
) -> Result<(), DiagError> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0).map_err(netlink("send"))?;
    Ok(())
}

fn udp_request(socket_id: SocketId) -> SockDiagMessage {
    SockDiagMessage::InetRequest(InetRequest {
        family: AF_INET,
        protocol: IPPROTO_UDP,
        extensions: ExtensionFlags::empty(),
        // A connected UDP socket is TCP_ESTABLISHED to sock_diag.
        states: StateFlags::ESTABLISHED,
        socket_id,
    })
}

/// The connected IPv4 UDP sockets of this network namespace whose peer
/// port is `port` (the kernel filters on it).
pub fn dump_connected_udp(port: u16) -> Result<Vec<ConnectedUdp>, DiagError> {
    let socket = diag_socket()?;
    let mut id = SocketId::new_v4();
    id.destination_port = port;
    send(&socket, NLM_F_REQUEST | NLM_F_DUMP, udp_request(id))?;
    let mut out = Vec::new();
    loop {
        let (buf, _) = socket.recv_from_full().map_err(netlink("recv"))?;
        if buf.is_empty() {
            return Ok(out);
        }
        let mut offset = 0;
        while offset < buf.len() {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[offset..])
                .map_err(|e| DiagError::Decode(e.to_string()))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let id = &r.header.socket_id;
                    if let IpAddr::V4(peer) = id.destination_address {
                        out.push(ConnectedUdp {
                            cookie: cookie_of(id.cookie),
                            peer: (peer.octets(), id.destination_port),
                            id: id.clone(),
                        });
                    }
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    let source = e.to_io();
                    return Err(DiagError::Netlink {
                        step: "dump",
                        source,
                    });
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

/// Destroy one socket of the dump (`SOCK_DESTROY`): the kernel aborts it
/// with ECONNABORTED. A socket closed in between is `NotFound`.
pub fn destroy(socket: &Socket, target: &ConnectedUdp) -> Result<(), DiagError> {
    let request = SockDiagDestroy::new(udp_request(target.id.clone()));
    send(socket, NLM_F_REQUEST | NLM_F_ACK, request)?;
    let (buf, _) = socket.recv_from_full().map_err(netlink("recv"))?;
    let message = NetlinkMessage::<SockDiagMessage>::deserialize(&buf)
        .map_err(|e| DiagError::Decode(e.to_string()))?;
    match message.payload {
        NetlinkPayload::Error(e) if e.code.is_some() => Err(DiagError::Netlink {
            step: "destroy",
            source: e.to_io(),
        }),
        _ => Ok(()),
    }
}

/// The UDP backend ports of `stale`, each once: the dump asks the kernel
/// for the sockets connected to one of them.
pub fn departed_ports(stale: &[StaleFlows]) -> Vec<u16> {
    let mut ports: Vec<u16> = stale
        .iter()
        .filter(|f| f.protocol == PROTO_UDP)
        .map(|f| f.backend.port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// A reverse-map lookup, shared by the threads that work in pods'
/// namespaces (the map's descriptor serves every namespace).
pub type ReverseLookup<'a> = &'a (dyn Fn(&SockRevKey) -> Option<SockRevValue> + Sync);

/// What terminating in one network namespace did.
#[derive(Debug, Default)]
pub struct Sweep {
    pub terminated: usize,
    /// The reverse entries to remove: of the sockets terminated, and of
    /// those that closed in between.
    pub done: Vec<SockRevKey>,
    /// The first socket that could not be terminated (the others went on).
    pub first_error: Option<DiagError>,
}

/// Dump, pick (`to_terminate`) and destroy the sockets of a departed UDP
/// backend in the calling thread's network namespace. An error: the dump
/// failed, nothing was terminated.
pub fn sweep_here(stale: &[StaleFlows], reverse: ReverseLookup) -> Result<Sweep, DiagError> {
    let mut sockets = Vec::new();
    for port in departed_ports(stale) {
        sockets.extend(dump_connected_udp(port)?);
    }
    let mut sweep = Sweep::default();
    if sockets.is_empty() {
        return Ok(sweep);
    }
    let doomed = to_terminate(&sockets, stale, reverse);
    if doomed.is_empty() {
        return Ok(sweep);
    }
    let socket = diag_socket()?;
    for (target, key) in doomed {
        match destroy(&socket, target) {
            Ok(()) => sweep.terminated += 1,
            Err(DiagError::Netlink { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::debug!(cookie = target.cookie, error = %e, "cannot terminate a socket");
                sweep.first_error.get_or_insert(e);
                continue;
            }
        }
        sweep.done.push(key);
    }
    Ok(sweep)
}

/// Why a pod's namespace was not swept.
#[derive(Debug, thiserror::Error)]
pub enum PodSweepError {
    #[error(transparent)]
    Open(#[from] OpenNetnsError),
    #[error(
        "entering the network namespace {path}: {source}; the agent needs CAP_SYS_ADMIN to enter pods' namespaces (--socket-lb on)"
    )]
    Enter { path: PathBuf, source: io::Error },
    #[error("in the network namespace {path}: {source}")]
    Diag { path: PathBuf, source: DiagError },
    #[error("the thread working in the network namespace {0} panicked")]
    Panicked(PathBuf),
    #[error("cannot start a thread to work in a pod's network namespace: {0}")]
    Thread(io::Error),
}

impl PodSweepError {
    /// The pod went away meanwhile: nothing to terminate, nothing wrong.
    pub fn is_gone(&self) -> bool {
        matches!(self, PodSweepError::Open(e) if e.is_gone())
    }
}

/// `sweep_here` in `pod`'s network namespace. The calling thread enters
/// it for good, so this runs only on a thread `sweep_pods` spawned for it,
/// which ends with the work: no other thread, and no tokio worker, ever
/// changes namespace.
fn enter_and_sweep(
    pod: &PodNetns,
    stale: &[StaleFlows],
    reverse: ReverseLookup,
) -> Result<Sweep, PodSweepError> {
    let ns = podns::open(pod)?;
    podns::enter(&ns).map_err(|source| PodSweepError::Enter {
        path: pod.netns.clone(),
        source,
    })?;
    sweep_here(stale, reverse).map_err(|source| PodSweepError::Diag {
        path: pod.netns.clone(),
        source,
    })
}

/// `CAP_SYS_ADMIN`'s bit in the capability sets.
const CAP_SYS_ADMIN: u32 = 21;

/// Whether the `CapEff:` line of a `/proc/PID/status` holds capability
/// `cap` (None: no such line).
pub fn effective_cap(status: &str, cap: u32) -> Option<bool> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    let bits = u64::from_str_radix(hex, 16).ok()?;
    Some((bits >> cap) & 1 == 1)
}

/// Whether this process may enter pods' network namespaces (`setns`
/// needs CAP_SYS_ADMIN); None when it cannot tell.
pub fn may_enter_pods() -> Option<bool> {
    effective_cap(
        &std::fs::read_to_string("/proc/self/status").ok()?,
        CAP_SYS_ADMIN,
    )
}

/// At most this many pods' namespaces are worked in at once.
const POD_THREADS: usize = 4;

/// What terminating in the pods' namespaces did.
#[derive(Debug, Default)]
pub struct PodsSweep {
    pub namespaces: usize,
    pub terminated: usize,
    pub done: Vec<SockRevKey>,
    /// Namespaces gone meanwhile.
    pub gone: usize,
    /// Namespaces (or sockets in them) that failed, each with its error.
    pub failed: Vec<String>,
}

/// `enter_and_sweep` every pod namespace recorded in `records` (ferry-cni's, see
/// `cni::podns`) but the agent's own; a namespace that fails is recorded
/// in the result, and the others go on.
pub fn sweep_pods(records: &Path, stale: &[StaleFlows], reverse: ReverseLookup) -> PodsSweep {
    let mut out = PodsSweep::default();
    let pods = match podns::read_all(records) {
        Ok((pods, bad)) => {
            out.failed.extend(bad.iter().map(ToString::to_string));
            pods
        }
        Err(e) => {
            out.failed
                .push(format!("reading {}: {e}", records.display()));
            return out;
        }
    };
    let own = NetnsId::own().ok();
    let visit = podns::to_visit(&pods, own);
    out.namespaces = visit.len();
    for batch in visit.chunks(POD_THREADS) {
        // One OS thread per namespace: it enters it, works, and ends.
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .iter()
                .map(|pod| {
                    let work = move || enter_and_sweep(pod, stale, reverse);
                    let thread = std::thread::Builder::new()
                        .name("ferry-podns".into())
                        .spawn_scoped(scope, work);
                    (pod, thread)
                })
                .collect();
            handles
                .into_iter()
                .map(|(pod, thread)| {
                    let result = match thread {
                        Ok(handle) => handle
                            .join()
                            .unwrap_or_else(|_| Err(PodSweepError::Panicked(pod.netns.clone()))),
                        Err(source) => Err(PodSweepError::Thread(source)),
                    };
                    (pod, result)
                })
                .collect()
        });
        for (pod, result) in results {
            match result {
                Ok(sweep) => {
                    out.terminated += sweep.terminated;
                    out.done.extend(sweep.done);
                    if let Some(e) = sweep.first_error {
                        out.failed.push(format!("in {}: {e}", pod.netns.display()));
                    }
                }
                Err(e) if e.is_gone() => {
                    tracing::debug!(pod = %pod.container_id, error = %e, "pod network namespace gone");
                    out.gone += 1;
                }
                Err(e) => out.failed.push(e.to_string()),
            }
        }
    }
    out
}

/// The node's own sockets, the pods' (with `--socket-lb on`), and
/// `ferry_sock_rev`.
pub struct SystemSockets {
    reverse: HashMap<MapData, SockRevKey, SockRevValue>,
    counters: Counters,
    /// ferry-cni's pod namespace records, when pods' sockets are
    /// translated too (`--socket-lb on`).
    pods: Option<PathBuf>,
}

impl SystemSockets {
    /// `pods`: the directory of ferry-cni's pod namespace records
    /// (`cni::podns::records_dir`), to terminate pods' sockets too.
    pub fn open(pin_dir: &Path, pods: Option<PathBuf>) -> Result<Self, OpenError> {
        Ok(Self {
            reverse: open_pinned(pin_dir, MAP_SOCK_REVERSE)?,
            counters: Counters::open(pin_dir)?,
            pods,
        })
    }
}

impl SocketTerminator for SystemSockets {
    fn terminate(&mut self, stale: &[StaleFlows]) -> TargetResult<usize> {
        if departed_ports(stale).is_empty() {
            return Ok(0);
        }
        let reverse = &self.reverse;
        let lookup = |k: &SockRevKey| found(reverse.get(k, 0)).ok().flatten();
        let mut terminated = 0;
        let mut done = Vec::new();
        let host_error = match sweep_here(stale, &lookup) {
            Ok(sweep) => {
                terminated += sweep.terminated;
                done.extend(sweep.done);
                sweep.first_error
            }
            Err(e) => Some(e),
        };
        if let Some(records) = &self.pods {
            let pods = sweep_pods(records, stale, &lookup);
            terminated += pods.terminated;
            done.extend(pods.done);
            tracing::debug!(
                namespaces = pods.namespaces,
                terminated = pods.terminated,
                gone = pods.gone,
                failed = pods.failed.len(),
                "terminated the sockets of departed UDP backends in pods"
            );
            if let Some(first) = pods.failed.first() {
                tracing::warn!(
                    failed = pods.failed.len(),
                    namespaces = pods.namespaces,
                    first_error = %first,
                    "pods' connected UDP sockets of departed backends could not all be terminated; they keep their backend until the application reconnects"
                );
                for e in &pods.failed[1..] {
                    tracing::debug!(error = %e, "pod network namespace not swept");
                }
            }
        }
        let mut removed = 0;
        for key in done {
            match missing_is_fine(self.reverse.remove(&key)) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::debug!(cookie = key.cookie, error = %e, "cannot remove a reverse entry")
                }
            }
        }
        if removed > 0
            && let Err(e) = self.counters.add(outcome::SOCK_REVERSE_REMOVED, removed)
        {
            tracing::debug!(error = %e, "cannot count the removed reverse entries");
        }
        match host_error {
            Some(e) if terminated == 0 => Err(TargetError::new(e)),
            Some(e) => {
                tracing::warn!(error = %e, terminated, "some sockets of departed UDP backends could not be terminated");
                Ok(terminated)
            }
            None => Ok(terminated),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ferry_common::{Backend, PROTO_TCP};

    use super::*;

    const VIP: [u8; 4] = [10, 96, 0, 10];
    const B1: [u8; 4] = [10, 244, 1, 5];
    const B2: [u8; 4] = [10, 244, 1, 6];

    fn backend(addr: [u8; 4], port: u16) -> Backend {
        Backend {
            addr,
            port,
            pad: [0; 2],
        }
    }

    fn stale(frontend: ([u8; 4], u16), protocol: u8, b: Backend) -> StaleFlows {
        StaleFlows {
            addr: frontend.0,
            port: frontend.1,
            protocol,
            backend: b,
        }
    }

    fn socket(cookie: u64, peer: ([u8; 4], u16)) -> ConnectedUdp {
        ConnectedUdp {
            cookie,
            peer,
            id: SocketId::new_v4(),
        }
    }

    fn rev(cookie: u64, b: ([u8; 4], u16), frontend: ([u8; 4], u16)) -> (SockRevKey, SockRevValue) {
        (
            SockRevKey {
                cookie,
                backend_addr: b.0,
                backend_port: b.1,
                pad: 0,
            },
            SockRevValue {
                frontend_addr: frontend.0,
                frontend_port: frontend.1,
                pad: 0,
                service_id: 1,
            },
        )
    }

    #[test]
    fn only_sockets_ferry_translated_to_the_departed_backend_are_picked() {
        let departed = [stale((VIP, 53), PROTO_UDP, backend(B1, 8080))];
        let sockets = [
            // Translated from the ClusterIP to B1: terminated.
            socket(1, (B1, 8080)),
            // Dialled B1 itself: no reverse entry, kept.
            socket(2, (B1, 8080)),
            // Translated to B2, which stays: kept.
            socket(3, (B2, 8080)),
            // Translated to B1 from another Service that keeps it: kept.
            socket(4, (B1, 8080)),
            // B1 on another port: kept.
            socket(5, (B1, 9090)),
        ];
        let map: BTreeMap<(u64, [u8; 4], u16), SockRevValue> = [
            rev(1, (B1, 8080), (VIP, 53)),
            rev(3, (B2, 8080), (VIP, 53)),
            rev(4, (B1, 8080), ([10, 96, 0, 99], 53)),
            rev(5, (B1, 9090), (VIP, 53)),
        ]
        .into_iter()
        .map(|(k, v)| ((k.cookie, k.backend_addr, k.backend_port), v))
        .collect();
        let picked = to_terminate(&sockets, &departed, |k| {
            map.get(&(k.cookie, k.backend_addr, k.backend_port))
                .copied()
        });
        let cookies: Vec<u64> = picked.iter().map(|(s, _)| s.cookie).collect();
        assert_eq!(cookies, [1]);
        assert_eq!(picked[0].1, rev(1, (B1, 8080), (VIP, 53)).0);
    }

    #[test]
    fn tcp_flows_terminate_no_socket() {
        let departed = [stale((VIP, 80), PROTO_TCP, backend(B1, 8080))];
        let sockets = [socket(1, (B1, 8080))];
        let picked = to_terminate(&sockets, &departed, |_| {
            Some(rev(1, (B1, 8080), (VIP, 80)).1)
        });
        assert!(picked.is_empty());
    }

    #[test]
    fn each_departed_udp_backend_port_is_dumped_once() {
        let departed = [
            stale((VIP, 53), PROTO_UDP, backend(B1, 8080)),
            stale((VIP, 80), PROTO_TCP, backend(B1, 9000)),
            stale(([10, 96, 0, 99], 53), PROTO_UDP, backend(B2, 8080)),
            stale((VIP, 54), PROTO_UDP, backend(B2, 5353)),
        ];
        assert_eq!(departed_ports(&departed), [5353, 8080]);
        assert!(departed_ports(&departed[1..2]).is_empty(), "TCP only");
    }

    #[test]
    fn pods_namespaces_that_are_gone_or_unreadable_are_skipped_not_fatal() {
        let dir = std::env::temp_dir().join(format!("ferry-sockterm-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let record = |id: &str, netns: &str, ns: NetnsId| PodNetns {
            container_id: id.into(),
            ifname: "eth0".into(),
            netns: netns.into(),
            id: ns,
        };
        let own = NetnsId::own().unwrap();
        // The agent's own namespace: never entered (its sockets are swept
        // from the agent's thread).
        podns::write(
            &dir,
            "fry00000000001",
            &record("own", "/proc/self/ns/net", own),
        )
        .unwrap();
        // A pod deleted meanwhile, and one whose path now names another
        // namespace.
        let gone = NetnsId { dev: 1, ino: 1 };
        podns::write(
            &dir,
            "fry00000000002",
            &record("gone", "/var/run/netns/ferry-no-such-pod", gone),
        )
        .unwrap();
        podns::write(
            &dir,
            "fry00000000003",
            &record("moved", "/proc/self/ns/net", NetnsId { dev: 1, ino: 2 }),
        )
        .unwrap();
        std::fs::write(dir.join("fry00000000004"), "not json").unwrap();
        let departed = [stale((VIP, 53), PROTO_UDP, backend(B1, 8080))];
        let swept = sweep_pods(&dir, &departed, &|_| None);
        assert_eq!(swept.namespaces, 2, "{swept:?}");
        assert_eq!(swept.gone, 2, "{swept:?}");
        assert_eq!(swept.terminated, 0);
        assert_eq!(swept.failed.len(), 1, "the unreadable record: {swept:?}");
        std::fs::remove_dir_all(&dir).unwrap();
        let none = sweep_pods(&dir, &departed, &|_| None);
        assert_eq!((none.namespaces, none.failed.len()), (0, 0), "{none:?}");
    }

    #[test]
    fn sys_admin_is_read_from_the_effective_set() {
        let with = "Name:\tferry-agent\nCapInh:\t0000000000000000\nCapPrm:\t000000c000201000\nCapEff:\t000000c000201000\n";
        assert_eq!(effective_cap(with, CAP_SYS_ADMIN), Some(true));
        // BPF, PERFMON and NET_ADMIN alone (the DaemonSet's default).
        let without = "CapEff:\t000000c000001000\n";
        assert_eq!(effective_cap(without, CAP_SYS_ADMIN), Some(false));
        assert_eq!(effective_cap(without, 12), Some(true), "NET_ADMIN");
        assert_eq!(effective_cap("Name: x\n", CAP_SYS_ADMIN), None);
    }

    #[test]
    fn the_dumps_cookie_is_the_bpf_socket_cookie() {
        let cookie: u64 = 0x0000_0001_0000_2a2b;
        let mut raw = [0u8; 8];
        raw[..4].copy_from_slice(&(cookie as u32).to_ne_bytes());
        raw[4..].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        assert_eq!(cookie_of(raw), cookie);
    }
}
