//! Service frontends and their backend sets.
//!
//! Update protocol (the datapath never sees a half-written backend set):
//! 1. write every slot of the new set into the frontend's standby run of
//!    `ferry_backends` (a fresh run when the standby is too short);
//! 2. replace the frontend's `ServiceValue` (one atomic map update) so it
//!    points at that run with the new count;
//! 3. the run the old value pointed at becomes the standby, intact until
//!    the next update, for packets that read the old value just before the
//!    flip. A run let go (a removed frontend's, a standby outgrown) is
//!    handed out again no earlier than the next sync.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use aya::maps::{HashMap, MapData, MapError, lpm_trie};
use ferry_common::{
    AffinityEntry, AffinityKey, Backend, MAP_AFFINITY, MAP_BACKENDS, MAP_SERVICE_NAMES,
    MAP_SERVICE_OPTIONS, MAP_SERVICE_STATS, MAP_SERVICES, MAP_SOURCE_RANGES,
    MAX_BACKENDS_PER_SERVICE, SERVICE_FLAG_AFFINITY, SERVICE_FLAG_SOURCE_RANGES,
    SOURCE_RANGE_ALLOWED, ServiceKey, ServiceName, ServiceOptions, ServiceValue, SourceRangeKey,
};

use super::{
    FrontendFilter, OpenError,
    backend_slots::{SlotAllocator, SlotRun},
    batch::{BatchError, BatchMap},
    found,
    mapped::MappedArray,
    missing_is_fine, open_pinned,
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
    #[error(
        "writing {map} failed: {source}; if the map is full, start the agent with a larger {} (README \"Map sizes\") or remove Services",
        size_flag(map)
    )]
    BatchWrite {
        map: &'static str,
        source: BatchError,
    },
    #[error("reading {map} failed: {source}")]
    BatchRead {
        map: &'static str,
        source: BatchError,
    },
    /// A failure shared by several frontends (one call for all of them).
    #[error("{0}")]
    Shared(String),
    #[error("no free service id: more than 2^32 frontends")]
    NoFreeId,
    #[error(
        "no room for {frontend}'s {count} backends in {MAP_BACKENDS}: {free} of {capacity} slots are free, and no run of {count} together; start the agent with a larger --max-backends (README \"Map sizes\") or remove Services"
    )]
    BackendsFull {
        frontend: String,
        count: usize,
        free: u32,
        capacity: u32,
    },
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
    /// The active set's backends, slot order.
    pub backends: Vec<Backend>,
    /// "namespace/name:port" ("" if unnamed).
    pub name: String,
    pub options: FrontendOptions,
}

type SourceRanges = lpm_trie::LpmTrie<MapData, SourceRangeKey, u32>;

/// A frontend's backends, slot order, shared between copies.
pub type Backends = std::sync::Arc<[Backend]>;

/// One frontend as the plan wants it: its backends (slot order), its name
/// for the CLI, `SERVICE_FLAG_LOCAL_ONLY` (the options' flags come from
/// them) and its options. The planner, the plan and the reconciler's
/// record of what it wrote each hold every frontend: the backends and the
/// name are shared between those copies (and between the frontends of one
/// Service port), not repeated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredFrontend {
    pub backends: Backends,
    pub name: std::sync::Arc<str>,
    pub flags: u8,
    pub options: FrontendOptions,
}

/// Where a frontend's entries are, as the table wrote them.
#[derive(Debug, Clone, Copy)]
struct Placed {
    value: ServiceValue,
    /// The run the value points at (None: no backends). It may be longer
    /// than the set: a standby run is reused while the set fits.
    active: Option<SlotRun>,
    /// The run the value pointed at before the last flip, for packets that
    /// read the old value; the next set is written into it if it fits.
    standby: Option<SlotRun>,
}

/// Where every frontend's entries are, as this table wrote them (read from
/// the maps once, at the first write), so a write needs no read.
#[derive(Debug)]
struct Held {
    placed: BTreeMap<ServiceKey, Placed>,
    /// Which runs of `ferry_backends` are in use.
    slots: SlotAllocator,
    /// Runs let go during the last `apply`: a packet may still be reading
    /// one through a value read before its flip or removal, so they are
    /// handed out again from the next `apply` on.
    released: Vec<SlotRun>,
}

