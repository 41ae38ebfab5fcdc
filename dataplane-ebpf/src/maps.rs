//! The maps, declared with BTF so bpftool prints named fields.
use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use ferry_common::{
    BACKENDS_MAX_ENTRIES, Backend, BackendKey, CONNTRACK_MAX_ENTRIES, Counter, CtEntry, CtKey,
    ENDPOINTS_MAX_ENTRIES, Endpoint, EndpointKey, NodeConfig, ROUTES_MAX_ENTRIES, Route,
    SERVICES_MAX_ENTRIES, ServiceKey, ServiceName, ServiceValue, outcome,
};

#[btf_map(name = "ferry_services")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue, { SERVICES_MAX_ENTRIES as usize }> =
    HashMap::new();

#[btf_map(name = "ferry_backends")]
pub static BACKENDS: HashMap<BackendKey, Backend, { BACKENDS_MAX_ENTRIES as usize }> =
    HashMap::new();

#[btf_map(name = "ferry_conntrack")]
pub static CONNTRACK: LruHashMap<CtKey, CtEntry, { CONNTRACK_MAX_ENTRIES as usize }> =
    LruHashMap::new();

#[btf_map(name = "ferry_counters")]
pub static COUNTERS: PerCpuArray<Counter, { outcome::COUNTER_SLOTS as usize }> = PerCpuArray::new();

#[btf_map(name = "ferry_endpoints")]
pub static ENDPOINTS: HashMap<EndpointKey, Endpoint, { ENDPOINTS_MAX_ENTRIES as usize }> =
    HashMap::new();

/// Names of services for the CLI; only userspace reads it. Declared here so
/// the loader creates and pins it with the rest.
#[btf_map(name = "ferry_svc_names")]
pub static SERVICE_NAMES: HashMap<
    u32,
    ServiceName,
    { SERVICES_MAX_ENTRIES as usize },
    { aya_ebpf::bindings::BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

/// Other nodes' pod CIDRs -> how to reach the node.
#[btf_map(name = "ferry_routes")]
pub static ROUTES: LpmTrie<[u8; 4], Route, { ROUTES_MAX_ENTRIES as usize }> = LpmTrie::new();

/// This node's own facts (key 0).
#[btf_map(name = "ferry_node")]
pub static NODE: Array<NodeConfig, 1> = Array::new();
