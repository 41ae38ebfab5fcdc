//! Map names, keys and values.
//!
//! Byte order: addresses are `[u8; 4]` in network order (the bytes as they
//! appear on the wire, so bpftool prints `[10,96,0,10]`); ports and all other
//! integers are in host byte order so that bpftool prints `"port": 80`.

use bytemuck::{Pod, Zeroable};

/// The one list of ferry's pinned maps: each constant with its pinned (and
/// BPF object) name, at most 15 bytes. `with_map_names!(m)` calls `m!` with
/// this list; the names are literal tokens because the kernel crate's
/// `#[btf_map(name = ..)]` takes a literal only, so the kernel's map
/// declarations, these constants and the loader's table all come from here.
#[macro_export]
macro_rules! with_map_names {
    ($callback:ident) => {
        $callback! {
            MAP_SERVICES = "ferry_services",
            MAP_BACKENDS = "ferry_backends",
            MAP_CONNTRACK = "ferry_conntrack",
            MAP_COUNTERS = "ferry_counters",
            MAP_ENDPOINTS = "ferry_endpoints",
            MAP_SERVICE_NAMES = "ferry_svc_names",
            MAP_ROUTES = "ferry_routes",
            MAP_NODE = "ferry_node",
            MAP_SERVICE_RANGES = "ferry_svc_cidrs",
            MAP_AFFINITY = "ferry_affinity",
            MAP_SERVICE_OPTIONS = "ferry_svc_opts",
            MAP_SOURCE_RANGES = "ferry_lb_ranges",
            MAP_FRAGMENTS = "ferry_frags",
            MAP_SOCK_REVERSE = "ferry_sock_rev",
            MAP_SOCK_CONFIG = "ferry_sock_cfg",
            MAP_FRONTEND_FILTER = "ferry_fe_filter",
            MAP_POD_SOURCES = "ferry_pod_srcs",
            MAP_EVENTS = "ferry_events",
            MAP_MONITOR = "ferry_monitor",
            MAP_SERVICE_STATS = "ferry_svc_stats",
        }
    };
}

macro_rules! map_name_constants {
    ($($constant:ident = $name:tt,)*) => {
        $(pub const $constant: &str = $name;)*
        /// Every map the agent pins, in a stable order.
        pub const PINNED_MAPS: [&str; [$($name),*].len()] = [$($constant),*];
    };
}
with_map_names!(map_name_constants);

const _: () = {
    let mut i = 0;
    while i < PINNED_MAPS.len() {
        // BPF object names hold 15 bytes and a NUL.
        assert!(PINNED_MAPS[i].len() <= 15);
        i += 1;
    }
};

/// Pin name of the from-pod program, which the CNI plugin attaches.
pub const PIN_PROG_FROM_POD: &str = "prog_from_pod";
/// Pin name of the from-network program, which the agent attaches to the
/// node's uplink and to its VXLAN device.
pub const PIN_PROG_FROM_NETWORK: &str = "prog_from_net";
/// Pin name of the uplink's XDP program (native routing).
pub const PIN_PROG_XDP_UPLINK: &str = "prog_xdp_uplink";
/// Directory (under the pin directory) of pinned tc links.
pub const PIN_LINKS_DIR: &str = "links";
/// Directory (under the pin directory) of the pinned cgroup socket links,
/// one per program, named as the program's pin.
pub const PIN_CGROUP_LINKS_DIR: &str = "links-cgroup";
/// Pin names of the socket programs (cgroup v2 sock_addr hooks).
pub const PIN_PROG_SOCK_CONNECT4: &str = "prog_sock_connect4";
pub const PIN_PROG_SOCK_SENDMSG4: &str = "prog_sock_sendmsg4";
pub const PIN_PROG_SOCK_RECVMSG4: &str = "prog_sock_recvmsg4";
pub const PIN_PROG_SOCK_GETPEERNAME4: &str = "prog_sock_getpeername4";
/// Pin name of the debug switch: the programs' `.data.ferry_debug` section
/// (one u32, non-zero: debug lines on), pinned anew by each agent start
/// for the programs it loaded.
pub const PIN_DEBUG: &str = "ferry_debug";
/// The data section the debug switch lives in (aya's name for its map).
pub const DEBUG_SECTION: &str = ".data.ferry_debug";

// Map capacities. The programs declare these; the agent sizes the maps it
// creates from its options (`--max-frontends` and the others; the loader's
// `MapSizes`), whose defaults are these: a small node's, about 30 MiB of
// kernel memory in all with a few Services.

