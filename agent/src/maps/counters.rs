//! Per-outcome packet counters, summed over CPUs.
use std::path::Path;

use aya::maps::{MapData, MapError, PerCpuArray};
use ferry_common::{Counter, MAP_COUNTERS, outcome};

use super::{OpenError, open_pinned};

pub struct Counters(PerCpuArray<MapData, Counter>);

impl Counters {
    pub fn open(pin_dir: &Path) -> Result<Self, OpenError> {
        open_pinned(pin_dir, MAP_COUNTERS).map(Self)
    }

    /// Totals per outcome, indexed like `outcome::NAMES`.
    pub fn read(&self) -> Result<Vec<Counter>, MapError> {
        (0..outcome::COUNT)
            .map(|i| {
                let per_cpu = self.0.get(&i, 0)?;
                Ok(per_cpu.iter().fold(Counter::default(), |acc, c| Counter {
                    packets: acc.packets + c.packets,
                    bytes: acc.bytes + c.bytes,
                }))
            })
            .collect()
    }
}
