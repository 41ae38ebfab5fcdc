//! `ferry_affinity`: which backend each client of a frontend with
//! `sessionAffinity: ClientIP` goes to. The datapath writes it; the agent
//! settles it when a backend set changes (`ServiceTable`); this is the
//! read side for the CLI and the tests.
use std::path::Path;

use aya::maps::{HashMap, MapData, MapError};
use ferry_common::{AffinityEntry, AffinityKey, MAP_AFFINITY};

use super::{OpenError, open_pinned};

pub struct AffinityTable(HashMap<MapData, AffinityKey, AffinityEntry>);

impl AffinityTable {
    pub fn open(pin_dir: &Path) -> Result<Self, OpenError> {
        open_pinned(pin_dir, MAP_AFFINITY).map(Self)
    }

    /// Every entry, sorted by key.
    pub fn entries(&self) -> Result<Vec<(AffinityKey, AffinityEntry)>, MapError> {
        let mut out = self.0.iter().collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|(k, _)| *k);
        Ok(out)
    }

    /// Write `entry` for `key` (tests: an entry as old as they need).
    pub fn set(&mut self, key: AffinityKey, entry: AffinityEntry) -> Result<(), MapError> {
        self.0.insert(key, entry, 0)
    }
}