/// Default capacity of the services map (frontends: one per address, port,
/// protocol and scope). Not preallocated: memory follows the frontends.
pub const SERVICES_MAX_ENTRIES: u32 = 16_384;
/// Default capacity of the backend slot array (the active and the standby
/// run of every frontend): an array, so allocated whole, 8 bytes a slot
/// (2 MiB at this default).
pub const BACKENDS_MAX_ENTRIES: u32 = 262_144;
/// Default capacity of the conntrack LRU (two entries per flow); an LRU is
/// always preallocated: 112 bytes an entry.
pub const CONNTRACK_MAX_ENTRIES: u32 = 131_072;
/// Capacity of the local endpoints map (pods on this node).
pub const ENDPOINTS_MAX_ENTRIES: u32 = 4096;
/// Capacity of the route map (one entry per other node's pod CIDR).
pub const ROUTES_MAX_ENTRIES: u32 = 16_384;
/// Service CIDRs the service-range map holds besides the ClusterIPs.
pub const SERVICE_CIDR_ENTRIES: u32 = 64;
/// Capacity of the service-range map: every allocated ClusterIP (at most
/// one per frontend) and the service CIDRs.
pub const SERVICE_RANGES_MAX_ENTRIES: u32 = SERVICES_MAX_ENTRIES + SERVICE_CIDR_ENTRIES;
/// Default capacity of the session-affinity LRU: one entry per (frontend
/// with `sessionAffinity: ClientIP`, client address) in use.
pub const AFFINITY_MAX_ENTRIES: u32 = 32_768;
/// The most frontends the agent may be sized for: service ids must fit the
/// bits a finished packet carries them in (dataplane-ebpf `deliver`).
pub const FRONTENDS_LIMIT: u32 = (1 << 21) - 2;
/// Capacity of the load-balancer source-range trie (all frontends' ranges).
pub const SOURCE_RANGES_MAX_ENTRIES: u32 = 65_536;
/// Capacity of the fragment LRU: datagrams in flight in fragments at once
/// (Cilium's default for its own fragment map).
pub const FRAGMENTS_MAX_ENTRIES: u32 = 8192;
/// How long a first fragment's ports stay usable for the datagram's other
/// fragments: Linux's own reassembly timeout (`ipfrag_time`, 30 s), so
/// whatever the receiver would still reassemble is still translated. The
/// LRU alone would let a record outlive its datagram until the 16-bit IP ID
/// wraps round to a datagram whose first fragment never came.
pub const FRAGMENT_TIMEOUT_NS: u64 = 30_000_000_000;
/// Capacity of the socket reverse-translation LRU: one entry per (socket,
/// backend) a socket was translated to. A connected socket needs one; an
/// unconnected UDP socket one per backend it sent to. Cilium's default for
/// its lb4_reverse_nat_sk is the same 256 Ki. A full map evicts the least
/// recently used entry (counted: `sock_reverse_evictions` in the metrics).
/// Default 32 Ki: a node's sockets to Services at once.
pub const SOCK_REVERSE_MAX_ENTRIES: u32 = 32_768;
/// Most backends one service frontend can have (slots 0..MAX).
pub const MAX_BACKENDS_PER_SERVICE: u16 = 4096;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;

/// `ServiceKey::scope` values: which kind of frontend the key describes.
/// A ClusterIP, reached from pods.
pub const SCOPE_CLUSTER_IP: u8 = 0;
/// Reached from outside the cluster, through the uplink: a NodePort on one
/// of the node's addresses, a LoadBalancer ingress IP, an externalIP.
pub const SCOPE_EXTERNAL: u8 = 1;
/// The same addresses as `SCOPE_EXTERNAL`, reached from this node's pods:
/// every ready endpoint whatever the externalTrafficPolicy, no source NAT
/// (kube-proxy's short-circuit for traffic from inside the cluster).
pub const SCOPE_EXTERNAL_FROM_PODS: u8 = 2;

/// `ferry_fe_filter`: one bit per hashed destination address and scope,
/// set while any frontend of that scope may sit on an address hashing
/// there; a clear bit means no frontend of the scope has the address, and
/// the datapath skips that scope's `ferry_services` probe (the one cost of
/// a packet for a pod that is no Service's). Bits per scope; the filter
/// covers the scopes a pod's packets are looked up in (ClusterIP, then the
/// external addresses as pods reach them); `SCOPE_EXTERNAL` is always
/// probed. 2^18 bits per scope (32 KiB): 10,000 ClusterIPs set under 4%.
pub const FRONTEND_FILTER_BITS_PER_SCOPE: u32 = 1 << 18;
/// The filter's u64 words: the ClusterIP half, then the other.
pub const FRONTEND_FILTER_WORDS: u32 = 2 * FRONTEND_FILTER_BITS_PER_SCOPE / 64;

