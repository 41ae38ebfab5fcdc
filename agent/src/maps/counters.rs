//! Per-outcome packet counters, summed over CPUs.
use std::path::Path;

use aya::maps::{MapData, MapError, PerCpuArray};
use ferry_common::{Counter, MAP_COUNTERS, outcome};

use super::{OpenError, open_pinned};

pub struct Counters {
    map: PerCpuArray<MapData, Counter>,
}

impl Counters {
    pub fn open(pin_dir: &Path) -> Result<Self, OpenError> {
        let map = open_pinned(pin_dir, MAP_COUNTERS)?;
        let map = PerCpuArray::try_from(map).map_err(|source| OpenError::Open {
            path: pin_dir.join(MAP_COUNTERS).display().to_string(),
            source,
        })?;
        Ok(Self { map })
    }

    /// Totals per outcome, indexed like `outcome::NAMES`.
    pub fn read(&self) -> Result<Vec<Counter>, MapError> {
        (0..outcome::COUNT)
            .map(|i| {
                let per_cpu = self.map.get(&i, 0)?;
                Ok(per_cpu.iter().fold(Counter::default(), |acc, c| Counter {
                    packets: acc.packets + c.packets,
                    bytes: acc.bytes + c.bytes,
                }))
            })
            .collect()
    }
}
