//! Service frontends and their backend sets.
//!
//! Update protocol (the datapath never sees a half-written backend set):
//! 1. write every slot of the new set into the bank the frontend is not using;
//! 2. replace the frontend's `ServiceValue` (one atomic map update) so it
//!    points at that bank with the new count;
//! 3. the previous bank stays intact until the next update, for packets that
//!    read the old value just before the flip.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use aya::maps::{HashMap, MapData, MapError, lpm_trie};
use ferry_common::{
    AffinityEntry, AffinityKey, Backend, BackendKey, MAP_AFFINITY, MAP_BACKENDS,
    MAP_FRONTEND_FILTER, MAP_SERVICE_NAMES, MAP_SERVICE_OPTIONS, MAP_SERVICE_STATS, MAP_SERVICES,
    MAP_SOURCE_RANGES, MAX_BACKENDS_PER_SERVICE, SERVICE_FLAG_AFFINITY, SERVICE_FLAG_SOURCE_RANGES,
    SOURCE_RANGE_ALLOWED, ServiceKey, ServiceName, ServiceOptions, ServiceValue, SourceRangeKey,
};

use super::{
    FrontendFilter, OpenError, found, is_not_found, missing_is_fine, open_pinned,
    service_stats::ServiceStatsTable,
};
use crate::net::Ipv4Net;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(
        "service {frontend} has {count} backends; at most {max} per frontend are supported: scale the Service's endpoints down"
    )]
    TooManyBackends {
        frontend: String,
        count: usize,
        max: u16,
    },
    #[error(
        "writing {map} failed: {source}; if the map is full (E2BIG), start the agent with a larger {} (README \"Map sizes\") or remove Services",
        size_flag(map)
    )]
    Write { map: &'static str, source: MapError },
    #[error("reading {map} failed: {source}")]
    Read { map: &'static str, source: MapError },
    #[error("no free service id: more than 2^32 frontends")]
    NoFreeId,
}

/// The agent option that sizes `map`.
fn size_flag(map: &str) -> &'static str {
    match map {
        MAP_BACKENDS => "--max-backends",
        _ => "--max-frontends",
    }
}

/// What a frontend does beyond drawing from its backends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrontendOptions {
    /// `sessionAffinity: ClientIP`: the timeout in seconds (0: no affinity).
    pub affinity_timeout_s: u32,
    /// `loadBalancerSourceRanges` (load-balancer IPs only): the clients
    /// admitted; None: every client, Some(empty): none.
    pub source_ranges: Option<BTreeSet<Ipv4Net>>,
}

impl FrontendOptions {
    /// The `SERVICE_FLAG_*` bits these options set.
    pub fn flags(&self) -> u8 {
        let mut flags = 0;
        if self.affinity_timeout_s != 0 {
            flags |= SERVICE_FLAG_AFFINITY;
        }
        if self.source_ranges.is_some() {
            flags |= SERVICE_FLAG_SOURCE_RANGES;
        }
        flags
    }
}

/// One frontend as the datapath sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    pub frontend: ServiceKey,
    pub value: ServiceValue,
    /// The active bank's backends, slot order.
    pub backends: Vec<Backend>,
    /// "namespace/name:port" ("" if unnamed).
    pub name: String,
    pub options: FrontendOptions,
}

type SourceRanges = lpm_trie::LpmTrie<MapData, SourceRangeKey, u32>;

pub struct ServiceTable {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, BackendKey, Backend>,
    names: HashMap<MapData, u32, ServiceName>,
    options: HashMap<MapData, u32, ServiceOptions>,
    affinity: HashMap<MapData, AffinityKey, AffinityEntry>,
    source_ranges: SourceRanges,
    /// Which addresses may hold a frontend (`ferry_fe_filter`).
    filter: FrontendFilter,
    /// Per-frontend counts, zeroed when an id is handed out. None only for
    /// the pins of an agent older than the map (the CLI reading them).
    stats: Option<ServiceStatsTable>,
    used_ids: BTreeSet<u32>,
    /// What `source_ranges` holds, by service id (read once at open).
    ranges_by_id: BTreeMap<u32, BTreeSet<Ipv4Net>>,
}

/// The trie key of `net` for service `id`.
fn range_key(id: u32, net: &Ipv4Net) -> lpm_trie::Key<SourceRangeKey> {
    let data = SourceRangeKey {
        service_id: id.to_be_bytes(),
        addr: net.network().octets(),
    };
    lpm_trie::Key::new(32 + u32::from(net.prefix), data)
}