/// One frontend's write in `ServiceTable::apply`.
struct Write<'a> {
    key: ServiceKey,
    want: &'a DesiredFrontend,
    service_id: u32,
    /// Where the set is written (None: an empty set).
    run: Option<SlotRun>,
    /// None: a new frontend.
    before: Option<Placed>,
}

pub struct ServiceTable {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    /// The same maps, for batched reads and writes.
    services_batch: BatchMap<ServiceKey, ServiceValue>,
    /// `ferry_backends`, mapped into memory.
    backends: MappedArray<Backend>,
    names_batch: BatchMap<u32, ServiceName>,
    options: HashMap<MapData, u32, ServiceOptions>,
    affinity: HashMap<MapData, AffinityKey, AffinityEntry>,
    source_ranges: SourceRanges,
    /// Which addresses may hold a frontend (`ferry_fe_filter`).
    filter: FrontendFilter,
    /// Per-frontend counts, zeroed when an id is handed out. None only for
    /// the pins of an agent older than the map (the CLI reading them).
    stats: Option<ServiceStatsTable>,
    used_ids: BTreeSet<u32>,
    /// No id below this is free: the search for a free id starts here, so
    /// handing out n ids costs n steps, not n².
    free_from: u32,
    /// What `source_ranges` holds, by service id (read once at open).
    ranges_by_id: BTreeMap<u32, BTreeSet<Ipv4Net>>,
    /// None until the first write (the CLI only reads the maps).
    held: Option<Held>,
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

/// `map_err` for a failed batch write of `map`.
fn batch_write_failed(map: &'static str) -> impl Fn(BatchError) -> SyncError {
    move |source| SyncError::BatchWrite { map, source }
}

impl ServiceTable {
    pub fn open(pin_dir: &Path) -> Result<Self, OpenError> {
        let services: HashMap<MapData, ServiceKey, ServiceValue> =
            open_pinned(pin_dir, MAP_SERVICES)?;
        let services_batch: BatchMap<ServiceKey, ServiceValue> =
            BatchMap::open(&pin_dir.join(MAP_SERVICES))?;
        let present = services_batch.lookup_all()?;
        let used_ids = present.iter().map(|(_, v)| v.service_id).collect();
        let source_ranges: SourceRanges = open_pinned(pin_dir, MAP_SOURCE_RANGES)?;
        let ranges_by_id = read_ranges(&source_ranges).unwrap_or_default();
        let filter = FrontendFilter::open(pin_dir, present.iter().map(|(k, _)| k))?;
        Ok(Self {
            filter,
            stats: ServiceStatsTable::open(pin_dir).ok(),
            services,
            services_batch,
            backends: MappedArray::open(&pin_dir.join(MAP_BACKENDS))?,
            names_batch: BatchMap::open(&pin_dir.join(MAP_SERVICE_NAMES))?,
            options: open_pinned(pin_dir, MAP_SERVICE_OPTIONS)?,
            affinity: open_pinned(pin_dir, MAP_AFFINITY)?,
            source_ranges,
            used_ids,
            free_from: 1,
            ranges_by_id,
            held: None,
        })
    }

    /// Where the frontends' entries are: each frontend's value, read in
    /// batches, and the run it points at. The standby runs of an earlier
    /// agent are not known: free, as every slot no value points at.
    fn read_held(&self) -> Result<Held, SyncError> {
        let values = self
            .services_batch
            .lookup_all()
            .map_err(|source| SyncError::BatchRead {
                map: MAP_SERVICES,
                source,
            })?;
        let mut held = Held {
            placed: BTreeMap::new(),
            slots: SlotAllocator::new(self.backends.len()),
            released: Vec::new(),
        };
        for (key, value) in values {
            let run = (value.backend_count > 0).then_some(SlotRun {
                start: value.backend_base,
                len: u32::from(value.backend_count),
            });
            let active = run.filter(|run| {
                let own = held.slots.reserve(*run);
                if !own {
                    // Only a damaged map gets here. The run is not this
                    // frontend's to give back; its next write moves it to
                    // a run of its own.
                    tracing::warn!(
                        frontend = %display_frontend(&key),
                        start = run.start,
                        len = run.len,
                        "a frontend's backend slots overlap another's or lie past the array; rewriting it fixes that"
                    );
                }
                own
            });
            let placed = Placed {
                value,
                active,
                standby: None,
            };
            held.placed.insert(key, placed);
        }
        Ok(held)
    }

