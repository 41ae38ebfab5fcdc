//! Loading the kernel programs with every map pinned under one directory.
//!
//! Maps already pinned there are adopted, not recreated: an agent restart or
//! upgrade keeps the services, backends and conntrack entries the datapath is
//! using, so established connections survive it.
use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, MapType, lpm_trie},
    programs::{CgroupSockAddr, Program, ProgramError, SchedClassifier, Xdp},
};
use ferry_common::{
    AFFINITY_MAX_ENTRIES, AffinityEntry, AffinityKey, BACKENDS_MAX_ENTRIES, Backend,
    CONNTRACK_MAX_ENTRIES, Counter, CtEntry, CtKey, ENDPOINTS_MAX_ENTRIES, Endpoint, EndpointKey,
    FRAGMENTS_MAX_ENTRIES, FRONTENDS_LIMIT, FragKey, FragPorts, MAP_AFFINITY, MAP_BACKENDS,
    MAP_CONNTRACK, MAP_COUNTERS, MAP_ENDPOINTS, MAP_FRAGMENTS, MAP_NODE, MAP_ROUTES,
    MAP_SERVICE_NAMES, MAP_SERVICE_OPTIONS, MAP_SERVICE_RANGES, MAP_SERVICES, MAP_SOURCE_RANGES,
    NodeConfig, PIN_PROG_FROM_NETWORK, PIN_PROG_FROM_POD, PIN_PROG_XDP_UPLINK, PINNED_MAPS,
    ROUTES_MAX_ENTRIES, Route, SERVICE_CIDR_ENTRIES, SERVICES_MAX_ENTRIES,
    SOURCE_RANGES_MAX_ENTRIES, ServiceKey, ServiceName, ServiceOptions, ServiceRange, ServiceValue,
    SourceRangeKey, outcome,
};
use ferry_common::{
    DEBUG_SECTION, EVENTS_BYTES, FRONTEND_FILTER_WORDS, MAP_EVENTS, MAP_FRONTEND_FILTER,
    MAP_MONITOR, MAP_POD_SOURCES, MAP_SERVICE_STATS, MAP_SOCK_CONFIG, MAP_SOCK_REVERSE,
    MonitorConfig, PIN_DEBUG, PIN_PROG_SOCK_CONNECT4, PIN_PROG_SOCK_GETPEERNAME4,
    PIN_PROG_SOCK_RECVMSG4, PIN_PROG_SOCK_SENDMSG4, PodSource, SOCK_REVERSE_MAX_ENTRIES,
    ServiceStats, SockConfig, SockRevKey, SockRevValue,
};

use crate::bpffs::{BpffsError, ensure_on_bpffs, ensure_private};

/// Name of the tc program on a pod's host-side veth.
pub const PROG_FROM_POD: &str = "ferry_from_pod";
pub const PROG_FROM_NETWORK: &str = "ferry_from_network";
pub const PROG_XDP_UPLINK: &str = "ferry_xdp_uplink";
/// The socket programs (cgroup v2 sock_addr), with the names they are
/// pinned under: the agent attaches them to `--cgroup-root`.
pub const SOCK_PROGRAMS: [(&str, &str); 4] = [
    ("ferry_sock_connect4", PIN_PROG_SOCK_CONNECT4),
    ("ferry_sock_sendmsg4", PIN_PROG_SOCK_SENDMSG4),
    ("ferry_sock_recvmsg4", PIN_PROG_SOCK_RECVMSG4),
    ("ferry_sock_getpeername4", PIN_PROG_SOCK_GETPEERNAME4),
];
/// The programs of the object, with the names they are pinned under.
const PROGRAMS: [(&str, &str); 2] = [
    (PROG_FROM_POD, PIN_PROG_FROM_POD),
    (PROG_FROM_NETWORK, PIN_PROG_FROM_NETWORK),
];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error("cannot create pin directory {path}: {source}")]
    PinDir {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "pinned map {path} does not match this ferry build ({detail}); it was left by another version: remove it (`rm {path}`) and restart, which drops tracked connections"
    )]
    IncompatiblePin { path: String, detail: String },
    #[error(
        "cannot replace the pinned counters {path}, left by another version: {source}; remove it (`rm {path}`) and restart"
    )]
    ReplaceCounters {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open pinned map {path}: {source}")]
    OpenPin {
        path: String,
        source: aya::maps::MapError,
    },
    #[error(
        "loading the kernel programs failed: {0}; is this root with CAP_BPF on a kernel >= 6.6?"
    )]
    Load(#[from] aya::EbpfError),
    #[error("cannot pin the program at {path}: {detail}")]
    PinProgram { path: String, detail: String },
    #[error("cannot pin the debug switch at {path}: {detail}")]
    PinDebug { path: String, detail: String },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("filling the frontend filter from the pinned services: {0}")]
    FrontendFilter(String),
}