/// Every range of `trie`, by service id.
fn read_ranges(trie: &SourceRanges) -> Result<BTreeMap<u32, BTreeSet<Ipv4Net>>, MapError> {
    let mut out: BTreeMap<u32, BTreeSet<Ipv4Net>> = BTreeMap::new();
    for item in trie.iter() {
        let (k, _) = item?;
        let data = k.data();
        let net = Ipv4Net {
            addr: data.addr.into(),
            prefix: k.prefix_len().saturating_sub(32) as u8,
        };
        out.entry(u32::from_be_bytes(data.service_id))
            .or_default()
            .insert(net);
    }
    Ok(out)
}

fn display_frontend(k: &ServiceKey) -> String {
    format!(
        "{}:{}/{}",
        std::net::Ipv4Addr::from(k.addr),
        k.port,
        ferry_common::protocol_name(k.protocol)
    )
}

/// `map_err` for a failed write of `map`.
fn write_failed(map: &'static str) -> impl Fn(MapError) -> SyncError {
    move |source| SyncError::Write { map, source }
}

/// `map_err` for a failed read of `map`.
fn read_failed(map: &'static str) -> impl Fn(MapError) -> SyncError {
    move |source| SyncError::Read { map, source }
}

impl ServiceTable {
    pub fn open(pin_dir: &Path) -> Result<Self, OpenError> {
        let services: HashMap<MapData, ServiceKey, ServiceValue> =
            open_pinned(pin_dir, MAP_SERVICES)?;
        let backends = open_pinned(pin_dir, MAP_BACKENDS)?;
        let names = open_pinned(pin_dir, MAP_SERVICE_NAMES)?;
        let used_ids = services
            .iter()
            .filter_map(Result::ok)
            .map(|(_, v)| v.service_id)
            .collect();
        let source_ranges: SourceRanges = open_pinned(pin_dir, MAP_SOURCE_RANGES)?;
        let ranges_by_id = read_ranges(&source_ranges).unwrap_or_default();
        let filter = FrontendFilter::open(pin_dir, &services)?;
        Ok(Self {
            filter,
            stats: ServiceStatsTable::open(pin_dir).ok(),
            services,
            backends,
            names,
            options: open_pinned(pin_dir, MAP_SERVICE_OPTIONS)?,
            affinity: open_pinned(pin_dir, MAP_AFFINITY)?,
            source_ranges,
            used_ids,
            ranges_by_id,
        })
    }

    fn allocate_id(&mut self) -> Result<u32, SyncError> {
        // Ids start at 1 so that 0 never names a live service.
        let mut id = 1u32;
        for used in &self.used_ids {
            if *used > id {
                break;
            }
            id = used.checked_add(1).ok_or(SyncError::NoFreeId)?;
        }
        // The id may have been another frontend's: its counts go before
        // the new frontend can be looked up (and counted), so a new Service
        // starts from zero rather than from a removed one's totals.
        // (An id past the map's slots has none: the datapath counts
        // nothing for it either.)
        if let Some(stats) = self.stats.as_mut().filter(|s| id < s.slots()) {
            stats.zero(id).map_err(write_failed(MAP_SERVICE_STATS))?;
        }
        self.used_ids.insert(id);
        Ok(id)
    }

    /// Bring `ferry_fe_filter` in line with the frontends present (before
    /// the programs are attached: `Dataplane::load`). Words changed.
    pub fn sync_frontend_filter(&mut self) -> Result<usize, SyncError> {
        self.filter
            .sync()
            .map_err(write_failed(MAP_FRONTEND_FILTER))
    }

    /// The frontend filter (tests read it).
    pub fn frontend_filter(&self) -> &FrontendFilter {
        &self.filter
    }

    pub fn get(&self, frontend: &ServiceKey) -> Result<Option<ServiceValue>, SyncError> {
        found(self.services.get(frontend, 0)).map_err(read_failed(MAP_SERVICES))
    }

    /// Create or replace `frontend`'s backend set. An empty set makes the
    /// datapath reject new connections to it. Returns the service id.
    pub fn upsert(&mut self, frontend: ServiceKey, backends: &[Backend]) -> Result<u32, SyncError> {
        self.upsert_named(frontend, backends, "")
    }

    /// `upsert`, recording `name` ("namespace/name:port") for the CLI.
    pub fn upsert_named(
        &mut self,
        frontend: ServiceKey,
        backends: &[Backend],
        name: &str,
    ) -> Result<u32, SyncError> {
        self.upsert_frontend(frontend, backends, name, 0)
    }

    /// `upsert_named` with `SERVICE_FLAG_*` bits.
    pub fn upsert_frontend(
        &mut self,
        frontend: ServiceKey,
        backends: &[Backend],
        name: &str,
        flags: u8,
    ) -> Result<u32, SyncError> {
        let options = FrontendOptions::default();
        self.upsert_with_options(frontend, backends, name, flags, &options)
    }

