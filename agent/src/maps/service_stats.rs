//! `ferry_svc_stats`: per-frontend packets, bytes, new connections and
//! drops, one per-CPU slot per service id.
//!
//! The datapath only ever adds to a slot. Ids are reused (the smallest
//! free one goes to the next new frontend), so the agent zeroes a slot
//! when it hands its id out: a new Service never inherits the counts of a
//! removed one.
use std::path::Path;

use aya::maps::{MapData, MapError, PerCpuArray, PerCpuValues};
use ferry_common::{MAP_SERVICE_STATS, ServiceStats};

use super::{OpenError, open_pinned};

pub struct ServiceStatsTable {
    slots: PerCpuArray<MapData, ServiceStats>,
    /// The same map, for batched zeroing.
    raw: MapData,
}

/// The per-CPU values of one slot added up.
pub fn sum_cpus<'a>(per_cpu: impl IntoIterator<Item = &'a ServiceStats>) -> ServiceStats {
    per_cpu
        .into_iter()
        .fold(ServiceStats::default(), |mut acc, s| {
            // Wrapping: a u64 counter of the kernel's wraps too, and a
            // scrape must not panic over it.
            acc.packets = acc.packets.wrapping_add(s.packets);
            acc.bytes = acc.bytes.wrapping_add(s.bytes);
            acc.new_connections = acc.new_connections.wrapping_add(s.new_connections);
            for (a, d) in acc.drops.iter_mut().zip(s.drops) {
                *a = a.wrapping_add(d);
            }
            acc
        })
}

impl ServiceStatsTable {
    pub fn open(pin_dir: &Path) -> Result<Self, OpenError> {
        let path = pin_dir.join(MAP_SERVICE_STATS);
        let raw = MapData::from_pin(&path).map_err(|source| OpenError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            slots: open_pinned(pin_dir, MAP_SERVICE_STATS)?,
            raw,
        })
    }

    /// Service `id`'s counts, summed over CPUs.
    pub fn read(&self, id: u32) -> Result<ServiceStats, MapError> {
        Ok(sum_cpus(self.slots.get(&id, 0)?.iter()))
    }

    /// Every slot's counts, summed over CPUs, read in batches (a scrape
    /// reads 100,000 frontends' counts in a few calls, not one each).
    pub fn read_all(pin_dir: &Path) -> std::io::Result<Vec<ServiceStats>> {
        let slots = super::batch::lookup_all_per_cpu::<u32, ServiceStats>(
            &pin_dir.join(MAP_SERVICE_STATS),
        )?;
        let mut out = vec![ServiceStats::default(); slots.len()];
        for (id, per_cpu) in slots {
            if let Some(total) = out.get_mut(id as usize) {
                *total = sum_cpus(&per_cpu);
            }
        }
        Ok(out)
    }

    /// Every CPU's value of slot `id` (tests write and read them).
    pub fn per_cpu(&self, id: u32) -> Result<Vec<ServiceStats>, MapError> {
        Ok(self.slots.get(&id, 0)?.to_vec())
    }

    /// Set slot `id` to `value` on every CPU.
    pub fn set_all(&mut self, id: u32, value: ServiceStats) -> Result<(), MapError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| MapError::IoError(e))?;
        let values = PerCpuValues::try_from(vec![value; cpus]).map_err(MapError::IoError)?;
        self.slots.set(id, values, 0)
    }

    /// The slots the map has (it is sized by the agent's options).
    pub fn slots(&self) -> u32 {
        self.slots.len()
    }

    /// Zero the slots `ids` on every CPU, in batches (a full sync hands
    /// out 100,000 ids at once). Ids past the map's slots are skipped:
    /// the datapath counts nothing for them either.
    pub fn zero_many(&mut self, ids: &[u32]) -> std::io::Result<()> {
        let slots = self.slots();
        let ids: Vec<u32> = ids.iter().copied().filter(|&id| id < slots).collect();
        super::batch::zero_per_cpu(&self.raw, &ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_add_up_field_by_field() {
        let mut a = ServiceStats {
            packets: 3,
            bytes: 300,
            new_connections: 1,
            ..Default::default()
        };
        a.drops[0] = 2;
        let mut b = ServiceStats {
            packets: 4,
            bytes: 50,
            ..Default::default()
        };
        b.drops[0] = 1;
        b.drops[7] = 9;
        let sum = sum_cpus(&[a, b, ServiceStats::default()]);
        assert_eq!((sum.packets, sum.bytes, sum.new_connections), (7, 350, 1));
        assert_eq!(sum.drops[0], 3);
        assert_eq!(sum.drops[7], 9);
        assert_eq!(sum.drops[1..7], [0; 6]);
    }
}
