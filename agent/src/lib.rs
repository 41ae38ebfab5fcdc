//! ferry's node agent as a library: the loader for the kernel programs and
//! the typed API over their pinned maps. The agent binary, the inspection CLI
//! and the tests all go through this code.

pub mod bpffs;
pub mod cni;
pub mod healthcheck;
pub mod inspect;
pub mod ipcmd;
pub mod loader;
pub mod maps;
pub mod metrics;
pub mod model;
pub mod net;
pub mod reserved_ports;
pub mod routing;
pub mod run;
pub mod source;
pub mod sync;
pub mod tc;

/// The kernel programs, built with BTF by build.rs and embedded here.
pub static DATAPLANE_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("FERRY_EBPF_OBJECT"));

/// Default directory for pinned maps.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ferry";
