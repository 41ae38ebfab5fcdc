//! The maps, declared with BTF so bpftool prints named fields. Their names
//! come from `ferry_common`'s list (`with_map_names!`): the one arm below
//! names every map of it, in its order, so a map added there and not
//! declared here fails to compile.
use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    macros::btf_map,
};
use ferry_common::{
    AFFINITY_MAX_ENTRIES, AffinityEntry, AffinityKey, BACKENDS_MAX_ENTRIES, Backend,
    CONNTRACK_MAX_ENTRIES, Counter, CtEntry, CtKey, ENDPOINTS_MAX_ENTRIES, EVENTS_BYTES, Endpoint,
    EndpointKey, FRAGMENTS_MAX_ENTRIES, FRONTEND_FILTER_WORDS, FragKey, FragPorts, MonitorConfig,
    MonitorEvent, NodeConfig, PodSource, ROUTES_MAX_ENTRIES, Route, SERVICE_RANGES_MAX_ENTRIES,
    SERVICE_STATS_SLOTS, SERVICES_MAX_ENTRIES, SOCK_REVERSE_MAX_ENTRIES, SOURCE_RANGES_MAX_ENTRIES,
    ServiceKey, ServiceName, ServiceOptions, ServiceRange, ServiceStats, ServiceValue, SockConfig,
    SockRevKey, SockRevValue, SourceRangeKey, outcome, with_map_names,
};