    /// `upsert_frontend` with session affinity and source ranges (their
    /// flags are added to `flags`). The settings a packet may read are in
    /// place before the frontend's value points at them; what the old
    /// value used goes after: affinity entries of backends that left (the
    /// others renumbered to their new slots), ranges no longer listed.
    pub fn upsert_with_options(
        &mut self,
        frontend: ServiceKey,
        backends: &[Backend],
        name: &str,
        flags: u8,
        options: &FrontendOptions,
    ) -> Result<u32, SyncError> {
        if backends.len() > MAX_BACKENDS_PER_SERVICE as usize {
            return Err(SyncError::TooManyBackends {
                frontend: display_frontend(&frontend),
                count: backends.len(),
                max: MAX_BACKENDS_PER_SERVICE,
            });
        }
        let before = self.get(&frontend)?;
        let (service_id, bank) = match before {
            Some(v) => (v.service_id, v.bank ^ 1),
            None => (self.allocate_id()?, 0),
        };
        for (slot, backend) in backends.iter().enumerate() {
            let key = BackendKey {
                service_id,
                slot: slot as u16,
                bank,
                pad: 0,
            };
            self.backends
                .insert(key, backend, 0)
                .map_err(write_failed(MAP_BACKENDS))?;
        }
        // Slots beyond the new count in this bank are leftovers of an older
        // set; nothing will read them once the count is written.
        self.remove_slots(service_id, bank, backends.len() as u16)?;
        self.names
            .insert(service_id, ServiceName::new(name), 0)
            .map_err(write_failed(MAP_SERVICE_NAMES))?;
        if options.affinity_timeout_s != 0 {
            let value = ServiceOptions {
                affinity_timeout_s: options.affinity_timeout_s,
                pad: 0,
            };
            self.options
                .insert(service_id, value, 0)
                .map_err(write_failed(MAP_SERVICE_OPTIONS))?;
        }
        let had_ranges = self.ranges_by_id.remove(&service_id).unwrap_or_default();
        let ranges = options.source_ranges.clone().unwrap_or_default();
        for net in ranges.difference(&had_ranges) {
            let written =
                self.source_ranges
                    .insert(&range_key(service_id, net), SOURCE_RANGE_ALLOWED, 0);
            if let Err(e) = written {
                // Keep what is known to be there, so the next sync retries.
                let partial = had_ranges.union(&ranges).copied();
                self.ranges_by_id.insert(service_id, partial.collect());
                return Err(SyncError::Write {
                    map: MAP_SOURCE_RANGES,
                    source: e,
                });
            }
        }
        let value = ServiceValue {
            service_id,
            backend_count: backends.len() as u16,
            bank,
            flags: flags | options.flags(),
        };
        // A new frontend's address gets its filter bit first: the datapath
        // must never skip a frontend that exists.
        if before.is_none() {
            self.filter
                .add(&frontend)
                .map_err(write_failed(MAP_FRONTEND_FILTER))?;
        }
        if let Err(e) = self.services.insert(frontend, value, 0) {
            if before.is_none() {
                let _ = self.filter.remove(&frontend);
            }
            return Err(write_failed(MAP_SERVICES)(e));
        }
        for net in had_ranges.difference(&ranges) {
            missing_is_fine(self.source_ranges.remove(&range_key(service_id, net)))
                .map_err(write_failed(MAP_SOURCE_RANGES))?;
        }
        if !ranges.is_empty() {
            self.ranges_by_id.insert(service_id, ranges);
        }
        if options.affinity_timeout_s == 0 {
            missing_is_fine(self.options.remove(&service_id))
                .map_err(write_failed(MAP_SERVICE_OPTIONS))?;
        }
        let kept = (options.affinity_timeout_s != 0).then_some(backends);
        if before.is_some_and(|v| v.flags & SERVICE_FLAG_AFFINITY != 0) {
            self.settle_affinity(service_id, kept)?;
        }
        Ok(service_id)
    }

