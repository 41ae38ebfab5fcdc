//! What each of ferry's pinned maps holds in kernel memory, as the kernel
//! accounts it (the `memlock` line of the map fd's fdinfo, which bpftool
//! prints as `memlock`): what `inspect maps`, `/metrics` and the benchmark
//! report.
use std::{
    os::fd::{AsFd, AsRawFd},
    path::Path,
};

use aya::maps::MapData;
use ferry_common::PINNED_MAPS;

/// One pinned map's size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapMemory {
    pub name: &'static str,
    /// The kernel's name of its type (`hash`, `lru_hash`, ...).
    pub map_type: String,
    pub max_entries: u32,
    /// Bytes of kernel memory the map holds (0 when the kernel does not say).
    pub memory_bytes: u64,
}

/// The `memlock:` value of an fdinfo text.
pub fn memlock_of(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Bytes of kernel memory `map` holds.
pub fn memlock(map: &MapData) -> Option<u64> {
    let fd = map.fd().as_fd().as_raw_fd();
    memlock_of(&std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?)
}

/// Every one of ferry's maps pinned under `pin_dir` (those missing left
/// out), in `PINNED_MAPS` order.
pub fn pinned(pin_dir: &Path) -> Vec<MapMemory> {
    PINNED_MAPS
        .iter()
        .filter_map(|name| {
            let map = MapData::from_pin(pin_dir.join(name)).ok()?;
            let info = map.info().ok()?;
            Some(MapMemory {
                name,
                map_type: info
                    .map_type()
                    .map_or_else(|_| "?".to_string(), |t| format!("{t:?}")),
                max_entries: info.max_entries(),
                memory_bytes: memlock(&map).unwrap_or(0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::memlock_of;

    #[test]
    fn memlock_is_read_from_fdinfo() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t1\nkey_size:\t8\nvalue_size:\t8\nmax_entries:\t16384\nmap_flags:\t0x1\nmap_extra:\t0x0\nmemlock:\t267584\nmap_id:\t42\n";
        assert_eq!(memlock_of(text), Some(267_584));
        assert_eq!(memlock_of("pos:\t0\n"), None);
    }
}