/// Where the filter keeps `addr` for `scope`: (word index, bit mask). None
/// for a scope the filter does not cover (always probed).
#[inline(always)]
pub fn frontend_filter_slot(addr: [u8; 4], scope: u8) -> Option<(u32, u64)> {
    let half = match scope {
        SCOPE_CLUSTER_IP => 0,
        SCOPE_EXTERNAL_FROM_PODS => 1,
        _ => return None,
    };
    // Fibonacci hashing: the top 18 bits of the address times 2^32/phi
    // spread consecutive addresses (ClusterIPs) over the whole range.
    let h = u32::from_be_bytes(addr).wrapping_mul(0x9E37_79B9) >> (32 - 18);
    Some((
        half * (FRONTEND_FILTER_BITS_PER_SCOPE / 64) + (h >> 6),
        1u64 << (h & 63),
    ))
}

/// NodePort frontends on the node's loopback address (`127.0.0.1` +
/// nodePort) are keyed with this address in `SCOPE_EXTERNAL_FROM_PODS`,
/// written only while socket LB is enabled. Only the socket programs look
/// them up, and only for sockets of the node's own network namespace: a
/// pod's loopback is its own, and tc never sees loopback traffic.
pub const LOOPBACK_ADDR: [u8; 4] = [127, 0, 0, 1];

/// `ServiceValue::flags` bits.
/// externalTrafficPolicy Local: the backends are this node's only, the
/// client's address is kept (no source NAT), and without a local backend
/// the packet is dropped.
pub const SERVICE_FLAG_LOCAL_ONLY: u8 = 1;
/// `sessionAffinity: ClientIP`: a new flow from a client address goes to
/// the backend that client's last flow went to, while that backend is still
/// in the set and the client came back within the timeout
/// (`ferry_svc_opts`). See `ferry_affinity`.
pub const SERVICE_FLAG_AFFINITY: u8 = 2;
/// `loadBalancerSourceRanges` (load-balancer ingress IPs only): a new flow
/// is admitted only from a client address inside one of the frontend's
/// ranges in `ferry_lb_ranges`, else dropped.
pub const SERVICE_FLAG_SOURCE_RANGES: u8 = 4;

/// Default source ports for NodePort/LoadBalancer flows sent to another
/// node (`NodeConfig` carries the ones in use). Above the NodePort range, so
/// a reply is never mistaken for a new NodePort connection, and above
/// Linux's default ephemeral range (32768-60999), so they do not collide
/// with the node's own connections to pods (kubelet probes). A port is
/// reused once its previous flow is closing or expired.
pub const SNAT_PORT_MIN: u16 = 61_000;
pub const SNAT_PORT_MAX: u16 = 65_535;

/// Key of `ferry_services`: one Service frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct ServiceKey {
    /// Frontend address, network byte order.
    pub addr: [u8; 4],
    /// Frontend port, host byte order.
    pub port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub protocol: u8,
    /// `SCOPE_*`: ClusterIP today; NodePort and external scopes later.
    pub scope: u8,
}

/// Value of `ferry_services`.
///
/// A frontend's backend set is a run of `backend_count` consecutive slots
/// of `ferry_backends` from `backend_base`. Every frontend owns two runs:
/// the active one and a standby. An update writes the whole new set into
/// the standby run, then replaces this value (one atomic map update) to
/// point at it, so a packet sees either the old set or the new one, never
/// a mixture; the old run becomes the standby, untouched until the next
/// update of this frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ServiceValue {
    /// Agent-assigned id, stable for the frontend's lifetime; host order.
    pub service_id: u32,
    /// Index in `ferry_backends` of the active set's slot 0; host order.
    pub backend_base: u32,
    /// Number of backend slots in the active set (0 = reject); host order.
    pub backend_count: u16,
    /// `SERVICE_FLAG_*` bits.
    pub flags: u8,
    pub pad: u8,
}

impl ServiceValue {
    /// The `ferry_backends` index of `slot` of the active set, None
    /// outside the set.
    #[inline(always)]
    pub fn slot_index(&self, slot: u16) -> Option<u32> {
        if slot >= self.backend_count {
            return None;
        }
        self.backend_base.checked_add(u32::from(slot))
    }
}