/// What a pinned map must look like to be adopted.
struct MapShape {
    name: &'static str,
    map_type: MapType,
    key_size: usize,
    value_size: usize,
    max_entries: u32,
    /// Holds statistics only: a pinned map of another layout is replaced
    /// (counts restart from zero) rather than refused.
    replaceable: bool,
}

impl MapShape {
    /// `name`, a `map_type` of `K` -> `V` with `max_entries`.
    fn of<K, V>(name: &'static str, map_type: MapType, max_entries: u32) -> Self {
        Self {
            name,
            map_type,
            key_size: size_of::<K>(),
            value_size: size_of::<V>(),
            max_entries,
            replaceable: false,
        }
    }
}

/// The capacities of the maps whose size follows the agent's options
/// (`--max-frontends` and the others); the rest are fixed by the programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// `ferry_services` (and the maps keyed by service id: names, options,
    /// per-frontend stats, one more slot; the service ranges, 64 more).
    pub frontends: u32,
    /// `ferry_backends`: the active and the standby run of every
    /// frontend's backend slots.
    pub backends: u32,
    /// `ferry_conntrack`: two entries per flow.
    pub conntrack: u32,
    /// `ferry_affinity`: (frontend, client) pairs with ClientIP affinity.
    pub affinity: u32,
    /// `ferry_sock_rev`: (socket, backend) pairs translated at connect().
    pub sock_reverse: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            frontends: SERVICES_MAX_ENTRIES,
            backends: BACKENDS_MAX_ENTRIES,
            conntrack: CONNTRACK_MAX_ENTRIES,
            affinity: AFFINITY_MAX_ENTRIES,
            sock_reverse: SOCK_REVERSE_MAX_ENTRIES,
        }
    }
}

impl MapSizes {
    /// Sizes the programs and the kernel can take, or what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.frontends == 0 || self.frontends > FRONTENDS_LIMIT {
            return Err(format!(
                "--max-frontends {}: must be between 1 and {FRONTENDS_LIMIT}",
                self.frontends
            ));
        }
        for (flag, n) in [
            ("--max-backends", self.backends),
            ("--max-conntrack-entries", self.conntrack),
            ("--max-affinity-entries", self.affinity),
            ("--max-socket-entries", self.sock_reverse),
        ] {
            if n == 0 || n > 1 << 28 {
                return Err(format!("{flag} {n}: must be between 1 and {}", 1u32 << 28));
            }
        }
        Ok(())
    }

    /// The per-frontend stats array's slots (ids from 1).
    pub fn stats_slots(&self) -> u32 {
        self.frontends + 1
    }
}

