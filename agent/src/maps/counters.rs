//! Per-outcome packet counters, summed over CPUs.
use std::path::Path;

use aya::maps::{MapData, MapError, PerCpuArray, PerCpuValues};
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

    /// Add `n` to an outcome the agent counts itself (no program counts
    /// it, so the read-modify-write races nothing): on the first CPU's
    /// value, as the sum over CPUs is what is read.
    pub fn add(&mut self, outcome: u32, n: u64) -> Result<(), MapError> {
        let mut values: Vec<Counter> = self.0.get(&outcome, 0)?.to_vec();
        if let Some(first) = values.first_mut() {
            first.packets += n;
        }
        let values = PerCpuValues::try_from(values).map_err(MapError::IoError)?;
        self.0.set(outcome, values, 0)
    }
}