/// Value of `ferry_backends`, an array indexed by slot (`u32`, host
/// order), memory-mapped by the agent (`BPF_F_MMAPABLE`) so a sync writes
/// backend sets without a system call per slot: where a slot sends traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct Backend {
    /// Backend (pod) address, network byte order.
    pub addr: [u8; 4],
    /// Backend port, host byte order.
    pub port: u16,
    pub pad: [u8; 2],
}

/// `CtKey::direction`: the packet travels client -> service (original)...
pub const CT_DIR_ORIGINAL: u8 = 0;
/// ...or backend -> client (reply).
pub const CT_DIR_REPLY: u8 = 1;
/// Not a flow: a reply key with this direction marks a source-NAT port being
/// taken over from a finished flow, so that two CPUs never both take it.
/// Lives for the few instructions of the takeover (the agent's garbage
/// collection removes one left behind after its expiry).
pub const CT_DIR_CLAIM: u8 = 2;

/// Key of `ferry_conntrack`: one direction of one flow, as the packet carries
/// it before translation (original: client -> frontend; reply: backend ->
/// client).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct CtKey {
    /// Source address, network byte order.
    pub src_addr: [u8; 4],
    /// Destination address, network byte order.
    pub dst_addr: [u8; 4],
    /// Source port, host byte order.
    pub src_port: u16,
    /// Destination port, host byte order.
    pub dst_port: u16,
    /// IP protocol number.
    pub protocol: u8,
    /// `CT_DIR_ORIGINAL` or `CT_DIR_REPLY` (`CT_DIR_CLAIM` for a takeover
    /// in progress).
    pub direction: u8,
    pub pad: [u8; 2],
}

/// Value of `ferry_conntrack`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct CtEntry {
    /// CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`) after which the entry
    /// is dead; host order.
    pub expires_ns: u64,
    /// Address to write: the backend (original direction, into the
    /// destination) or the frontend (reply direction, into the source).
    /// Network byte order.
    pub nat_addr: [u8; 4],
    /// Port to write, paired with `nat_addr`; host order.
    pub nat_port: u16,
    /// `conntrack::STATE_*`.
    pub state: u8,
    /// `conntrack::FLAG_*` bits.
    pub flags: u8,
    /// The service the flow was translated for; host order.
    pub service_id: u32,
    /// Flows that also rewrite the client's side (source NAT): a pod reaching
    /// itself through a Service (the hairpin address), or an external client
    /// sent to a backend on another node (this node's address). Original
    /// direction: the source to write; reply direction: the destination to
    /// restore (the client). 0.0.0.0 when there is no source NAT. Network
    /// order.
    pub peer_nat_addr: [u8; 4],
    /// The port paired with `peer_nat_addr` (meaningful only when that is
    /// set); host order.
    pub peer_nat_port: u16,
    /// Zero.
    pub pad: [u8; 6],
}

/// Key of `ferry_frags`: one fragmented datagram as it arrived, before any
/// translation (the source, destination, protocol and IP ID that RFC 791
/// makes unique per datagram, as Cilium keys its fragment map), and the
/// interface it arrived on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FragKey {
    /// Source address, network byte order.
    pub src_addr: [u8; 4],
    /// Destination address, network byte order.
    pub dst_addr: [u8; 4],
    /// ifindex the fragments arrive on (a pod's host-side veth, the uplink,
    /// the VXLAN device); host order. Only the sending pod's own veth
    /// carries its fragments, so a pod forging another pod's source address
    /// writes a record that pod's fragments never look up.
    pub ifindex: u32,
    /// IPv4 identification field, host byte order.
    pub ip_id: u16,
    /// IP protocol number.
    pub protocol: u8,
    pub pad: u8,
}

/// Value of `ferry_frags`: the ports the first fragment carried, so the
/// datagram's later fragments (no L4 header) find its conntrack entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FragPorts {
    /// CLOCK_MONOTONIC nanoseconds after which the record is ignored; host
    /// order.
    pub expires_ns: u64,
    /// The first fragment's source port, before translation; host order.
    pub src_port: u16,
    /// The first fragment's destination port, before translation; host
    /// order.
    pub dst_port: u16,
    /// The flow direction the first fragment was translated in
    /// (`CT_DIR_ORIGINAL` or `CT_DIR_REPLY`): the conntrack key to follow.
    pub direction: u8,
    pub pad: [u8; 3],
}