    /// Backend slots held by frontends: their active and standby runs,
    /// and the runs let go by the last `apply` (free from the next one).
    pub fn slots_in_use(&self) -> u32 {
        self.held.as_ref().map_or(0, |h| h.slots.used())
    }

    /// Read where the frontends are, once.
    fn ensure_held(&mut self) -> Result<(), SyncError> {
        if self.held.is_none() {
            self.held = Some(self.read_held()?);
        }
        Ok(())
    }

    fn allocate_id(&mut self) -> Result<u32, SyncError> {
        // Ids start at 1 so that 0 never names a live service.
        let mut id = self.free_from.max(1);
        for used in self.used_ids.range(id..) {
            if *used > id {
                break;
            }
            id = used.checked_add(1).ok_or(SyncError::NoFreeId)?;
        }
        self.free_from = id.saturating_add(1);
        // The id may have been another frontend's: `zero_new_ids` clears
        // its counts before the new frontend can be looked up.
        self.used_ids.insert(id);
        Ok(id)
    }

    fn release_id(&mut self, id: u32) {
        self.used_ids.remove(&id);
        self.free_from = self.free_from.min(id);
    }

    /// Bring `ferry_fe_filter` in line with the frontends present (before
    /// the programs are attached: `Dataplane::load`). Words changed.
    pub fn sync_frontend_filter(&mut self) -> usize {
        self.filter.sync()
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
    /// flags are added to `flags`). One frontend's `apply`.
    pub fn upsert_with_options(
        &mut self,
        frontend: ServiceKey,
        backends: &[Backend],
        name: &str,
        flags: u8,
        options: &FrontendOptions,
    ) -> Result<u32, SyncError> {
        let want = DesiredFrontend {
            backends: backends.into(),
            name: name.into(),
            flags,
            options: options.clone(),
        };
        if let Some((_, e)) = self.apply(&[(frontend, &want)], &[])?.pop() {
            return Err(e);
        }
        let placed = self.held.as_ref().and_then(|h| h.placed.get(&frontend));
        Ok(placed.map_or(0, |p| p.value.service_id))
    }

    /// Remove `frontend` and both of its runs. Missing is fine.
    pub fn remove(&mut self, frontend: &ServiceKey) -> Result<(), SyncError> {
        match self.apply(&[], std::slice::from_ref(frontend))?.pop() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Write `upserts` (each with its whole backend set), then remove
    /// `removes`: every backend set into the mapped slot array, then the
    /// names in batches, then the frontends' values in one more batch. The
    /// order keeps the update protocol for each frontend: its new slots (in
    /// a run its value does not point at), its name, options, source ranges
    /// and filter bit are in place before its value points at them; what
    /// the old value used goes after. A batch that fails is redone frontend
    /// by frontend, so one frontend that cannot be written (a full map, too
    /// many backends) fails alone. Returns the frontends that failed, each
    /// with its error; Err only when the maps cannot be read.
    pub fn apply(
        &mut self,
        upserts: &[(ServiceKey, &DesiredFrontend)],
        removes: &[ServiceKey],
    ) -> Result<Vec<(ServiceKey, SyncError)>, SyncError> {
        self.ensure_held()?;
        // The runs the last apply let go: no packet reads them any more
        // through a value read before that apply's flips.
        let held = self.held.as_mut().expect("read above");
        for run in std::mem::take(&mut held.released) {
            held.slots.free(run);
        }
        let mut failed = Vec::new();
        let mut writes = Vec::with_capacity(upserts.len());
        for &(key, want) in upserts {
            match self.prepare(key, want) {
                Ok(w) => writes.push(w),
                Err(e) => failed.push((key, e)),
            }
        }
        let writes = self.zero_new_ids(writes, &mut failed);
        self.write_slots(&writes);
        let written = self.write_names(writes, &mut failed);
        let written = self.write_settings(written, &mut failed);
        let flipped = self.flip(written, &mut failed);
        self.after_flip(&flipped, &mut failed);
        self.remove_many(removes, &mut failed);
        Ok(failed)
    }

    /// `key`'s service id and the run to write its set into.
    fn prepare<'a>(
        &mut self,
        key: ServiceKey,
        want: &'a DesiredFrontend,
    ) -> Result<Write<'a>, SyncError> {
        let count = want.backends.len();
        if count > MAX_BACKENDS_PER_SERVICE as usize {
            return Err(SyncError::TooManyBackends {
                frontend: display_frontend(&key),
                count,
                max: MAX_BACKENDS_PER_SERVICE,
            });
        }
        let before = self.held.as_ref().and_then(|h| h.placed.get(&key)).copied();
        let service_id = match before {
            Some(p) => p.value.service_id,
            None => self.allocate_id()?,
        };
        let held = self.held.as_mut().expect("read by apply");
        let standby = held.placed.get(&key).and_then(|p| p.standby);
        let fits = |r: &SlotRun| r.len as usize >= count;
        // A run more than twice the set (a set that shrank) is traded for
        // one that fits, so a frontend does not hold its largest set's
        // slots for ever.
        let snug = |r: &SlotRun| r.len as usize <= 2 * count.max(8);
        let run = if count == 0 {
            None
        } else if standby.is_some_and(|r| fits(&r) && snug(&r)) {
            standby
        } else {
            match held.slots.allocate(count as u32) {
                Some(run) => {
                    held.released.extend(standby);
                    Some(run)
                }
                None if standby.is_some_and(|r| fits(&r)) => standby,
                None => {
                    let e = SyncError::BackendsFull {
                        frontend: display_frontend(&key),
                        count,
                        free: held.slots.capacity() - held.slots.used(),
                        capacity: held.slots.capacity(),
                    };
                    if before.is_none() {
                        self.release_id(service_id);
                    }
                    return Err(e);
                }
            }
        };
        // A run written is the write's now (kept or let go above); an
        // empty set leaves the standby as it was.
        if run.is_some()
            && let Some(p) = held.placed.get_mut(&key)
        {
            p.standby = None;
        }
        Ok(Write {
            key,
            want,
            service_id,
            run,
            before,
        })
    }

