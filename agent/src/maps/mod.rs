//! Typed access to ferry's pinned maps. Everything opens the maps by their
//! pin path, so the agent, the CLI (while the agent runs or after it stopped)
//! and the tests share one code path.
use std::path::Path;

use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::maps::{Map, MapData, MapError, lpm_trie};

use crate::net::Ipv4Net;

pub mod affinity;
pub mod backend_slots;
pub mod batch;
pub mod conntrack;
pub mod counters;
pub mod endpoints;
pub mod frontend_filter;
pub mod mapped;
pub mod memory;
pub mod node;
pub mod routes;
pub mod service_ranges;
pub mod service_stats;
pub mod services;

pub use affinity::AffinityTable;
pub use conntrack::Conntrack;
pub use counters::Counters;
pub use endpoints::Endpoints;
pub use frontend_filter::FrontendFilter;
pub use node::NodeMap;
pub use routes::Routes;
pub use service_ranges::ServiceRanges;
pub use service_stats::ServiceStatsTable;
pub use services::{ServiceTable, SyncError};

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "cannot open pinned map {path}: {source}; is the agent loaded with this --pin-dir (run it once, or check the path)?"
    )]
    Open { path: String, source: MapError },
    #[error(transparent)]
    Batch(#[from] batch::BatchError),
    #[error(transparent)]
    Slots(#[from] mapped::MappedError),
}

/// Open the map pinned as `name` under `pin_dir` as the typed map `T`
/// (an aya `HashMap`, `Array`, ...), which checks its type and sizes.
pub(crate) fn open_pinned<T>(pin_dir: &Path, name: &str) -> Result<T, OpenError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = pin_dir.join(name);
    let err = |source| OpenError::Open {
        path: path.display().to_string(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(err)?;
    T::try_from(Map::from_map_data(data).map_err(err)?).map_err(err)
}

/// The LPM trie key of `net` (its network address).
pub(crate) fn lpm_key(net: &Ipv4Net) -> lpm_trie::Key<[u8; 4]> {
    lpm_trie::Key::new(u32::from(net.prefix), net.network().octets())
}

/// Every entry of an LPM trie keyed by IPv4 prefix.
pub(crate) fn lpm_entries<V: aya::Pod>(
    trie: &lpm_trie::LpmTrie<MapData, [u8; 4], V>,
) -> Result<BTreeMap<Ipv4Net, V>, MapError> {
    let mut out = BTreeMap::new();
    for item in trie.iter() {
        let (k, v) = item?;
        let net = Ipv4Net {
            addr: Ipv4Addr::from(k.data()),
            prefix: k.prefix_len() as u8,
        };
        out.insert(net, v);
    }
    Ok(out)
}

/// A lookup or delete of a key that is not there. aya reports it as
/// `KeyNotFound` from lookups and as ENOENT from deletes.
pub(crate) fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

/// A lookup's value, None when the key is not there.
pub(crate) fn found<T>(looked_up: Result<T, MapError>) -> Result<Option<T>, MapError> {
    match looked_up {
        Ok(value) => Ok(Some(value)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A removal where a key already gone is fine.
pub(crate) fn missing_is_fine(removed: Result<(), MapError>) -> Result<(), MapError> {
    match removed {
        Err(e) if is_not_found(&e) => Ok(()),
        other => other,
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