/// Value of `ferry_svc_names` (key: service id). Userspace metadata for the
/// CLI: the datapath never reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ServiceName {
    /// "namespace/name:port-name", UTF-8, NUL-padded (truncated if longer).
    pub name: [u8; 128],
}

impl ServiceName {
    pub fn new(s: &str) -> Self {
        let mut name = [0u8; 128];
        let mut len = s.len().min(128);
        while !s.is_char_boundary(len) {
            len -= 1;
        }
        name[..len].copy_from_slice(&s.as_bytes()[..len]);
        Self { name }
    }

    pub fn as_str(&self) -> &str {
        let end = self.name.iter().position(|b| *b == 0).unwrap_or(128);
        core::str::from_utf8(&self.name[..end]).unwrap_or("?")
    }
}

/// Source address written into hairpin flows, so a pod that is its own
/// backend sees a peer other than itself (link-local, never routed off the
/// node; the role kube-proxy's masquerade plays for hairpin traffic).
pub const HAIRPIN_SNAT_ADDR: [u8; 4] = [169, 254, 42, 1];

/// Key of `ferry_endpoints`: a pod on this node.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct EndpointKey {
    /// Pod address, network byte order.
    pub addr: [u8; 4],
}

/// Value of `ferry_endpoints`: how to put a packet straight into the pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Endpoint {
    /// ifindex of the pod's host-side veth (in the node's namespace); host order.
    pub ifindex: u32,
    /// Reserved; zero.
    pub flags: u32,
    /// MAC of the pod's eth0: the destination MAC of delivered frames.
    pub pod_mac: [u8; 6],
    /// MAC of the host-side veth: the source MAC of delivered frames.
    pub host_mac: [u8; 6],
}

/// Value of `ferry_pod_srcs`, keyed by the ifindex of a pod's host-side
/// veth (u32, host order): the one source address that veth may carry.
/// Kept apart from `ferry_endpoints` (keyed by address, for delivery) so the
/// check at pod ingress is one lookup by the device the packet came in on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct PodSource {
    /// The pod's address, network byte order.
    pub addr: [u8; 4],
}

/// Bytes of the `ferry_events` ring buffer (a power of two, pages).
pub const EVENTS_BYTES: u32 = 256 * 1024;
/// `MonitorConfig::flags`: send drop (and reject) events.
pub const MONITOR_DROPS: u32 = 1;
/// `MonitorConfig::flags`: send an event per new flow.
pub const MONITOR_FLOWS: u32 = 2;

/// Value of `ferry_monitor` (key 0): which events the datapath sends to
/// `ferry_events`. Zero (nobody listens): none, and the only cost is one
/// array lookup on a drop or a new flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct MonitorConfig {
    /// `MONITOR_*` bits; host order.
    pub flags: u32,
}

/// `MonitorEvent::kind`: a packet ferry dropped.
pub const EVENT_DROP: u8 = 1;
/// `MonitorEvent::kind`: a packet ferry answered with a reject (the
/// headers are of the answer it sent back: source and destination
/// swapped).
pub const EVENT_REJECT: u8 = 2;
/// `MonitorEvent::kind`: a new Service flow and its translation.
pub const EVENT_FLOW: u8 = 3;

/// One record of the `ferry_events` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct MonitorEvent {
    /// CLOCK_MONOTONIC ns; host order.
    pub ts_ns: u64,
    /// `outcome::*` of the packet (drops and rejects); host order.
    pub outcome: u32,
    /// Interface the packet came in on (0 when not known); host order.
    pub ifindex: u32,
    /// Flows: the frontend's service id (`ferry_svc_names`); host order.
    pub service_id: u32,
    /// Source and destination addresses as the packet arrived (a flow:
    /// the client and the frontend); network order.
    pub src_addr: [u8; 4],
    pub dst_addr: [u8; 4],
    /// Flows: the backend; network order.
    pub nat_addr: [u8; 4],
    /// Flows with source NAT: the new source; zero otherwise; network order.
    pub snat_addr: [u8; 4],
    /// Ports; host order (0 for other protocols).
    pub src_port: u16,
    pub dst_port: u16,
    pub nat_port: u16,
    pub snat_port: u16,
    /// `EVENT_*`.
    pub kind: u8,
    /// IP protocol number.
    pub protocol: u8,
    /// Zero.
    pub pad: [u8; 2],
}