    /// The counts of every id handed out to a new frontend go, in one
    /// batch, before the frontend can be looked up (and counted): a new
    /// Service starts from zero rather than from a removed one's totals.
    fn zero_new_ids<'a>(
        &mut self,
        writes: Vec<Write<'a>>,
        failed: &mut Vec<(ServiceKey, SyncError)>,
    ) -> Vec<Write<'a>> {
        let Some(stats) = self.stats.as_mut() else {
            return writes;
        };
        let ids: Vec<u32> = writes
            .iter()
            .filter(|w| w.before.is_none())
            .map(|w| w.service_id)
            .collect();
        let Err(e) = stats.zero_many(&ids) else {
            return writes;
        };
        let e = format!("zeroing the counts of new frontends in {MAP_SERVICE_STATS} failed: {e}");
        let mut ok = Vec::with_capacity(writes.len());
        for w in writes {
            if w.before.is_none() {
                self.abandon(&w, SyncError::Shared(e.clone()), failed);
            } else {
                ok.push(w);
            }
        }
        ok
    }

    /// A write that failed before its value was written: the run it took
    /// becomes the frontend's standby (nothing points at it), and a new
    /// frontend's run and id go back.
    fn abandon(&mut self, w: &Write, e: SyncError, failed: &mut Vec<(ServiceKey, SyncError)>) {
        if let Some(h) = self.held.as_mut() {
            match h.placed.get_mut(&w.key) {
                Some(p) => p.standby = w.run.or(p.standby),
                None => h.released.extend(w.run),
            }
        }
        if w.before.is_none() {
            self.release_id(w.service_id);
        }
        failed.push((w.key, e));
    }

    /// Every write's set into its run of the mapped slot array: plain
    /// stores, which the value's map update (a system call) orders before
    /// any packet can be pointed at them.
    fn write_slots(&mut self, writes: &[Write]) {
        for w in writes {
            if let Some(run) = w.run {
                self.backends.write(run.start, &w.want.backends);
            }
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }

    /// Every written frontend's name (one call: comparing would cost as
    /// much).
    fn write_names<'a>(
        &mut self,
        writes: Vec<Write<'a>>,
        failed: &mut Vec<(ServiceKey, SyncError)>,
    ) -> Vec<Write<'a>> {
        let (ids, names): (Vec<u32>, Vec<ServiceName>) = writes
            .iter()
            .map(|w| (w.service_id, ServiceName::new(&w.want.name)))
            .unzip();
        if self.names_batch.update_parallel(&ids, &names, 0).is_ok() {
            return writes;
        }
        let mut ok = Vec::with_capacity(writes.len());
        for w in writes {
            let name = ServiceName::new(&w.want.name);
            match self.names_batch.update(&[w.service_id], &[name], 0) {
                Ok(()) => ok.push(w),
                Err(e) => self.abandon(&w, batch_write_failed(MAP_SERVICE_NAMES)(e), failed),
            }
        }
        ok
    }

    /// Affinity timeouts and source ranges (rare: entry by entry), and the
    /// filter bits of new frontends.
    fn write_settings<'a>(
        &mut self,
        writes: Vec<Write<'a>>,
        failed: &mut Vec<(ServiceKey, SyncError)>,
    ) -> Vec<Write<'a>> {
        let mut ok = Vec::with_capacity(writes.len());
        for w in writes {
            match self.write_setting(&w) {
                Ok(()) => ok.push(w),
                Err(e) => self.abandon(&w, e, failed),
            }
        }
        ok
    }

    fn write_setting(&mut self, w: &Write) -> Result<(), SyncError> {
        let (id, options) = (w.service_id, &w.want.options);
        if options.affinity_timeout_s != 0 {
            let value = ServiceOptions {
                affinity_timeout_s: options.affinity_timeout_s,
                pad: 0,
            };
            self.options
                .insert(id, value, 0)
                .map_err(write_failed(MAP_SERVICE_OPTIONS))?;
        }
        let had = self.ranges_by_id.get(&id).cloned().unwrap_or_default();
        let ranges = options.source_ranges.clone().unwrap_or_default();
        for net in ranges.difference(&had) {
            self.source_ranges
                .insert(&range_key(id, net), SOURCE_RANGE_ALLOWED, 0)
                .map_err(write_failed(MAP_SOURCE_RANGES))?;
            // Known to be there from now on, so a removal finds it.
            self.ranges_by_id.entry(id).or_default().insert(*net);
        }
        // A new frontend's address gets its filter bit first: the datapath
        // must never skip a frontend that exists.
        if w.before.is_none() {
            self.filter.add(&w.key);
        }
        Ok(())
    }

    fn value_of(w: &Write) -> ServiceValue {
        ServiceValue {
            service_id: w.service_id,
            backend_base: w.run.map_or(0, |r| r.start),
            backend_count: w.want.backends.len() as u16,
            flags: w.want.flags | w.want.options.flags(),
            pad: 0,
        }
    }

    /// Point every frontend at its new run: one batch update, each entry
    /// atomic for the datapath.
    fn flip<'a>(
        &mut self,
        writes: Vec<Write<'a>>,
        failed: &mut Vec<(ServiceKey, SyncError)>,
    ) -> Vec<Write<'a>> {
        let keys: Vec<ServiceKey> = writes.iter().map(|w| w.key).collect();
        let values: Vec<ServiceValue> = writes.iter().map(Self::value_of).collect();
        if self
            .services_batch
            .update_parallel(&keys, &values, 0)
            .is_ok()
        {
            return writes;
        }
        let mut ok = Vec::with_capacity(writes.len());
        for w in writes {
            match self
                .services_batch
                .update(&[w.key], &[Self::value_of(&w)], 0)
            {
                Ok(()) => ok.push(w),
                Err(e) => {
                    if w.before.is_none() {
                        self.filter.remove(&w.key);
                    }
                    self.abandon(&w, batch_write_failed(MAP_SERVICES)(e), failed)
                }
            }
        }
        ok
    }

    /// What the old values used and the new ones do not: ranges no longer
    /// listed, an affinity timeout turned off, and the affinity entries of
    /// backends that left (the others renumbered to their new slots). The
    /// table then records what it wrote.
    fn after_flip(&mut self, writes: &[Write], failed: &mut Vec<(ServiceKey, SyncError)>) {
        let mut settle = BTreeMap::new();
        for w in writes {
            let (id, options) = (w.service_id, &w.want.options);
            let ranges = options.source_ranges.clone().unwrap_or_default();
            let had = self.ranges_by_id.remove(&id).unwrap_or_default();
            let mut cleanup = Ok(());
            for net in had.difference(&ranges) {
                if let Err(e) = missing_is_fine(self.source_ranges.remove(&range_key(id, net))) {
                    cleanup = Err(write_failed(MAP_SOURCE_RANGES)(e));
                }
            }
            if !ranges.is_empty() {
                self.ranges_by_id.insert(id, ranges);
            }
            if options.affinity_timeout_s == 0
                && w.before
                    .is_some_and(|p| p.value.flags & SERVICE_FLAG_AFFINITY != 0)
                && let Err(e) = missing_is_fine(self.options.remove(&id))
            {
                cleanup = Err(write_failed(MAP_SERVICE_OPTIONS)(e));
            }
            if w.before
                .is_some_and(|p| p.value.flags & SERVICE_FLAG_AFFINITY != 0)
            {
                let kept = (options.affinity_timeout_s != 0).then(|| w.want.backends.clone());
                settle.insert(id, (w.key, kept));
            }
            let held = self.held.as_mut().expect("read by apply");
            // The old active run becomes the standby. An empty set writes
            // no run, and the standby it kept stays.
            let standby = match (w.run, w.before) {
                (Some(_), before) => before.and_then(|p| p.active),
                (None, Some(p)) => {
                    let kept = held.placed.get(&w.key).and_then(|q| q.standby);
                    match p.active {
                        Some(active) => {
                            held.released.extend(kept);
                            Some(active)
                        }
                        None => kept,
                    }
                }
                (None, None) => None,
            };
            let placed = Placed {
                value: Self::value_of(w),
                active: w.run,
                standby,
            };
            held.placed.insert(w.key, placed);
            if let Err(e) = cleanup {
                failed.push((w.key, e));
            }
        }
        self.settle_affinity(&settle, failed);
    }

    /// After each service id's backend set became `kept` (None: affinity is
    /// off, or the frontend is gone): its clients' affinity entries follow,
    /// in one walk of the affinity map. An entry whose backend left is
    /// removed (the client draws again, as kube-proxy ends the affinity of
    /// a removed endpoint), one whose backend moved slot is renumbered, so
    /// the datapath keeps trusting it.
    fn settle_affinity(
        &mut self,
        sets: &BTreeMap<u32, (ServiceKey, Option<Backends>)>,
        failed: &mut Vec<(ServiceKey, SyncError)>,
    ) {
        if sets.is_empty() {
            return;
        }
        let mut entries = Vec::new();
        for item in self.affinity.iter() {
            match item {
                Ok((key, entry)) if sets.contains_key(&key.service_id) => {
                    entries.push((key, entry))
                }
                Ok(_) => {}
                Err(e) => {
                    let e = read_failed(MAP_AFFINITY)(e).to_string();
                    for (key, _) in sets.values() {
                        failed.push((*key, SyncError::Shared(e.clone())));
                    }
                    return;
                }
            }
        }
        for (key, mut entry) in entries {
            let (frontend, kept) = &sets[&key.service_id];
            let slot = kept.as_ref().and_then(|set| {
                set.iter()
                    .position(|b| b.addr == entry.backend_addr && b.port == entry.backend_port)
            });
            let result = match slot {
                Some(slot) if slot as u16 == entry.slot => Ok(()),
                Some(slot) => {
                    entry.slot = slot as u16;
                    // BPF_EXIST: an entry the LRU evicted meanwhile stays gone.
                    missing_is_fine(self.affinity.insert(key, entry, 2))
                }
                None => missing_is_fine(self.affinity.remove(&key)),
            };
            if let Err(e) = result {
                failed.push((*frontend, write_failed(MAP_AFFINITY)(e)));
            }
        }
    }

    /// Remove each of `keys` with both of its runs, its name, options,
    /// ranges and affinity entries. Missing is fine.
    fn remove_many(&mut self, keys: &[ServiceKey], failed: &mut Vec<(ServiceKey, SyncError)>) {
        let held = self.held.as_ref().expect("read by apply");
        let gone: Vec<(ServiceKey, Placed)> = keys
            .iter()
            .filter_map(|k| held.placed.get(k).map(|p| (*k, *p)))
            .collect();
        if gone.is_empty() {
            return;
        }
        let frontends: Vec<ServiceKey> = gone.iter().map(|(k, _)| *k).collect();
        if let Err(e) = self.services_batch.delete(&frontends) {
            // Nothing else is touched: the next sync retries them all.
            let e = batch_write_failed(MAP_SERVICES)(e).to_string();
            for k in frontends {
                failed.push((k, SyncError::Shared(e.clone())));
            }
            return;
        }
        let mut ids = Vec::new();
        let mut settle = BTreeMap::new();
        for (key, p) in &gone {
            let id = p.value.service_id;
            self.filter.remove(key);
            if let Some(held) = self.held.as_mut() {
                held.released.extend(p.active.into_iter().chain(p.standby));
            }
            ids.push(id);
            if p.value.flags & SERVICE_FLAG_AFFINITY != 0 {
                settle.insert(id, (*key, None));
                if let Err(e) = missing_is_fine(self.options.remove(&id)) {
                    failed.push((*key, write_failed(MAP_SERVICE_OPTIONS)(e)));
                }
            }
            for net in self.ranges_by_id.remove(&id).unwrap_or_default() {
                if let Err(e) = missing_is_fine(self.source_ranges.remove(&range_key(id, &net))) {
                    failed.push((*key, write_failed(MAP_SOURCE_RANGES)(e)));
                }
            }
        }
        if let Err(e) = self.names_batch.delete(&ids) {
            tracing::warn!(error = %e, "cannot clear the names of removed frontends");
        }
        self.settle_affinity(&settle, failed);
        for (key, p) in gone {
            if let Some(held) = self.held.as_mut() {
                held.placed.remove(&key);
            }
            self.release_id(p.value.service_id);
        }
    }

    /// Every frontend with its active backends, sorted by frontend, as
    /// the maps hold them (the CLI lists what the datapath has): read in
    /// batches.
    pub fn list(&self) -> Result<Vec<ServiceRecord>, SyncError> {
        let batch_read = |map| move |source| SyncError::BatchRead { map, source };
        let mut frontends: Vec<(ServiceKey, ServiceValue)> = self
            .services_batch
            .lookup_all()
            .map_err(batch_read(MAP_SERVICES))?;
        frontends.sort_by_key(|(k, _)| (k.addr, k.port, k.protocol, k.scope));
        let names: std::collections::HashMap<u32, ServiceName> = self
            .names_batch
            .lookup_all()
            .map_err(batch_read(MAP_SERVICE_NAMES))?
            .into_iter()
            .collect();
        let ranges = read_ranges(&self.source_ranges).map_err(read_failed(MAP_SOURCE_RANGES))?;
        let mut out = Vec::with_capacity(frontends.len());
        for (frontend, value) in frontends {
            let id = value.service_id;
            let backends = self
                .backends
                .read(value.backend_base, u32::from(value.backend_count));
            let name = names.get(&id).map(|n| n.as_str().to_string());
            let affinity_timeout_s = match value.flags & SERVICE_FLAG_AFFINITY {
                0 => 0,
                _ => found(self.options.get(&id, 0))
                    .map_err(read_failed(MAP_SERVICE_OPTIONS))?
                    .map_or(0, |o| o.affinity_timeout_s),
            };
            let source_ranges = match value.flags & SERVICE_FLAG_SOURCE_RANGES {
                0 => None,
                _ => Some(ranges.get(&id).cloned().unwrap_or_default()),
            };
            out.push(ServiceRecord {
                frontend,
                value,
                backends,
                name: name.unwrap_or_default(),
                options: FrontendOptions {
                    affinity_timeout_s,
                    source_ranges,
                },
            });
        }
        Ok(out)
    }
}