/// Every map of `PINNED_MAPS`, in its order, as the kernel object declares
/// it (dataplane-ebpf/src/maps.rs), sized by `sizes`.
fn expected_shapes(sizes: &MapSizes) -> [MapShape; PINNED_MAPS.len()] {
    use MapType::{Array, Hash, LpmTrie, LruHash, PerCpuArray, RingBuf};
    let counters = MapShape::of::<u32, Counter>(MAP_COUNTERS, PerCpuArray, outcome::COUNTER_SLOTS);
    [
        MapShape::of::<ServiceKey, ServiceValue>(MAP_SERVICES, Hash, sizes.frontends),
        MapShape::of::<u32, Backend>(MAP_BACKENDS, Array, sizes.backends),
        MapShape::of::<CtKey, CtEntry>(MAP_CONNTRACK, LruHash, sizes.conntrack),
        MapShape {
            replaceable: true,
            ..counters
        },
        MapShape::of::<EndpointKey, Endpoint>(MAP_ENDPOINTS, Hash, ENDPOINTS_MAX_ENTRIES),
        MapShape::of::<u32, ServiceName>(MAP_SERVICE_NAMES, Hash, sizes.frontends),
        MapShape::of::<lpm_trie::Key<[u8; 4]>, Route>(MAP_ROUTES, LpmTrie, ROUTES_MAX_ENTRIES),
        MapShape::of::<u32, NodeConfig>(MAP_NODE, Array, 1),
        MapShape::of::<lpm_trie::Key<[u8; 4]>, ServiceRange>(
            MAP_SERVICE_RANGES,
            LpmTrie,
            sizes.frontends + SERVICE_CIDR_ENTRIES,
        ),
        MapShape::of::<AffinityKey, AffinityEntry>(MAP_AFFINITY, LruHash, sizes.affinity),
        MapShape::of::<u32, ServiceOptions>(MAP_SERVICE_OPTIONS, Hash, sizes.frontends),
        MapShape::of::<lpm_trie::Key<SourceRangeKey>, u32>(
            MAP_SOURCE_RANGES,
            LpmTrie,
            SOURCE_RANGES_MAX_ENTRIES,
        ),
        MapShape::of::<FragKey, FragPorts>(MAP_FRAGMENTS, LruHash, FRAGMENTS_MAX_ENTRIES),
        MapShape::of::<SockRevKey, SockRevValue>(MAP_SOCK_REVERSE, LruHash, sizes.sock_reverse),
        MapShape::of::<u32, SockConfig>(MAP_SOCK_CONFIG, Array, 1),
        MapShape::of::<u32, u64>(MAP_FRONTEND_FILTER, Array, FRONTEND_FILTER_WORDS),
        MapShape::of::<u32, PodSource>(MAP_POD_SOURCES, Hash, ENDPOINTS_MAX_ENTRIES),
        MapShape::of::<(), ()>(MAP_EVENTS, RingBuf, EVENTS_BYTES),
        MapShape::of::<u32, MonitorConfig>(MAP_MONITOR, Array, 1),
        // Counts only: one of another size is replaced.
        MapShape {
            replaceable: true,
            ..MapShape::of::<u32, ServiceStats>(MAP_SERVICE_STATS, PerCpuArray, sizes.stats_slots())
        },
    ]
}

/// Refuse to adopt a pinned map whose layout differs from this build's: the
/// programs would read its entries with the wrong layout.
fn check_pinned(pin_dir: &Path, sizes: &MapSizes) -> Result<(), LoadError> {
    for shape in expected_shapes(sizes) {
        let path = pin_dir.join(shape.name);
        if !path.exists() {
            continue;
        }
        let display = path.display().to_string();
        let data = MapData::from_pin(&path).map_err(|source| LoadError::OpenPin {
            path: display.clone(),
            source,
        })?;
        let info = data.info().map_err(|source| LoadError::OpenPin {
            path: display.clone(),
            source,
        })?;
        let map_type = info.map_type().ok();
        let found = (
            map_type,
            info.key_size() as usize,
            info.value_size() as usize,
            info.max_entries(),
        );
        let want = (
            Some(shape.map_type),
            shape.key_size,
            shape.value_size,
            shape.max_entries,
        );
        if found != want && shape.replaceable {
            // A release with another number of outcomes replaces the map
            // instead of refusing to start. Programs still attached keep
            // counting into the old one until their links are pointed at
            // the new programs.
            std::fs::remove_file(&path).map_err(|source| LoadError::ReplaceCounters {
                path: display.clone(),
                source,
            })?;
            let replaced = display;
            tracing::warn!(
                pin = %replaced,
                "replaced the pinned packet counters of another layout; counts start from zero"
            );
            continue;
        }
        if (found.0, found.1, found.2) == (want.0, want.1, want.2) && found.3 != want.3 {
            // Only the capacity differs (the options changed, or an
            // upgrade changed a default): the pinned map is kept, with its
            // entries; tracked connections survive.
            let pin = display;
            tracing::warn!(
                %pin,
                pinned = found.3,
                asked = want.3,
                "keeping the pinned map at its capacity, with its entries; to resize it, stop the agent, remove the pin and start again (its entries are lost: for conntrack, established connections through Services)"
            );
            continue;
        }
        if found != want {
            return Err(LoadError::IncompatiblePin {
                path: display,
                detail: format!(
                    "found type {:?} key {} value {} entries {}, expected {:?} key {} value {} entries {}",
                    found.0, found.1, found.2, found.3, want.0, want.1, want.2, want.3
                ),
            });
        }
    }
    Ok(())
}