/// `Route::mode`: how packets reach the node owning a pod CIDR.
/// Native routing: the packet goes out of the uplink as it is, to the
/// node's address as next hop (resolved with bpf_fib_lookup).
pub const ROUTE_MODE_NATIVE: u32 = 1;
/// VXLAN: the packet is encapsulated by the node's collect-metadata VXLAN
/// device, with the node's address as the tunnel's remote end.
pub const ROUTE_MODE_VXLAN: u32 = 2;

/// Value of `ferry_routes`, an LPM trie keyed by (prefix length, pod CIDR
/// address in network order): where another node's pods live.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Route {
    /// The node's address (its InternalIP), network byte order.
    pub node_addr: [u8; 4],
    /// `ROUTE_MODE_*`; host order.
    pub mode: u32,
    /// Native: the uplink's ifindex (the interface fib lookups start from);
    /// VXLAN: the VXLAN device's ifindex. Host order.
    pub ifindex: u32,
    /// VXLAN network identifier (VXLAN only, else zero); host order.
    pub vni: u32,
}

/// Value of `ferry_node` (an array of one, key 0): facts about this node
/// the datapath needs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct NodeConfig {
    /// The node's own address (its InternalIP): the source address of
    /// external flows sent to a backend on another node. 0.0.0.0 until the
    /// agent knows it. Network order.
    pub node_addr: [u8; 4],
    /// Source ports for those flows, inclusive; host order. 0: the
    /// defaults (`SNAT_PORT_MIN`..=`SNAT_PORT_MAX`).
    pub snat_port_min: u16,
    pub snat_port_max: u16,
}

/// `ServiceRange::kind`: the longest prefix of `ferry_svc_cidrs` matching
/// a destination says what it is.
/// Inside a service CIDR, held by no Service: dropped.
pub const SERVICE_RANGE_UNALLOCATED: u32 = 1;
/// A /32: a Service's ClusterIP. A port or protocol it does not serve is
/// rejected (ICMP port unreachable).
pub const SERVICE_RANGE_ALLOCATED: u32 = 2;

/// Value of `ferry_svc_cidrs`, an LPM trie keyed by (prefix length,
/// address in network order): the service CIDRs (`--service-cidr`) and,
/// as /32 entries, every allocated ClusterIP. Consulted only for packets
/// from pods that match no frontend and no tracked flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct ServiceRange {
    /// `SERVICE_RANGE_*`; host order.
    pub kind: u32,
}

/// Value of `ferry_svc_opts` (key: service id, host order): a frontend's
/// settings that do not fit in `ServiceValue`. Present only for frontends
/// whose flags need it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ServiceOptions {
    /// `sessionAffinityConfig.clientIP.timeoutSeconds`; host order.
    pub affinity_timeout_s: u32,
    /// Zero.
    pub pad: u32,
}

/// Key of `ferry_affinity`: one client of one frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct AffinityKey {
    /// `ServiceValue::service_id`; host order.
    pub service_id: u32,
    /// The client's address as it reached the frontend; network order.
    pub client_addr: [u8; 4],
}

/// Value of `ferry_affinity`: where the client's flows go.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct AffinityEntry {
    /// CLOCK_MONOTONIC nanoseconds of the client's last new flow; host
    /// order.
    pub last_used_ns: u64,
    /// The backend's address, network order.
    pub backend_addr: [u8; 4],
    /// The backend's port, host order.
    pub backend_port: u16,
    /// The backend's slot in the frontend's active set; host order. The
    /// datapath trusts the entry only while that slot still holds this
    /// backend (the agent renumbers entries when the set changes and removes
    /// those of backends that left).
    pub slot: u16,
}

/// Data of a `ferry_lb_ranges` key (an LPM trie: prefix length = 32 +
/// the range's prefix, so the service id always matches whole).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct SourceRangeKey {
    /// `ServiceValue::service_id`, network order (the trie matches bytes
    /// from the first, so the id must come whole and first).
    pub service_id: [u8; 4],
    /// The client prefix's address, network order.
    pub addr: [u8; 4],
}

/// Value of `ferry_lb_ranges`: the range admits its clients.
pub const SOURCE_RANGE_ALLOWED: u32 = 1;

/// Key of `ferry_sock_rev`: one backend a socket was translated to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct SockRevKey {
    /// The socket's cookie (`bpf_get_socket_cookie`): unique per socket for
    /// the kernel's lifetime, never reused; host order.
    pub cookie: u64,
    /// The backend's address, network order.
    pub backend_addr: [u8; 4],
    /// The backend's port, host order.
    pub backend_port: u16,
    pub pad: u16,
}

