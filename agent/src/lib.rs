//! ferry's node agent as a library: the loader for the kernel programs, the
//! typed API over their pinned maps, and the agent itself as a straight
//! line: `source` -> `plan` -> `reconcile`. The agent binary, the
//! inspection CLI and the tests all go through this code.

pub mod alloc;
pub mod bpffs;
pub mod cni;
pub mod config;
pub mod debug;
/// The parsers' fuzz targets (`fuzz/`), shared with their corpus test.
pub mod fuzzing;
pub mod healthcheck;
pub mod http_server;
pub mod inspect;
pub mod latency;
pub mod loader;
pub mod maps;
pub mod metrics;
pub mod monitor;
pub mod net;
pub mod pcap;
pub mod plan;
pub mod reconcile;
pub mod reserved_ports;
pub mod rtnl;
pub mod run;
pub mod socklb;
pub mod sockterm;
pub mod source;
pub mod tc;
pub mod trace;

/// The kernel programs, built with BTF by build.rs and embedded here.
pub static DATAPLANE_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("FERRY_EBPF_OBJECT"));

/// Default directory for pinned maps.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ferry";