/// The loaded kernel programs and the directory their maps are pinned in.
pub struct Dataplane {
    pub ebpf: Ebpf,
    pub pin_dir: PathBuf,
}

impl Dataplane {
    /// Load the programs, adopting or creating+pinning every map under
    /// `pin_dir`. Programs are loaded into the kernel but not attached.
    pub fn load(pin_dir: &Path) -> Result<Self, LoadError> {
        Self::load_sized(pin_dir, &MapSizes::default())
    }

    /// `load`, creating the maps that are not pinned yet at `sizes`.
    pub fn load_sized(pin_dir: &Path, sizes: &MapSizes) -> Result<Self, LoadError> {
        ensure_on_bpffs(pin_dir)?;
        std::fs::create_dir_all(pin_dir).map_err(|source| LoadError::PinDir {
            path: pin_dir.display().to_string(),
            source,
        })?;
        ensure_private(pin_dir)?;
        check_pinned(pin_dir, sizes)?;
        let shapes = expected_shapes(sizes);
        let paths: Vec<(&'static str, PathBuf)> = shapes
            .iter()
            .map(|shape| (shape.name, pin_dir.join(shape.name)))
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        // A map created now gets the size asked for (a pinned one keeps
        // its own: `check_pinned`). The ring buffer's size is its bytes.
        for shape in shapes.iter().filter(|s| s.map_type != MapType::RingBuf) {
            loader.map_max_entries(shape.name, shape.max_entries);
        }
        let mut ebpf = loader.load(crate::DATAPLANE_OBJECT)?;
        for (name, _) in PROGRAMS {
            let failed = |source| LoadError::Program { name, source };
            typed::<SchedClassifier>(&mut ebpf, name)
                .map_err(failed)?
                .load()
                .map_err(failed)?;
        }
        let failed = |source| LoadError::Program {
            name: PROG_XDP_UPLINK,
            source,
        };
        typed::<Xdp>(&mut ebpf, PROG_XDP_UPLINK)
            .map_err(failed)?
            .load()
            .map_err(failed)?;
        for (name, _) in SOCK_PROGRAMS {
            let failed = |source| LoadError::Program { name, source };
            typed::<CgroupSockAddr>(&mut ebpf, name)
                .map_err(failed)?
                .load()
                .map_err(failed)?;
        }
        // The frontend filter must cover every frontend already pinned
        // before a program of this build is attached (an upgrade creates it
        // empty next to a full services map).
        let filter_failed = |e: &dyn std::fmt::Display| LoadError::FrontendFilter(e.to_string());
        crate::maps::ServiceTable::open(pin_dir)
            .map_err(|e| filter_failed(&e))?
            .sync_frontend_filter();
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    /// Pin the from-pod program under the pin directory, replacing an older
    /// pin, so the CNI plugin attaches this build's program to new pods.
    pub fn pin_programs(&mut self) -> Result<(), LoadError> {
        self.pin_debug_switch()?;
        for (name, pin_name) in PROGRAMS {
            let path = self.pin_dir.join(pin_name);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(LoadError::PinDir {
                        path: path.display().to_string(),
                        source: e,
                    });
                }
                _ => {}
            }
            self.program(name)
                .pin(&path)
                .map_err(|e| LoadError::PinProgram {
                    path: path.display().to_string(),
                    detail: e.to_string(),
                })?;
        }
        for (name, pin_name) in SOCK_PROGRAMS {
            let path = self.pin_dir.join(pin_name);
            let _ = std::fs::remove_file(&path);
            typed::<CgroupSockAddr>(&mut self.ebpf, name)
                .expect("ferry's socket programs are sock_addr programs")
                .pin(&path)
                .map_err(|e| LoadError::PinProgram {
                    path: path.display().to_string(),
                    detail: e.to_string(),
                })?;
        }
        let path = self.pin_dir.join(PIN_PROG_XDP_UPLINK);
        let _ = std::fs::remove_file(&path);
        self.xdp_program()
            .pin(&path)
            .map_err(|e| LoadError::PinProgram {
                path: path.display().to_string(),
                detail: e.to_string(),
            })?;
        Ok(())
    }