/// Value of `ferry_sock_rev`: the frontend the application asked for, so
/// `recvmsg` and `getpeername` report it instead of the backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct SockRevValue {
    /// The frontend's address, network order.
    pub frontend_addr: [u8; 4],
    /// The frontend's port, host order.
    pub frontend_port: u16,
    pub pad: u16,
    /// The frontend's service id (for terminating sockets whose backend
    /// left); host order.
    pub service_id: u32,
}

/// `SockConfig::flags`: translate pods' sockets too (`--socket-lb on`);
/// without it only sockets of the node's own network namespace are.
pub const SOCK_FLAG_PODS: u32 = 1;

/// Value of `ferry_sock_cfg` (an array of one, key 0): how the socket
/// programs tell the node's own processes from pods.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct SockConfig {
    /// Cookie of the node's network namespace (`SO_NETNS_COOKIE`, as
    /// `bpf_get_netns_cookie` returns it); 0 until the agent writes it,
    /// and while it is 0 no socket is translated. Host order.
    pub host_netns_cookie: u64,
    /// `SOCK_FLAG_*` bits; host order.
    pub flags: u32,
    /// Zero.
    pub pad: u32,
}

/// Value of `ferry_counters` (per-CPU array indexed by `outcome::*`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Reasons a packet for a frontend is dropped or rejected, as
/// `ServiceStats::drops` keeps them apart: the `outcome::*` of each slot.
/// The socket programs' refusals count under the tc outcome of the same
/// reason (a connect() refused for want of endpoints is a
/// `rejected_no_endpoints` of the Service).
pub const SERVICE_DROP_OUTCOMES: [u32; SERVICE_DROP_REASONS] = [
    crate::outcome::REJECTED_NO_ENDPOINTS,
    crate::outcome::DROP_NO_LOCAL_ENDPOINTS,
    crate::outcome::DROP_SOURCE_RANGE,
    crate::outcome::DROP_SNAT_PORTS_EXHAUSTED,
    crate::outcome::DROP_CONNTRACK_WRITE,
    crate::outcome::DROP_NO_BACKEND_SLOT,
    crate::outcome::DROP_REWRITE_FAILED,
    crate::outcome::DROP_REJECT_FAILED,
];
pub const SERVICE_DROP_REASONS: usize = 8;

/// The `ServiceStats::drops` slot of `outcome`, None for an outcome that
/// is no drop of a frontend's packet.
#[inline(always)]
pub const fn service_drop_slot(outcome: u32) -> Option<usize> {
    use crate::outcome::*;
    match outcome {
        REJECTED_NO_ENDPOINTS | SOCK_REJECTED_NO_ENDPOINTS => Some(0),
        DROP_NO_LOCAL_ENDPOINTS => Some(1),
        DROP_SOURCE_RANGE | SOCK_DROP_SOURCE_RANGE => Some(2),
        DROP_SNAT_PORTS_EXHAUSTED => Some(3),
        DROP_CONNTRACK_WRITE => Some(4),
        DROP_NO_BACKEND_SLOT => Some(5),
        DROP_REWRITE_FAILED => Some(6),
        DROP_REJECT_FAILED => Some(7),
        _ => None,
    }
}

/// Slots of `ferry_svc_stats`: one per service id (ids run from 1 to the
/// services map's capacity; slot 0 is never counted).
pub const SERVICE_STATS_SLOTS: u32 = SERVICES_MAX_ENTRIES + 1;

/// Value of `ferry_svc_stats` (per-CPU array indexed by service id, the
/// `ServiceValue::service_id` of the frontend): what the datapath of this
/// CPU did for one frontend since the agent gave out its id (the agent
/// zeroes a slot when it hands the id to a frontend). All host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ServiceStats {
    /// Packets of the frontend's flows that ferry translated, both
    /// directions (tc and XDP), and datagrams translated at sendmsg() by
    /// the socket programs.
    pub packets: u64,
    /// Their bytes as they arrived (the socket programs see no bytes).
    pub bytes: u64,
    /// Flows started to the frontend (tc, XDP) and connect() calls
    /// translated by the socket programs.
    pub new_connections: u64,
    /// Packets (or socket calls) for the frontend dropped or rejected, by
    /// reason: the slots of `SERVICE_DROP_OUTCOMES`.
    pub drops: [u64; SERVICE_DROP_REASONS],
}

