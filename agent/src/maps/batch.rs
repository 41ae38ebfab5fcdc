//! Batched map operations: BPF_MAP_LOOKUP_BATCH, BPF_MAP_UPDATE_BATCH and
//! BPF_MAP_DELETE_BATCH, which aya 0.14 does not wrap. One system call
//! moves thousands of entries where the per-entry calls need one per entry
//! (two per entry for a walk: GET_NEXT_KEY, then LOOKUP_ELEM). A kernel or
//! map type without them (an LPM trie, before 5.x) falls back to the
//! per-entry calls, so callers never need to ask.
//!
//! Semantics, from kernel/bpf/hashtab.c and kernel/bpf/syscall.c
//! (`generic_map_*_batch`):
//! - LOOKUP_BATCH walks a hash map bucket by bucket. `in_batch` (absent on
//!   the first call) is where to resume; the kernel writes the next
//!   position to `out_batch` (a bucket index for hash maps, the last key
//!   for arrays: so the token is sized for either). It copies whole buckets
//!   only: when the first bucket alone holds more than `count`, ENOSPC.
//!   ENOENT means the walk reached the end; `count` still says how many
//!   entries that last call returned. The position is a bucket index, so a
//!   walk resumed after the map changed neither repeats nor skips an entry
//!   that stayed in place (entries never move between buckets).
//! - UPDATE_BATCH and DELETE_BATCH apply one entry after another and stop
//!   at the first failure, with `count` set to how many went through; a
//!   missing key stops DELETE_BATCH with ENOENT.
//! - Per-CPU maps return each value once per possible CPU, each rounded up
//!   to 8 bytes: the typed API here refuses them (see `BatchError::PerCpu`).
use std::{
    io,
    marker::PhantomData,
    os::fd::{AsFd, AsRawFd},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use aya::{
    Pod,
    maps::{MapData, MapType},
};

use crate::bpffs::{sys_bpf, sys_bpf_mut};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// The kernel's internal "operation not supported" (include/linux/errno.h),
/// which reaches user space as is when a map type has no batch operation.
const ENOTSUPP: i32 = 524;

/// Entries per LOOKUP_BATCH call: 4096 conntrack entries are 256 KiB of
/// buffers, and a call this size costs well under a millisecond, so a
/// walk never holds the CPU in the kernel for long at a time.
pub const LOOKUP_CHUNK: usize = 4096;
/// From this many entries on, `update_parallel` writes from every CPU
/// (a thread costs tens of microseconds; 4,096 hash updates about 4 ms).
const PARALLEL_FROM: usize = 4096;
/// Entries per UPDATE_BATCH / DELETE_BATCH call (the kernel reschedules
/// between entries, so this only bounds the buffers).
pub const WRITE_CHUNK: usize = 16_384;

/// `union bpf_attr`'s `batch` member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `union bpf_attr`'s element member (`value` doubles as `next_key`).
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(
        "cannot open pinned map {path}: {source}; is the agent loaded with this --pin-dir (run it once, or check the path)?"
    )]
    Open {
        path: String,
        source: aya::maps::MapError,
    },
    #[error(
        "map {map}: its {what} is {expected} bytes, this program's type is {actual}: the pins were made by another ferry version; restart the agent so that it pins its own maps"
    )]
    Size {
        map: String,
        what: &'static str,
        expected: usize,
        actual: usize,
    },
    #[error(
        "map {map} is per-CPU (one value per possible CPU): read it through its per-CPU typed map, not the batch API"
    )]
    PerCpu { map: String },
    #[error("{op} on map {map} failed: {source}{}", hint(op, source))]
    Syscall {
        op: &'static str,
        map: String,
        source: io::Error,
    },
}

/// What to do about a failed call, for the error message.
fn hint(op: &str, e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "; ferry's maps need root (CAP_BPF and CAP_SYS_ADMIN)"
        }
        Some(libc::E2BIG) | Some(libc::ENOSPC) | Some(libc::ENOMEM) if op != "lookup" => {
            "; the map is full: raise its size or remove entries"
        }
        _ => "",
    }
}

