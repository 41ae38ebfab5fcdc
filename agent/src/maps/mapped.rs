//! A pinned array map created `BPF_F_MMAPABLE`, mapped into the agent's
//! memory: read and written with plain (volatile) loads and stores, and
//! for `u64` words atomic bit operations, instead of a system call per
//! entry. The kernel programs read these arrays only, so the agent is the
//! one writer; what it writes becomes visible to a program no later than
//! the next map update that points the program at it (a system call,
//! which orders the stores before it).
use std::{
    marker::PhantomData,
    os::fd::{AsFd, AsRawFd},
    path::Path,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::{MapData, MapType};

/// `BPF_F_MMAPABLE` (include/uapi/linux/bpf.h).
const BPF_F_MMAPABLE: u32 = 1 << 10;

#[derive(Debug, thiserror::Error)]
pub enum MappedError {
    #[error(
        "cannot open the pinned array {path}: {detail}; is the agent loaded with this --pin-dir?"
    )]
    Open { path: String, detail: String },
    #[error(
        "the pinned map {path} is not a memory-mappable array of {value_size}-byte values (left by another ferry version?): stop the agent, remove the pin and start it again"
    )]
    Shape { path: String, value_size: usize },
    #[error("cannot map the pinned array {path} into memory: {source}")]
    Mmap {
        path: String,
        source: std::io::Error,
    },
}

/// A pinned mmapable array of `T`, mapped into this process.
pub struct MappedArray<T> {
    base: NonNull<T>,
    len: u32,
    bytes: usize,
    /// Keeps the map open while it is mapped.
    _map: MapData,
    _values: PhantomData<T>,
}

// SAFETY: the mapping is plain shared memory owned by this value; writes
// go through `&mut self` or atomics, and the kernel side only reads it.
unsafe impl<T: Send> Send for MappedArray<T> {}
// SAFETY: `&self` only reads (volatile) or uses atomics.
unsafe impl<T: Sync> Sync for MappedArray<T> {}

impl<T: aya::Pod> MappedArray<T> {
    pub fn open(path: &Path) -> Result<Self, MappedError> {
        let display = path.display().to_string();
        let open_err = |detail: String| MappedError::Open {
            path: display.clone(),
            detail,
        };
        let map = MapData::from_pin(path).map_err(|e| open_err(e.to_string()))?;
        let info = map.info().map_err(|e| open_err(e.to_string()))?;
        // The kernel lays array values out 8-byte aligned: `T` must be as
        // long, or indexing here would not match.
        let is_array = matches!(info.map_type(), Ok(MapType::Array));
        if !is_array
            || info.value_size() as usize != size_of::<T>()
            || !size_of::<T>().is_multiple_of(8)
            || info.map_flags() & BPF_F_MMAPABLE == 0
        {
            return Err(MappedError::Shape {
                path: display,
                value_size: size_of::<T>(),
            });
        }
        let len = info.max_entries();
        // The kernel lets the whole value area (page-rounded) be mapped.
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let bytes = (len as usize * size_of::<T>()).div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of the map's fd, checked below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                // Populated now: a full sync's first writes would
                // otherwise fault on every page of a large array.
                libc::MAP_SHARED | libc::MAP_POPULATE,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(MappedError::Mmap {
                path: display,
                source: std::io::Error::last_os_error(),
            });
        }
        let base = NonNull::new(addr.cast::<T>()).ok_or_else(|| MappedError::Mmap {
            path: display.clone(),
            source: std::io::Error::other("mmap returned null"),
        })?;
        Ok(Self {
            base,
            len,
            bytes,
            _map: map,
            _values: PhantomData,
        })
    }

    /// Entries of the array (its max_entries).
    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Write `values` from index `start`. Panics past the end: callers
    /// index within `len`.
    pub fn write(&mut self, start: u32, values: &[T]) {
        let end = start as usize + values.len();
        assert!(
            end <= self.len as usize,
            "entries {start}..{end} past the array"
        );
        for (i, v) in values.iter().enumerate() {
            // SAFETY: in bounds (checked above) of a live mapping; volatile,
            // because the memory is shared with the kernel.
            unsafe {
                self.base
                    .as_ptr()
                    .add(start as usize + i)
                    .write_volatile(*v)
            };
        }
    }

    /// The `count` entries from `start`; what lies past the array is left
    /// out.
    pub fn read(&self, start: u32, count: u32) -> Vec<T> {
        let end = (start as u64 + count as u64).min(self.len as u64) as usize;
        (start as usize..end)
            // SAFETY: in bounds of a live mapping.
            .map(|i| unsafe { self.base.as_ptr().add(i).read_volatile() })
            .collect()
    }
}

impl MappedArray<u64> {
    /// Entry `i` as an atomic word (the mapping is page-aligned, so every
    /// entry is 8-byte aligned). Panics past the end.
    fn word(&self, i: u32) -> &AtomicU64 {
        assert!(i < self.len, "word {i} past the array");
        // SAFETY: in bounds and aligned in a live mapping that outlives
        // `&self`; every access to it here is atomic.
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(i as usize)) }
    }

    /// Set `bits` in word `i`.
    pub fn set_bits(&self, i: u32, bits: u64) {
        self.word(i).fetch_or(bits, Ordering::SeqCst);
    }

    /// Clear `bits` in word `i`.
    pub fn clear_bits(&self, i: u32, bits: u64) {
        self.word(i).fetch_and(!bits, Ordering::SeqCst);
    }

    /// Word `i`.
    pub fn load(&self, i: u32) -> u64 {
        self.word(i).load(Ordering::SeqCst)
    }

    /// Replace word `i`.
    pub fn store(&self, i: u32, word: u64) {
        self.word(i).store(word, Ordering::SeqCst);
    }
}

impl<T> Drop for MappedArray<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}
