//! Which runs of `ferry_backends`, the array of backend slots, are in
//! use (the array itself is a `mapped::MappedArray`).
//!
//! The array is created `BPF_F_MMAPABLE`, and the agent maps it into its
//! own memory: a backend set is written with plain stores, not one
//! `BPF_MAP_UPDATE_ELEM` per slot (about 1.4 µs each in a hash map here,
//! which made a full sync of a million backends take over a second). The
//! datapath reads a slot with an array lookup, which the verifier inlines
//! to a bounds check and an address.
//!
//! Why plain stores are safe: the agent only ever writes a run no
//! frontend's value points at (a frontend's standby run, or a free one).
//! The map update that then points the frontend at the run is a system
//! call, which orders the stores before it; a program reads the run only
//! through that new value, and the slot's address depends on it.
use std::collections::{BTreeMap, BTreeSet};

/// A run of consecutive slots: `[start, start + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotRun {
    pub start: u32,
    pub len: u32,
}

impl SlotRun {
    fn end(&self) -> u32 {
        self.start + self.len
    }
}

/// Which slots of an array of `capacity` are free, as runs: best fit (the
/// smallest free run that holds what is asked, so large runs stay whole
/// for large sets), and neighbouring free runs merged when freed.
#[derive(Debug, Clone)]
pub struct SlotAllocator {
    capacity: u32,
    /// Free runs by start.
    by_start: BTreeMap<u32, u32>,
    /// The same runs by (len, start), for best fit.
    by_len: BTreeSet<(u32, u32)>,
    used: u32,
}

impl SlotAllocator {
    /// Every slot free.
    pub fn new(capacity: u32) -> Self {
        let mut a = Self {
            capacity,
            by_start: BTreeMap::new(),
            by_len: BTreeSet::new(),
            used: capacity,
        };
        a.free(SlotRun {
            start: 0,
            len: capacity,
        });
        a
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Slots handed out.
    pub fn used(&self) -> u32 {
        self.used
    }

    /// A free run of `len` slots (never empty), None when no free run is
    /// that long.
    pub fn allocate(&mut self, len: u32) -> Option<SlotRun> {
        let len = len.max(1);
        let &(free_len, start) = self.by_len.range((len, 0)..).next()?;
        self.take(start, free_len);
        if free_len > len {
            self.put(start + len, free_len - len);
        }
        self.used += len;
        Some(SlotRun { start, len })
    }

    /// Mark `run` used (read back from the maps at start). False when any
    /// of it is not free (two frontends pointing at one slot, or a run past
    /// the end): nothing is marked then.
    pub fn reserve(&mut self, run: SlotRun) -> bool {
        if run.len == 0 {
            return true;
        }
        let Some((&start, &len)) = self.by_start.range(..=run.start).next_back() else {
            return false;
        };
        let Some(end) = run.start.checked_add(run.len) else {
            return false;
        };
        if start + len < end {
            return false;
        }
        self.take(start, len);
        if run.start > start {
            self.put(start, run.start - start);
        }
        if start + len > end {
            self.put(end, start + len - end);
        }
        self.used += run.len;
        true
    }

    /// Give `run` back, merged with the free runs either side.
    pub fn free(&mut self, run: SlotRun) {
        if run.len == 0 {
            return;
        }
        debug_assert!(run.end() <= self.capacity, "{run:?}");
        self.used -= run.len;
        let mut start = run.start;
        let mut len = run.len;
        if let Some((&before, &before_len)) = self.by_start.range(..start).next_back()
            && before + before_len == start
        {
            self.take(before, before_len);
            start = before;
            len += before_len;
        }
        if let Some(&after_len) = self.by_start.get(&(start + len)) {
            self.take(start + len, after_len);
            len += after_len;
        }
        self.put(start, len);
    }

    fn take(&mut self, start: u32, len: u32) {
        self.by_start.remove(&start);
        self.by_len.remove(&(len, start));
    }

    fn put(&mut self, start: u32, len: u32) {
        self.by_start.insert(start, len);
        self.by_len.insert((len, start));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(start: u32, len: u32) -> SlotRun {
        SlotRun { start, len }
    }

    #[test]
    fn allocates_best_fit_and_merges_what_is_freed() {
        let mut a = SlotAllocator::new(100);
        let x = a.allocate(10).unwrap();
        let y = a.allocate(20).unwrap();
        let z = a.allocate(5).unwrap();
        assert_eq!((x, y, z), (run(0, 10), run(10, 20), run(30, 5)));
        assert_eq!(a.used(), 35);
        a.free(y);
        // Best fit: the 20-slot hole, not the 65 at the end.
        assert_eq!(a.allocate(15).unwrap(), run(10, 15));
        a.free(x);
        a.free(run(10, 15));
        a.free(z);
        // All merged back into one run.
        assert_eq!(a.used(), 0);
        assert_eq!(a.allocate(100).unwrap(), run(0, 100));
        assert_eq!(a.allocate(1), None);
    }

    #[test]
    fn nothing_is_handed_out_twice_or_past_the_end() {
        let mut a = SlotAllocator::new(1000);
        let mut held: Vec<SlotRun> = Vec::new();
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        for _ in 0..5000 {
            if next() % 3 == 0 && !held.is_empty() {
                let i = next() as usize % held.len();
                a.free(held.swap_remove(i));
            } else if let Some(r) = a.allocate(1 + next() % 40) {
                held.push(r);
            }
            let mut owner = vec![false; 1000];
            for r in &held {
                assert!(r.end() <= 1000);
                for s in r.start..r.end() {
                    assert!(!owner[s as usize], "slot {s} handed out twice");
                    owner[s as usize] = true;
                }
            }
            assert_eq!(a.used(), held.iter().map(|r| r.len).sum::<u32>());
        }
    }

    #[test]
    fn reserves_runs_read_back_and_refuses_overlaps() {
        let mut a = SlotAllocator::new(50);
        assert!(a.reserve(run(10, 5)));
        assert!(a.reserve(run(0, 3)));
        assert!(!a.reserve(run(12, 2)), "overlaps 10..15");
        assert!(!a.reserve(run(45, 10)), "past the end");
        assert_eq!(a.used(), 8);
        // What is left: 3..10 and 15..50.
        assert_eq!(a.allocate(7).unwrap(), run(3, 7));
        assert_eq!(a.allocate(35).unwrap(), run(15, 35));
        assert_eq!(a.allocate(1), None);
    }
}