    /// After `service_id`'s backend set became `kept` (None: affinity is
    /// off, or the frontend is gone): its clients' affinity entries follow.
    /// An entry whose backend left is removed (the client draws again, as
    /// kube-proxy ends the affinity of a removed endpoint), one whose
    /// backend moved slot is renumbered, so the datapath keeps trusting it.
    fn settle_affinity(
        &mut self,
        service_id: u32,
        kept: Option<&[Backend]>,
    ) -> Result<(), SyncError> {
        let mut entries = Vec::new();
        for item in self.affinity.iter() {
            let (key, entry) = item.map_err(read_failed(MAP_AFFINITY))?;
            if key.service_id == service_id {
                entries.push((key, entry));
            }
        }
        for (key, mut entry) in entries {
            let slot = kept.and_then(|set| {
                set.iter()
                    .position(|b| b.addr == entry.backend_addr && b.port == entry.backend_port)
            });
            match slot {
                Some(slot) if slot as u16 == entry.slot => {}
                Some(slot) => {
                    entry.slot = slot as u16;
                    // BPF_EXIST: an entry the LRU evicted meanwhile stays gone.
                    let renumbered = self.affinity.insert(key, entry, 2);
                    if let Err(e) = renumbered
                        && !is_not_found(&e)
                    {
                        return Err(SyncError::Write {
                            map: MAP_AFFINITY,
                            source: e,
                        });
                    }
                }
                None => missing_is_fine(self.affinity.remove(&key))
                    .map_err(write_failed(MAP_AFFINITY))?,
            }
        }
        Ok(())
    }

    /// Remove `frontend` and both of its banks. Missing is fine.
    pub fn remove(&mut self, frontend: &ServiceKey) -> Result<(), SyncError> {
        let Some(value) = self.get(frontend)? else {
            return Ok(());
        };
        missing_is_fine(self.services.remove(frontend)).map_err(write_failed(MAP_SERVICES))?;
        self.filter
            .remove(frontend)
            .map_err(write_failed(MAP_FRONTEND_FILTER))?;
        self.remove_slots(value.service_id, 0, 0)?;
        self.remove_slots(value.service_id, 1, 0)?;
        missing_is_fine(self.names.remove(&value.service_id))
            .map_err(write_failed(MAP_SERVICE_NAMES))?;
        missing_is_fine(self.options.remove(&value.service_id))
            .map_err(write_failed(MAP_SERVICE_OPTIONS))?;
        for net in self
            .ranges_by_id
            .remove(&value.service_id)
            .unwrap_or_default()
        {
            missing_is_fine(
                self.source_ranges
                    .remove(&range_key(value.service_id, &net)),
            )
            .map_err(write_failed(MAP_SOURCE_RANGES))?;
        }
        if value.flags & SERVICE_FLAG_AFFINITY != 0 {
            self.settle_affinity(value.service_id, None)?;
        }
        self.used_ids.remove(&value.service_id);
        Ok(())
    }

    /// Remove the contiguous slots `from..` of one bank.
    fn remove_slots(&mut self, service_id: u32, bank: u8, from: u16) -> Result<(), SyncError> {
        for slot in from..MAX_BACKENDS_PER_SERVICE {
            let key = BackendKey {
                service_id,
                slot,
                bank,
                pad: 0,
            };
            match self.backends.remove(&key) {
                Err(e) if is_not_found(&e) => break,
                removed => removed.map_err(write_failed(MAP_BACKENDS))?,
            }
        }
        Ok(())
    }

    /// Every frontend with its active backends, sorted by frontend.
    pub fn list(&self) -> Result<Vec<ServiceRecord>, SyncError> {
        let mut frontends = BTreeMap::new();
        for item in self.services.iter() {
            let (k, v) = item.map_err(read_failed(MAP_SERVICES))?;
            frontends.insert((k.addr, k.port, k.protocol, k.scope), (k, v));
        }
        // Read from the map, not the cache: the CLI lists what the datapath
        // has.
        let ranges = read_ranges(&self.source_ranges).map_err(read_failed(MAP_SOURCE_RANGES))?;
        let mut out = Vec::with_capacity(frontends.len());
        for (_, (frontend, value)) in frontends {
            let mut backends = Vec::with_capacity(value.backend_count as usize);
            for slot in 0..value.backend_count {
                let key = BackendKey {
                    service_id: value.service_id,
                    slot,
                    bank: value.bank,
                    pad: 0,
                };
                let backend = found(self.backends.get(&key, 0));
                backends.extend(backend.map_err(read_failed(MAP_BACKENDS))?);
            }
            let name = match self.names.get(&value.service_id, 0) {
                Ok(n) => n.as_str().to_string(),
                Err(_) => String::new(),
            };
            let affinity_timeout_s = match value.flags & SERVICE_FLAG_AFFINITY {
                0 => 0,
                _ => found(self.options.get(&value.service_id, 0))
                    .map_err(read_failed(MAP_SERVICE_OPTIONS))?
                    .map_or(0, |o| o.affinity_timeout_s),
            };
            let source_ranges = match value.flags & SERVICE_FLAG_SOURCE_RANGES {
                0 => None,
                _ => Some(ranges.get(&value.service_id).cloned().unwrap_or_default()),
            };
            out.push(ServiceRecord {
                frontend,
                value,
                backends,
                name,
                options: FrontendOptions {
                    affinity_timeout_s,
                    source_ranges,
                },
            });
        }
        Ok(out)
    }
}