const _: () = {
    assert!(size_of::<ServiceStats>() == 88);
    let mut i = 0;
    while i < SERVICE_DROP_REASONS {
        match service_drop_slot(SERVICE_DROP_OUTCOMES[i]) {
            Some(slot) => assert!(slot == i),
            None => panic!("every drop outcome has its own slot"),
        }
        i += 1;
    }
};

const _: () = {
    assert!(size_of::<ServiceKey>() == 8);
    assert!(size_of::<ServiceValue>() == 12);
    assert!(size_of::<Backend>() == 8);
    assert!(size_of::<CtKey>() == 16);
    assert!(size_of::<CtEntry>() == 32);
    assert!(size_of::<Counter>() == 16);
    assert!(size_of::<EndpointKey>() == 4);
    assert!(size_of::<Endpoint>() == 20);
    assert!(size_of::<PodSource>() == 4);
    assert!(size_of::<MonitorConfig>() == 4);
    assert!(size_of::<MonitorEvent>() == 48);
    assert!(size_of::<ServiceName>() == 128);
    assert!(size_of::<Route>() == 16);
    assert!(size_of::<NodeConfig>() == 8);
    assert!(size_of::<ServiceRange>() == 4);
    assert!(size_of::<ServiceOptions>() == 8);
    assert!(size_of::<AffinityKey>() == 8);
    assert!(size_of::<AffinityEntry>() == 16);
    assert!(size_of::<SourceRangeKey>() == 8);
    assert!(size_of::<FragKey>() == 16);
    assert!(size_of::<FragPorts>() == 16);
    assert!(size_of::<SockRevKey>() == 16);
    assert!(size_of::<SockRevValue>() == 12);
    assert!(size_of::<SockConfig>() == 16);
    // The LPM trie stores the value right after the 4-byte address.
    assert!(align_of::<Route>() <= 4);
    assert!(align_of::<ServiceRange>() <= 4);
};

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: all are `#[repr(C)]` and `bytemuck::Pod`: no padding, every bit
    // pattern valid.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for Route {}
    unsafe impl aya::Pod for NodeConfig {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for PodSource {}
    unsafe impl aya::Pod for MonitorConfig {}
    unsafe impl aya::Pod for MonitorEvent {}
    unsafe impl aya::Pod for ServiceName {}
    unsafe impl aya::Pod for ServiceRange {}
    unsafe impl aya::Pod for ServiceOptions {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityEntry {}
    unsafe impl aya::Pod for SourceRangeKey {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragPorts {}
    unsafe impl aya::Pod for SockRevKey {}
    unsafe impl aya::Pod for SockRevValue {}
    unsafe impl aya::Pod for SockConfig {}
    unsafe impl aya::Pod for ServiceStats {}
}

/// Protocol name for tools.
pub fn protocol_name(protocol: u8) -> &'static str {
    match protocol {
        PROTO_TCP => "TCP",
        PROTO_UDP => "UDP",
        PROTO_ICMP => "ICMP",
        _ => "other",
    }
}

#[cfg(test)]
mod frontend_filter_tests {
    extern crate std;
    use super::*;

    #[test]
    fn each_covered_scope_has_its_own_half_and_others_are_not_covered() {
        let half = FRONTEND_FILTER_WORDS / 2;
        for i in 0..100_000u32 {
            let addr = (0x0a60_0000u32 + i).to_be_bytes();
            let (w, bit) = frontend_filter_slot(addr, SCOPE_CLUSTER_IP).unwrap();
            assert!(w < half && bit.count_ones() == 1);
            let (w2, bit2) = frontend_filter_slot(addr, SCOPE_EXTERNAL_FROM_PODS).unwrap();
            assert_eq!((w2, bit2), (w + half, bit));
        }
        assert_eq!(frontend_filter_slot([10, 0, 0, 1], SCOPE_EXTERNAL), None);
    }

    #[test]
    fn ten_thousand_consecutive_cluster_ips_leave_the_bench_pods_clear() {
        let mut set = std::collections::BTreeSet::new();
        for i in 0..10_000u32 {
            let addr = (u32::from_be_bytes([10, 96, 0, 16]) + i).to_be_bytes();
            set.insert(frontend_filter_slot(addr, SCOPE_CLUSTER_IP).unwrap());
        }
        // Spread: almost no two ClusterIPs share a bit.
        assert!(set.len() > 9_800, "{}", set.len());
        for pod in [[10, 244, 1, 2], [10, 244, 1, 3]] {
            assert!(!set.contains(&frontend_filter_slot(pod, SCOPE_CLUSTER_IP).unwrap()));
        }
    }
}