/// How a LOOKUP_BATCH call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LookupEnd {
    /// Entries came back and the walk goes on.
    More,
    /// The walk reached the end (what came back is still valid).
    End,
    /// The first bucket holds more entries than the buffers: grow them.
    TooSmall,
    /// No batch lookup for this map type or kernel: walk entry by entry.
    Unsupported,
    Failed,
}

/// Classify a LOOKUP_BATCH result (`errno` 0: success).
fn lookup_end(errno: i32, returned: u32) -> LookupEnd {
    match errno {
        0 => LookupEnd::More,
        libc::ENOENT => LookupEnd::End,
        libc::ENOSPC if returned == 0 => LookupEnd::TooSmall,
        e if is_unsupported(e) => LookupEnd::Unsupported,
        _ => LookupEnd::Failed,
    }
}

/// Does `errno` say the batch command is not there for this map?
fn is_unsupported(errno: i32) -> bool {
    matches!(errno, libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
}

/// The resume token's size in u64 words: a bucket index (u32) for hash
/// maps, a key for the generic (array) walk.
fn token_words(key_size: usize) -> usize {
    key_size.max(4).div_ceil(8)
}

/// Where a walk is.
#[derive(Debug, Clone, Default)]
pub struct Cursor(CursorState);

#[derive(Debug, Clone, Default)]
enum CursorState {
    #[default]
    Start,
    /// The kernel's `out_batch` from the last call.
    Batch(Vec<u64>),
    /// The per-entry walk's last key.
    Key(Vec<u8>),
    Done,
}

impl Cursor {
    /// A walk from the start of the map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Has the walk reached the end of the map?
    pub fn is_done(&self) -> bool {
        matches!(self.0, CursorState::Done)
    }

    /// Is the walk at the start (nothing read yet)?
    pub fn is_start(&self) -> bool {
        matches!(self.0, CursorState::Start)
    }
}

/// A map with fixed-size keys `K` and values `V`, read and written in
/// batches.
pub struct BatchMap<K, V> {
    data: MapData,
    name: String,
    key_size: usize,
    max_entries: u32,
    /// Cleared the first time the kernel refuses a batch command for this
    /// map: from then on, per-entry calls.
    batch_ok: AtomicBool,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K: Pod, V: Pod> BatchMap<K, V> {
    /// The map pinned at `path`.
    pub fn open(path: &Path) -> Result<Self, BatchError> {
        let data = MapData::from_pin(path).map_err(|source| BatchError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Self::new(data, &path.display().to_string())
    }

    /// `data`, checked against `K` and `V`; `what` names it in errors.
    pub fn new(data: MapData, what: &str) -> Result<Self, BatchError> {
        let info = data.info().map_err(|source| BatchError::Open {
            path: what.to_string(),
            source,
        })?;
        let name = info.name_as_str().unwrap_or(what).to_string();
        if matches!(
            info.map_type(),
            Ok(MapType::PerCpuHash | MapType::PerCpuArray | MapType::LruPerCpuHash)
        ) {
            return Err(BatchError::PerCpu { map: name });
        }
        let check = |what, expected: u32, actual: usize| {
            if expected as usize == actual {
                Ok(())
            } else {
                Err(BatchError::Size {
                    map: name.clone(),
                    what,
                    expected: expected as usize,
                    actual,
                })
            }
        };
        check("key", info.key_size(), size_of::<K>())?;
        check("value", info.value_size(), size_of::<V>())?;
        Ok(Self {
            key_size: info.key_size() as usize,
            max_entries: info.max_entries(),
            data,
            name,
            batch_ok: AtomicBool::new(true),
            _types: PhantomData,
        })
    }

    /// The map's capacity.
    pub fn max_entries(&self) -> u32 {
        self.max_entries
    }

    fn fd(&self) -> u32 {
        self.data.fd().as_fd().as_raw_fd() as u32
    }

    fn failed(&self, op: &'static str, source: io::Error) -> BatchError {
        BatchError::Syscall {
            op,
            map: self.name.clone(),
            source,
        }
    }

    /// Every entry (one walk; entries written meanwhile may or may not be
    /// in it).
    pub fn lookup_all(&self) -> Result<Vec<(K, V)>, BatchError> {
        let mut out = Vec::new();
        let mut cursor = Cursor::new();
        while !cursor.is_done() {
            self.lookup_next(&mut cursor, usize::MAX, &mut out)?;
        }
        Ok(out)
    }

    /// Append the next entries of the walk at `cursor` to `out`: about
    /// `max` (a hash bucket is copied whole, so a call may return a few
    /// more, or fewer at the end of the map). Returns how many were added;
    /// `cursor.is_done()` once the walk has reached the end.
    pub fn lookup_next(
        &self,
        cursor: &mut Cursor,
        max: usize,
        out: &mut Vec<(K, V)>,
    ) -> Result<usize, BatchError> {
        let before = out.len();
        // Grown when one bucket does not fit (ENOSPC): the call may then
        // return more than `max`.
        let mut at_least = 1;
        while out.len() - before < max && !cursor.is_done() {
            if !self.batch_ok.load(Ordering::Relaxed) {
                self.lookup_one(cursor, out)?;
                continue;
            }
            let want = LOOKUP_CHUNK.min(max - (out.len() - before)).max(at_least);
            match self.lookup_batch(cursor, want, out)? {
                LookupEnd::TooSmall => at_least = want.saturating_mul(2),
                LookupEnd::Unsupported if cursor.is_start() => {
                    self.batch_ok.store(false, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        Ok(out.len() - before)
    }

    /// One LOOKUP_BATCH call of up to `want` entries (more if the first
    /// bucket is bigger: the caller grows `want` on `TooSmall`).
    fn lookup_batch(
        &self,
        cursor: &mut Cursor,
        want: usize,
        out: &mut Vec<(K, V)>,
    ) -> Result<LookupEnd, BatchError> {
        let words = token_words(self.key_size);
        let in_token = match &cursor.0 {
            CursorState::Batch(token) => token.clone(),
            _ => vec![0u64; words],
        };
        let mut out_token = vec![0u64; words];
        let mut keys: Vec<K> = Vec::with_capacity(want);
        let mut values: Vec<V> = Vec::with_capacity(want);
        let mut attr = BatchAttr {
            in_batch: match cursor.0 {
                CursorState::Start => 0,
                _ => in_token.as_ptr() as u64,
            },
            out_batch: out_token.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: want as u32,
            map_fd: self.fd(),
            ..Default::default()
        };
        // SAFETY: attr is the batch member of bpf_attr; the key and value
        // buffers hold `count` entries of the map's sizes (checked at
        // open), the tokens hold a bucket index or a key.
        let result = unsafe { sys_bpf_mut(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        let errno = match &result {
            Ok(_) => 0,
            Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
        };
        let end = lookup_end(errno, attr.count);
        match end {
            LookupEnd::More | LookupEnd::End => {
                let n = (attr.count as usize).min(want);
                // SAFETY: the kernel wrote `n` keys and values (both Pod).
                unsafe {
                    keys.set_len(n);
                    values.set_len(n);
                }
                out.extend(keys.into_iter().zip(values));
                cursor.0 = match end {
                    LookupEnd::End => CursorState::Done,
                    _ => CursorState::Batch(out_token),
                };
            }
            LookupEnd::TooSmall => {}
            // Only a walk's first call decides that the map has no batch
            // lookup; later, the same errno is a real failure.
            LookupEnd::Unsupported if cursor.is_start() => {}
            LookupEnd::Unsupported | LookupEnd::Failed => {
                let e = result
                    .err()
                    .unwrap_or_else(|| io::Error::from_raw_os_error(errno));
                return Err(self.failed("lookup", e));
            }
        }
        Ok(end)
    }

    /// One step of the per-entry walk: the next key and its value.
    fn lookup_one(&self, cursor: &mut Cursor, out: &mut Vec<(K, V)>) -> Result<(), BatchError> {
        let last = match &cursor.0 {
            CursorState::Key(k) => Some(k.clone()),
            CursorState::Done => return Ok(()),
            _ => None,
        };
        let mut next = vec![0u8; self.key_size];
        let attr = ElemAttr {
            map_fd: self.fd(),
            pad: 0,
            key: last.as_ref().map_or(0, |k| k.as_ptr() as u64),
            value: next.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: GET_NEXT_KEY reads key_size bytes at `key` (or none) and
        // writes key_size bytes at `value`.
        match unsafe { sys_bpf(BPF_MAP_GET_NEXT_KEY, &attr) } {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                cursor.0 = CursorState::Done;
                return Ok(());
            }
            Err(e) => return Err(self.failed("lookup", e)),
        }
        let mut value = std::mem::MaybeUninit::<V>::uninit();
        let attr = ElemAttr {
            map_fd: self.fd(),
            pad: 0,
            key: next.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: LOOKUP_ELEM reads a key and writes value_size bytes,
        // size_of::<V>() (checked at open).
        match unsafe { sys_bpf(BPF_MAP_LOOKUP_ELEM, &attr) } {
            Ok(_) => {
                // SAFETY: key_size bytes are a K (Pod, size checked); the
                // kernel wrote the whole value.
                let key = unsafe { std::ptr::read_unaligned(next.as_ptr().cast::<K>()) };
                out.push((key, unsafe { value.assume_init() }));
            }
            // Deleted between the two calls: skip it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(self.failed("lookup", e)),
        }
        cursor.0 = CursorState::Key(next);
        Ok(())
    }

    /// Write `keys[i] -> values[i]` with BPF_* `flags` (0: create or
    /// replace), in order: an entry is written only after every one
    /// before it. Stops at the first failure (what came before stays).
    pub fn update(&self, keys: &[K], values: &[V], flags: u64) -> Result<(), BatchError> {
        assert_eq!(keys.len(), values.len(), "one value per key");
        let mut done = 0;
        while done < keys.len() {
            if !self.batch_ok.load(Ordering::Relaxed) {
                self.update_one(&keys[done], &values[done], flags)?;
                done += 1;
                continue;
            }
            let n = (keys.len() - done).min(WRITE_CHUNK);
            let mut attr = BatchAttr {
                keys: keys[done..].as_ptr() as u64,
                values: values[done..].as_ptr() as u64,
                count: n as u32,
                map_fd: self.fd(),
                elem_flags: flags,
                ..Default::default()
            };
            // SAFETY: `count` keys and values of the map's sizes.
            match unsafe { sys_bpf_mut(BPF_MAP_UPDATE_BATCH, &mut attr) } {
                Ok(_) => done += n,
                Err(e) if attr.count == 0 && is_unsupported(e.raw_os_error().unwrap_or(0)) => {
                    // Either no batch command for this map, or the single
                    // write fails the same way and says why.
                    self.update_one(&keys[done], &values[done], flags)?;
                    self.batch_ok.store(false, Ordering::Relaxed);
                    done += 1;
                }
                Err(e) => return Err(self.failed("update", e)),
            }
        }
        Ok(())
    }

    /// `update`, split over the CPUs when there are many entries (a full
    /// sync's 100,000 frontends and names): the kernel locks a bucket per
    /// entry, so writers of different keys go side by side.
    pub fn update_parallel(&self, keys: &[K], values: &[V], flags: u64) -> Result<(), BatchError>
    where
        K: Sync,
        V: Sync,
    {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        if threads == 1 || keys.len() < PARALLEL_FROM {
            return self.update(keys, values, flags);
        }
        let chunk = keys.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let writers: Vec<_> = keys
                .chunks(chunk)
                .zip(values.chunks(chunk))
                .map(|(k, v)| scope.spawn(move || self.update(k, v, flags)))
                .collect();
            writers
                .into_iter()
                .try_for_each(|w| w.join().expect("a batch write does not panic"))
        })
    }

    fn update_one(&self, key: &K, value: &V, flags: u64) -> Result<(), BatchError> {
        let attr = ElemAttr {
            map_fd: self.fd(),
            pad: 0,
            key: key as *const K as u64,
            value: value as *const V as u64,
            flags,
        };
        // SAFETY: one key and one value of the map's sizes.
        unsafe { sys_bpf(BPF_MAP_UPDATE_ELEM, &attr) }
            .map(|_| ())
            .map_err(|e| self.failed("update", e))
    }

    /// Remove `keys`, in order; keys already gone are skipped. Returns how
    /// many were removed.
    pub fn delete(&self, keys: &[K]) -> Result<usize, BatchError> {
        let mut at = 0;
        let mut removed = 0;
        while at < keys.len() {
            if !self.batch_ok.load(Ordering::Relaxed) {
                removed += usize::from(self.delete_one(&keys[at])?);
                at += 1;
                continue;
            }
            let n = (keys.len() - at).min(WRITE_CHUNK);
            let mut attr = BatchAttr {
                keys: keys[at..].as_ptr() as u64,
                count: n as u32,
                map_fd: self.fd(),
                ..Default::default()
            };
            // SAFETY: `count` keys of the map's size.
            match unsafe { sys_bpf_mut(BPF_MAP_DELETE_BATCH, &mut attr) } {
                Ok(_) => {
                    removed += n;
                    at += n;
                }
                // The key at `count` was not there: the ones before it
                // went; go on after it.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    let went = (attr.count as usize).min(n);
                    removed += went;
                    at += went + 1;
                }
                Err(e) if attr.count == 0 && is_unsupported(e.raw_os_error().unwrap_or(0)) => {
                    // Either no batch command here, or the single delete
                    // fails the same way and says so.
                    removed += usize::from(self.delete_one(&keys[at])?);
                    self.batch_ok.store(false, Ordering::Relaxed);
                    at += 1;
                }
                Err(e) => return Err(self.failed("delete", e)),
            }
        }
        Ok(removed)
    }

    /// Remove one key; false if it was not there.
    fn delete_one(&self, key: &K) -> Result<bool, BatchError> {
        let attr = ElemAttr {
            map_fd: self.fd(),
            pad: 0,
            key: key as *const K as u64,
            value: 0,
            flags: 0,
        };
        // SAFETY: one key of the map's size.
        match unsafe { sys_bpf(BPF_MAP_DELETE_ELEM, &attr) } {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(self.failed("delete", e)),
        }
    }

    /// Use the per-entry calls from now on, as on a kernel without the
    /// batch commands (tests compare both paths).
    pub fn force_per_entry(&self) {
        self.batch_ok.store(false, Ordering::Relaxed);
    }
}

/// Zero entries `keys` of the per-CPU array `map` on every CPU, in
/// UPDATE_BATCH calls of 1,024 keys (each value is the map's value size,
/// rounded up to 8 bytes, once per possible CPU). A kernel without batch
/// updates for arrays gets one update per key.
pub fn zero_per_cpu(map: &MapData, keys: &[u32]) -> io::Result<()> {
    const CHUNK: usize = 1024;
    if keys.is_empty() {
        return Ok(());
    }
    let info = map.info().map_err(io::Error::other)?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let per_key = (info.value_size() as usize).div_ceil(8) * 8 * cpus;
    let zeros = vec![0u8; per_key * CHUNK.min(keys.len())];
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    for chunk in keys.chunks(CHUNK) {
        let mut attr = BatchAttr {
            keys: chunk.as_ptr() as u64,
            values: zeros.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: fd,
            ..Default::default()
        };
        // SAFETY: `count` u32 keys (the array's key) and as many per-CPU
        // values of the kernel's layout.
        match unsafe { sys_bpf_mut(BPF_MAP_UPDATE_BATCH, &mut attr) } {
            Ok(_) => {}
            Err(e) if is_unsupported(e.raw_os_error().unwrap_or(0)) => {
                for key in chunk {
                    let mut attr = ElemAttr {
                        map_fd: fd,
                        pad: 0,
                        key: key as *const u32 as u64,
                        value: zeros.as_ptr() as u64,
                        flags: 0,
                    };
                    // SAFETY: one key and one per-CPU value, as above.
                    unsafe { sys_bpf_mut(BPF_MAP_UPDATE_ELEM, &mut attr) }?;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How many entries the pinned map at `path` holds: a walk of
/// LOOKUP_BATCH calls into scratch buffers, for any key and value size (a
/// metrics scrape counts maps of a million entries), or key by key
/// (GET_NEXT_KEY) where the map type has no batch lookup (an LPM trie).
pub fn count_entries(path: &Path) -> io::Result<u64> {
    let data = MapData::from_pin(path).map_err(io::Error::other)?;
    match walk(&data, &mut |_, _| {})? {
        Walked::All(n) => Ok(n),
        Walked::Unsupported { fd, key_size } => count_by_key(fd, key_size),
    }
}

/// Every entry of the per-CPU map pinned at `path` (an array or a hash):
/// each key with its value on every possible CPU, read in LOOKUP_BATCH
/// calls (a metrics scrape reads the counts of 100,000 frontends).
pub fn lookup_all_per_cpu<K: Pod, V: Pod>(path: &Path) -> io::Result<Vec<(K, Vec<V>)>> {
    let data = MapData::from_pin(path).map_err(io::Error::other)?;
    let info = data.info().map_err(io::Error::other)?;
    if info.key_size() as usize != size_of::<K>() || info.value_size() as usize != size_of::<V>() {
        return Err(io::Error::other(format!(
            "{}: key or value size differs from this build's",
            path.display()
        )));
    }
    let stride = size_of::<V>().next_multiple_of(8);
    let mut out = Vec::new();
    let walked = walk(&data, &mut |key, values| {
        // SAFETY: `key` holds a K and `values` one V per `stride` bytes
        // (the kernel's per-CPU layout); Pod types, read unaligned.
        let key = unsafe { key.as_ptr().cast::<K>().read_unaligned() };
        let per_cpu = values
            .chunks_exact(stride)
            .map(|v| unsafe { v.as_ptr().cast::<V>().read_unaligned() })
            .collect();
        out.push((key, per_cpu));
    })?;
    match walked {
        Walked::All(_) => Ok(out),
        Walked::Unsupported { .. } => Err(io::Error::other(format!(
            "{}: the kernel has no batch lookup for this map",
            path.display()
        ))),
    }
}

/// How a `walk` ended.
enum Walked {
    /// Every entry was visited: how many.
    All(u64),
    /// The map type has no LOOKUP_BATCH (nothing was visited).
    Unsupported { fd: u32, key_size: usize },
}

/// Visit every entry of `data` (key bytes, value bytes: per-CPU values
/// once per possible CPU, each rounded up to 8 bytes) in LOOKUP_BATCH
/// calls into scratch buffers, for any key and value size.
fn walk(data: &MapData, visit: &mut dyn FnMut(&[u8], &[u8])) -> io::Result<Walked> {
    let info = data.info().map_err(io::Error::other)?;
    let key_size = info.key_size() as usize;
    let per_cpu = matches!(
        info.map_type(),
        Ok(MapType::PerCpuHash | MapType::PerCpuArray | MapType::LruPerCpuHash)
    );
    let value_size = if per_cpu {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        (info.value_size() as usize).next_multiple_of(8) * cpus
    } else {
        info.value_size() as usize
    };
    let fd = data.fd().as_fd().as_raw_fd() as u32;
    let words = token_words(key_size);
    let (mut in_token, mut out_token) = (vec![0u64; words], vec![0u64; words]);
    let mut chunk = LOOKUP_CHUNK;
    let mut keys = vec![0u8; key_size * chunk];
    let mut values = vec![0u8; value_size * chunk];
    let mut n = 0u64;
    let mut first = true;
    let mut seen = |count: u32, keys: &[u8], values: &[u8]| {
        for i in 0..count as usize {
            visit(
                &keys[i * key_size..(i + 1) * key_size],
                &values[i * value_size..(i + 1) * value_size],
            );
        }
        u64::from(count)
    };
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { in_token.as_ptr() as u64 },
            out_batch: out_token.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd,
            ..Default::default()
        };
        // SAFETY: the buffers hold `chunk` keys and values of the map's
        // sizes, and the tokens its resume position.
        let result = unsafe { sys_bpf_mut(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        let errno = result.as_ref().err().and_then(io::Error::raw_os_error);
        match lookup_end(errno.unwrap_or(0), attr.count) {
            LookupEnd::More => {
                n += seen(attr.count, &keys, &values);
                in_token.copy_from_slice(&out_token);
                first = false;
            }
            LookupEnd::End => return Ok(Walked::All(n + seen(attr.count, &keys, &values))),
            LookupEnd::TooSmall => {
                chunk *= 2;
                keys.resize(key_size * chunk, 0);
                values.resize(value_size * chunk, 0);
            }
            LookupEnd::Unsupported if first => return Ok(Walked::Unsupported { fd, key_size }),
            LookupEnd::Unsupported | LookupEnd::Failed => {
                return Err(result.err().unwrap_or_else(io::Error::last_os_error));
            }
        }
    }
}

/// `count_entries` key by key.
fn count_by_key(fd: u32, key_size: usize) -> io::Result<u64> {
    let mut key = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut n = 0u64;
    let mut first = true;
    loop {
        let attr = ElemAttr {
            map_fd: fd,
            pad: 0,
            key: if first { 0 } else { key.as_ptr() as u64 },
            value: next.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: both buffers are key_size bytes.
        match unsafe { sys_bpf(BPF_MAP_GET_NEXT_KEY, &attr) } {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(n),
            Err(e) => return Err(e),
        }
        n += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attr_is_the_kernels_batch_member() {
        // in_batch, out_batch, keys, values (4 x 8), count, map_fd (2 x 4),
        // elem_flags, flags (2 x 8).
        assert_eq!(size_of::<BatchAttr>(), 56);
        assert_eq!(std::mem::offset_of!(BatchAttr, count), 32);
        assert_eq!(std::mem::offset_of!(BatchAttr, elem_flags), 40);
        assert_eq!(size_of::<ElemAttr>(), 32);
    }

    #[test]
    fn a_lookup_ends_on_enoent_and_grows_only_when_nothing_fit() {
        assert_eq!(lookup_end(0, 10), LookupEnd::More);
        assert_eq!(lookup_end(libc::ENOENT, 3), LookupEnd::End);
        assert_eq!(lookup_end(libc::ENOENT, 0), LookupEnd::End);
        assert_eq!(lookup_end(libc::ENOSPC, 0), LookupEnd::TooSmall);
        // ENOSPC with entries returned is not the kernel's way (it stops
        // before a bucket that does not fit and returns success): a failure.
        assert_eq!(lookup_end(libc::ENOSPC, 2), LookupEnd::Failed);
        assert_eq!(lookup_end(libc::EINVAL, 0), LookupEnd::Unsupported);
        assert_eq!(lookup_end(ENOTSUPP, 0), LookupEnd::Unsupported);
        assert_eq!(lookup_end(libc::EPERM, 0), LookupEnd::Failed);
    }

    #[test]
    fn the_token_holds_a_bucket_index_or_a_key() {
        assert_eq!(token_words(4), 1);
        assert_eq!(token_words(1), 1);
        assert_eq!(token_words(8), 1);
        assert_eq!(token_words(16), 2);
        assert_eq!(token_words(17), 3);
    }

    #[test]
    fn errors_say_what_to_do() {
        let full = BatchError::Syscall {
            op: "update",
            map: "ferry_backends".into(),
            source: io::Error::from_raw_os_error(libc::E2BIG),
        };
        assert!(full.to_string().contains("raise its size"), "{full}");
        let denied = BatchError::Syscall {
            op: "lookup",
            map: "ferry_conntrack".into(),
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert!(denied.to_string().contains("need root"), "{denied}");
        let odd = BatchError::Syscall {
            op: "lookup",
            map: "ferry_conntrack".into(),
            source: io::Error::from_raw_os_error(libc::E2BIG),
        };
        assert!(!odd.to_string().contains("raise"), "{odd}");
    }
}