macro_rules! declare_maps {
    (
        MAP_SERVICES = $services:tt,
        MAP_BACKENDS = $backends:tt,
        MAP_CONNTRACK = $conntrack:tt,
        MAP_COUNTERS = $counters:tt,
        MAP_ENDPOINTS = $endpoints:tt,
        MAP_SERVICE_NAMES = $service_names:tt,
        MAP_ROUTES = $routes:tt,
        MAP_NODE = $node:tt,
        MAP_SERVICE_RANGES = $service_ranges:tt,
        MAP_AFFINITY = $affinity:tt,
        MAP_SERVICE_OPTIONS = $service_options:tt,
        MAP_SOURCE_RANGES = $source_ranges:tt,
        MAP_FRAGMENTS = $fragments:tt,
        MAP_SOCK_REVERSE = $sock_reverse:tt,
        MAP_SOCK_CONFIG = $sock_config:tt,
        MAP_FRONTEND_FILTER = $frontend_filter:tt,
        MAP_POD_SOURCES = $pod_sources:tt,
        MAP_EVENTS = $events:tt,
        MAP_MONITOR = $monitor:tt,
        MAP_SERVICE_STATS = $service_stats:tt,
    ) => {
        /// Not preallocated (as the other maps only the agent writes):
        /// their memory follows the Services, and a lookup costs the same.
        #[btf_map(name = $services)]
        pub static SERVICES: HashMap<
            ServiceKey,
            ServiceValue,
            { SERVICES_MAX_ENTRIES as usize },
            { aya_ebpf::bindings::BPF_F_NO_PREALLOC as usize },
        > = HashMap::new();

        #[btf_map(name = $backends)]
        // Memory-mapped by the agent, which writes backend sets straight
        // into it: a sync of a million slots costs no system call per slot.
        pub static BACKENDS: Array<
            Backend,
            { BACKENDS_MAX_ENTRIES as usize },
            { aya_ebpf::bindings::BPF_F_MMAPABLE as usize },
        > = Array::new();

        #[btf_map(name = $conntrack)]
        pub static CONNTRACK: LruHashMap<CtKey, CtEntry, { CONNTRACK_MAX_ENTRIES as usize }> =
            LruHashMap::new();

        #[btf_map(name = $counters)]
        pub static COUNTERS: PerCpuArray<Counter, { outcome::COUNTER_SLOTS as usize }> =
            PerCpuArray::new();

        #[btf_map(name = $endpoints)]
        pub static ENDPOINTS: HashMap<EndpointKey, Endpoint, { ENDPOINTS_MAX_ENTRIES as usize }> =
            HashMap::new();

        /// Names of services for the CLI; only userspace reads it. Declared
        /// here so the loader creates and pins it with the rest.
        #[btf_map(name = $service_names)]
        pub static SERVICE_NAMES: HashMap<
            u32,
            ServiceName,
            { SERVICES_MAX_ENTRIES as usize },
            { aya_ebpf::bindings::BPF_F_NO_PREALLOC as usize },
        > = HashMap::new();

        /// Other nodes' pod CIDRs -> how to reach the node.
        #[btf_map(name = $routes)]
        pub static ROUTES: LpmTrie<[u8; 4], Route, { ROUTES_MAX_ENTRIES as usize }> =
            LpmTrie::new();

        /// This node's own facts (key 0).
        #[btf_map(name = $node)]
        pub static NODE: Array<NodeConfig, 1> = Array::new();

        /// Service CIDRs and allocated ClusterIPs (/32): what a pod's
        /// packet that matches no frontend is.
        #[btf_map(name = $service_ranges)]
        pub static SERVICE_RANGES: LpmTrie<
            [u8; 4],
            ServiceRange,
            { SERVICE_RANGES_MAX_ENTRIES as usize },
        > = LpmTrie::new();

        /// (frontend, client address) -> the backend of the client's last
        /// new flow (sessionAffinity ClientIP).
        #[btf_map(name = $affinity)]
        pub static AFFINITY: LruHashMap<
            AffinityKey,
            AffinityEntry,
            { AFFINITY_MAX_ENTRIES as usize },
        > = LruHashMap::new();

        /// Service id -> the settings that do not fit in `ServiceValue`.
        #[btf_map(name = $service_options)]
        pub static SERVICE_OPTIONS: HashMap<
            u32,
            ServiceOptions,
            { SERVICES_MAX_ENTRIES as usize },
            { aya_ebpf::bindings::BPF_F_NO_PREALLOC as usize },
        > = HashMap::new();

        /// (service id, client prefix) -> admitted: loadBalancerSourceRanges.
        #[btf_map(name = $source_ranges)]
        pub static SOURCE_RANGES: LpmTrie<
            SourceRangeKey,
            u32,
            { SOURCE_RANGES_MAX_ENTRIES as usize },
        > = LpmTrie::new();

        /// Fragmented datagrams of Service flows -> the ports their first
        /// fragment carried (`fragment`).
        #[btf_map(name = $fragments)]
        pub static FRAGMENTS: LruHashMap<FragKey, FragPorts, { FRAGMENTS_MAX_ENTRIES as usize }> =
            LruHashMap::new();

        /// (socket cookie, backend) -> the frontend the socket asked for
        /// (`sock`).
        #[btf_map(name = $sock_reverse)]
        pub static SOCK_REVERSE: LruHashMap<
            SockRevKey,
            SockRevValue,
            { SOCK_REVERSE_MAX_ENTRIES as usize },
        > = LruHashMap::new();

        /// How the socket programs tell the node's processes from pods
        /// (key 0).
        #[btf_map(name = $sock_config)]
        pub static SOCK_CONFIG: Array<SockConfig, 1> = Array::new();

        /// Which addresses may hold a frontend, per scope
        /// (`ferry_common::frontend_filter_slot`): a clear bit spares the
        /// `SERVICES` probe.
        #[btf_map(name = $frontend_filter)]
        // Memory-mapped by the agent, which sets and clears bits in place.
        pub static FRONTEND_FILTER: Array<
            u64,
            { FRONTEND_FILTER_WORDS as usize },
            { aya_ebpf::bindings::BPF_F_MMAPABLE as usize },
        > = Array::new();

        /// ifindex of a pod's host-side veth -> the pod's address: the only
        /// IPv4 source that veth may carry (`from_pod`).
        #[btf_map(name = $pod_sources)]
        pub static POD_SOURCES: HashMap<u32, PodSource, { ENDPOINTS_MAX_ENTRIES as usize }> =
            HashMap::new();

        /// Drops, rejects and new flows for `ferry-agent monitor`, sent only
        /// while `MONITOR` asks for them (`monitor`).
        #[btf_map(name = $events)]
        pub static EVENTS: RingBuf<MonitorEvent, { EVENTS_BYTES as usize }> = RingBuf::new();

        /// Which events a listener wants (key 0).
        #[btf_map(name = $monitor)]
        pub static MONITOR: Array<MonitorConfig, 1> = Array::new();

        /// Per-frontend packets, bytes, new flows and drops, indexed by
        /// service id (`service_stats`).
        #[btf_map(name = $service_stats)]
        pub static SERVICE_STATS: PerCpuArray<ServiceStats, { SERVICE_STATS_SLOTS as usize }> =
            PerCpuArray::new();
    };
}

with_map_names!(declare_maps);

/// Scratch space for `bpf_fib_lookup`'s argument (`fib`), per CPU: not
/// pinned, nothing outlives a program run in it.
#[btf_map]
pub static FIB_SCRATCH: PerCpuArray<aya_ebpf::bindings::bpf_fib_lookup, 1> = PerCpuArray::new();
