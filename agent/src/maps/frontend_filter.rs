//! `ferry_fe_filter`: which destination addresses may hold a frontend, per
//! scope (`ferry_common::frontend_filter_slot`), so that the datapath probes
//! `ferry_services` only for them. It must never lack a bit for a frontend
//! in `ferry_services` (that frontend would not be translated): a bit is
//! set before the first frontend it covers is written, and cleared only
//! after the last one is removed. Extra bits only cost a probe.
use std::{collections::BTreeMap, path::Path};

use aya::maps::{Array, HashMap, MapData, MapError};
use ferry_common::{
    FRONTEND_FILTER_WORDS, MAP_FRONTEND_FILTER, ServiceKey, ServiceValue, frontend_filter_slot,
};

use super::{OpenError, open_pinned};

/// The filter and, per bit, how many frontends of `ferry_services` it
/// covers (counted from the services map when opened).
pub struct FrontendFilter {
    words: Array<MapData, u64>,
    counts: BTreeMap<(u32, u64), u32>,
}

impl FrontendFilter {
    /// Open the pinned filter; the counts come from `services`' keys.
    pub fn open(
        pin_dir: &Path,
        services: &HashMap<MapData, ServiceKey, ServiceValue>,
    ) -> Result<Self, OpenError> {
        let mut counts = BTreeMap::new();
        for key in services.keys().filter_map(Result::ok) {
            if let Some(slot) = frontend_filter_slot(key.addr, key.scope) {
                *counts.entry(slot).or_insert(0) += 1;
            }
        }
        Ok(Self {
            words: open_pinned(pin_dir, MAP_FRONTEND_FILTER)?,
            counts,
        })
    }

    /// Write every word as the counts say: what a (re)started agent does
    /// before its programs are attached, so a filter created empty next to
    /// an existing services map (an upgrade) is complete before any packet
    /// reads it. Returns how many words changed.
    pub fn sync(&mut self) -> Result<usize, MapError> {
        let mut want = vec![0u64; FRONTEND_FILTER_WORDS as usize];
        for (&(word, bit), &n) in &self.counts {
            if n > 0 {
                want[word as usize] |= bit;
            }
        }
        let mut changed = 0;
        for (i, w) in want.into_iter().enumerate() {
            let i = i as u32;
            if self.words.get(&i, 0)? != w {
                self.words.set(i, w, 0)?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Before `key` is written to `ferry_services` as a new frontend.
    pub fn add(&mut self, key: &ServiceKey) -> Result<(), MapError> {
        let Some(slot) = frontend_filter_slot(key.addr, key.scope) else {
            return Ok(());
        };
        let n = self.counts.entry(slot).or_insert(0);
        *n += 1;
        if *n == 1 {
            self.update(slot, true)?;
        }
        Ok(())
    }

    /// After `key` left `ferry_services` (or was never written after `add`).
    pub fn remove(&mut self, key: &ServiceKey) -> Result<(), MapError> {
        let Some(slot) = frontend_filter_slot(key.addr, key.scope) else {
            return Ok(());
        };
        let Some(n) = self.counts.get_mut(&slot) else {
            return Ok(());
        };
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.counts.remove(&slot);
            self.update(slot, false)?;
        }
        Ok(())
    }

    fn update(&mut self, (word, bit): (u32, u64), set: bool) -> Result<(), MapError> {
        let old = self.words.get(&word, 0)?;
        let new = if set { old | bit } else { old & !bit };
        if new != old {
            self.words.set(word, new, 0)?;
        }
        Ok(())
    }

    /// Is `key`'s bit set in the map (tests)?
    pub fn covers(&self, key: &ServiceKey) -> Result<bool, MapError> {
        match frontend_filter_slot(key.addr, key.scope) {
            Some((word, bit)) => Ok(self.words.get(&word, 0)? & bit != 0),
            None => Ok(true),
        }
    }
}