    /// One of the object's tc programs, loaded.
    pub fn program(&mut self, name: &str) -> &mut SchedClassifier {
        typed(&mut self.ebpf, name).expect("ferry's tc programs are classifiers")
    }

    /// The uplink's XDP program, loaded.
    pub fn xdp_program(&mut self) -> &mut Xdp {
        typed(&mut self.ebpf, PROG_XDP_UPLINK).expect("an XDP program")
    }

    /// The from-pod tc program, loaded.
    pub fn from_pod_program(&mut self) -> &mut SchedClassifier {
        self.program(PROG_FROM_POD)
    }
}

impl Dataplane {
    /// Pin the debug switch of the programs just loaded (`PIN_DEBUG`),
    /// replacing the one of programs an earlier agent loaded.
    fn pin_debug_switch(&mut self) -> Result<(), LoadError> {
        let path = self.pin_dir.join(PIN_DEBUG);
        let _ = std::fs::remove_file(&path);
        let pin_failed = |detail: String| LoadError::PinDebug {
            path: path.display().to_string(),
            detail,
        };
        self.ebpf
            .map(DEBUG_SECTION)
            .ok_or_else(|| pin_failed(format!("the object has no {DEBUG_SECTION} section")))?
            .pin(&path)
            .map_err(|e| pin_failed(e.to_string()))
    }
}

/// The object's program `name` as its program type `P`.
fn typed<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, ProgramError>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .expect("the object defines every ferry program")
        .try_into()
}

/// Remove every map ferry pins from `pin_dir`, and the directory if it is
/// then empty. Traffic through still-attached programs keeps working (the
/// programs hold references); only the pins go.
pub fn unpin_all(pin_dir: &Path) -> std::io::Result<()> {
    for name in PINNED_MAPS.iter().chain([
        &PIN_PROG_FROM_POD,
        &PIN_PROG_FROM_NETWORK,
        &PIN_PROG_XDP_UPLINK,
        &PIN_PROG_SOCK_CONNECT4,
        &PIN_PROG_SOCK_SENDMSG4,
        &PIN_PROG_SOCK_RECVMSG4,
        &PIN_PROG_SOCK_GETPEERNAME4,
        &PIN_DEBUG,
    ]) {
        match std::fs::remove_file(pin_dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    match std::fs::remove_dir(pin_dir) {
        Err(e)
            if e.kind() != std::io::ErrorKind::NotFound
                && e.kind() != std::io::ErrorKind::DirectoryNotEmpty =>
        {
            Err(e)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shape_table_covers_every_pinned_map_in_order() {
        let names: Vec<&str> = expected_shapes(&MapSizes::default())
            .iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, PINNED_MAPS);
    }
}
