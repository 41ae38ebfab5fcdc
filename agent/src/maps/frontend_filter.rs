//! `ferry_fe_filter`: which destination addresses may hold a frontend, per
//! scope (`ferry_common::frontend_filter_slot`), so that the datapath probes
//! `ferry_services` only for them. It must never lack a bit for a frontend
//! in `ferry_services` (that frontend would not be translated): a bit is
//! set before the first frontend it covers is written, and cleared only
//! after the last one is removed. Extra bits only cost a probe.
//!
//! The array is memory-mapped (`BPF_F_MMAPABLE`): a bit is set or cleared
//! with one atomic operation on the agent's mapping, not a lookup and an
//! update per new frontend, so a sync of 100,000 new frontends costs no
//! system call here. The ordering holds because the map updates that add
//! or remove frontends are system calls after or before those operations.
use std::{collections::BTreeMap, path::Path};

use ferry_common::{FRONTEND_FILTER_WORDS, MAP_FRONTEND_FILTER, ServiceKey, frontend_filter_slot};

use super::{
    OpenError,
    mapped::{MappedArray, MappedError},
};

/// The filter and, per bit, how many frontends of `ferry_services` it
/// covers (counted from the services map when opened).
pub struct FrontendFilter {
    words: MappedArray<u64>,
    counts: BTreeMap<(u32, u64), u32>,
}

impl FrontendFilter {
    /// Open the pinned filter; the counts come from the keys of
    /// `ferry_services` (read by the caller).
    pub fn open<'a>(
        pin_dir: &Path,
        services: impl IntoIterator<Item = &'a ServiceKey>,
    ) -> Result<Self, OpenError> {
        let mut counts = BTreeMap::new();
        for key in services {
            if let Some(slot) = frontend_filter_slot(key.addr, key.scope) {
                *counts.entry(slot).or_insert(0) += 1;
            }
        }
        let path = pin_dir.join(MAP_FRONTEND_FILTER);
        let words = MappedArray::open(&path)?;
        // The loader creates it with exactly these words; every index
        // below is then in bounds.
        if words.len() != FRONTEND_FILTER_WORDS {
            return Err(MappedError::Shape {
                path: path.display().to_string(),
                value_size: size_of::<u64>(),
            }
            .into());
        }
        Ok(Self { words, counts })
    }

    /// Write every word as the counts say: what a (re)started agent does
    /// before its programs are attached, so a filter created empty next to
    /// an existing services map (an upgrade) is complete before any packet
    /// reads it. Returns how many words changed.
    pub fn sync(&mut self) -> usize {
        let mut want = vec![0u64; FRONTEND_FILTER_WORDS as usize];
        for (&(word, bit), &n) in &self.counts {
            if n > 0 {
                want[word as usize] |= bit;
            }
        }
        let mut changed = 0;
        for (i, w) in want.into_iter().enumerate() {
            let i = i as u32;
            if self.words.load(i) != w {
                self.words.store(i, w);
                changed += 1;
            }
        }
        changed
    }

    /// Before `key` is written to `ferry_services` as a new frontend.
    pub fn add(&mut self, key: &ServiceKey) {
        let Some((word, bit)) = frontend_filter_slot(key.addr, key.scope) else {
            return;
        };
        let n = self.counts.entry((word, bit)).or_insert(0);
        *n += 1;
        if *n == 1 {
            self.words.set_bits(word, bit);
        }
    }

    /// After `key` left `ferry_services` (or was never written after `add`).
    pub fn remove(&mut self, key: &ServiceKey) {
        let Some(slot) = frontend_filter_slot(key.addr, key.scope) else {
            return;
        };
        let Some(n) = self.counts.get_mut(&slot) else {
            return;
        };
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.counts.remove(&slot);
            self.words.clear_bits(slot.0, slot.1);
        }
    }

    /// Is `key`'s bit set in the map (tests)?
    pub fn covers(&self, key: &ServiceKey) -> bool {
        match frontend_filter_slot(key.addr, key.scope) {
            Some((word, bit)) => self.words.load(word) & bit != 0,
            None => true,
        }
    }
}
