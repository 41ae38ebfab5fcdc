//! The syncer: diff the desired frontends against what the maps hold and
//! apply only the difference, so a restart with unchanged objects writes
//! nothing and an edit touches only the frontends it changes.
use std::collections::BTreeMap;

use ferry_common::ServiceKey;

use crate::{
    maps::{ServiceTable, SyncError},
    model::DesiredFrontend,
};

/// The service maps as the syncer sees them: the real pinned maps, or an
/// in-memory stand-in for unit tests.
pub trait ServiceMaps {
    fn current(&self) -> Result<BTreeMap<ServiceKey, DesiredFrontend>, SyncError>;
    fn upsert(&mut self, key: ServiceKey, frontend: &DesiredFrontend) -> Result<(), SyncError>;
    fn remove(&mut self, key: &ServiceKey) -> Result<(), SyncError>;
}

impl ServiceMaps for ServiceTable {
    fn current(&self) -> Result<BTreeMap<ServiceKey, DesiredFrontend>, SyncError> {
        Ok(self
            .list()?
            .into_iter()
            .map(|r| {
                (
                    r.frontend,
                    DesiredFrontend {
                        backends: r.backends,
                        name: r.name,
                        flags: r.value.flags,
                    },
                )
            })
            .collect())
    }

    fn upsert(&mut self, key: ServiceKey, frontend: &DesiredFrontend) -> Result<(), SyncError> {
        self.upsert_frontend(key, &frontend.backends, &frontend.name, frontend.flags)
            .map(|_| ())
    }

    fn remove(&mut self, key: &ServiceKey) -> Result<(), SyncError> {
        ServiceTable::remove(self, key)
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncStats {
    pub upserted: usize,
    pub removed: usize,
    pub unchanged: usize,
    /// Frontends that could not be written (each logged); the rest went on.
    pub failed: usize,
}

/// Bring `maps` to `desired`. A frontend that fails (too many backends, a
/// full map) is logged and skipped; the others are still applied.
pub fn sync(
    maps: &mut impl ServiceMaps,
    desired: &BTreeMap<ServiceKey, DesiredFrontend>,
) -> Result<SyncStats, SyncError> {
    let current = maps.current()?;
    let mut stats = SyncStats::default();
    for (key, want) in desired {
        if current.get(key) == Some(want) {
            stats.unchanged += 1;
            continue;
        }
        match maps.upsert(*key, want) {
            Ok(()) => stats.upserted += 1,
            Err(e) => {
                stats.failed += 1;
                tracing::error!(frontend = %want.name, error = %e, "cannot program frontend");
            }
        }
    }
    for key in current.keys() {
        if !desired.contains_key(key) {
            match maps.remove(key) {
                Ok(()) => stats.removed += 1,
                Err(e) => {
                    stats.failed += 1;
                    tracing::error!(error = %e, "cannot remove frontend");
                }
            }
        }
    }
    Ok(stats)
}

/// In-memory service maps for tests.
#[derive(Debug, Default)]
pub struct MemoryMaps {
    pub frontends: BTreeMap<ServiceKey, DesiredFrontend>,
    pub writes: usize,
    /// Frontends whose upsert fails, to test partial failure.
    pub poisoned: Vec<ServiceKey>,
}

impl ServiceMaps for MemoryMaps {
    fn current(&self) -> Result<BTreeMap<ServiceKey, DesiredFrontend>, SyncError> {
        Ok(self.frontends.clone())
    }

    fn upsert(&mut self, key: ServiceKey, frontend: &DesiredFrontend) -> Result<(), SyncError> {
        if self.poisoned.contains(&key) {
            return Err(SyncError::TooManyBackends {
                frontend: frontend.name.clone(),
                count: frontend.backends.len(),
                max: 0,
            });
        }
        self.writes += 1;
        self.frontends.insert(key, frontend.clone());
        Ok(())
    }

    fn remove(&mut self, key: &ServiceKey) -> Result<(), SyncError> {
        self.writes += 1;
        self.frontends.remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::{Backend, PROTO_TCP, SCOPE_CLUSTER_IP};

    fn key(last: u8) -> ServiceKey {
        ServiceKey {
            addr: [10, 96, 0, last],
            port: 80,
            protocol: PROTO_TCP,
            scope: SCOPE_CLUSTER_IP,
        }
    }

    fn fe(backends: &[u8]) -> DesiredFrontend {
        DesiredFrontend {
            backends: backends
                .iter()
                .map(|b| Backend {
                    addr: [10, 244, 0, *b],
                    port: 8080,
                    pad: [0; 2],
                })
                .collect(),
            name: "ns/s".into(),
            flags: 0,
        }
    }

    #[test]
    fn applies_only_the_difference() {
        let mut maps = MemoryMaps::default();
        let mut desired = BTreeMap::from([(key(1), fe(&[1, 2])), (key(2), fe(&[3]))]);
        let s = sync(&mut maps, &desired).unwrap();
        assert_eq!((s.upserted, s.removed, s.unchanged), (2, 0, 0));
        assert_eq!(maps.frontends, desired);

        let s = sync(&mut maps, &desired).unwrap();
        assert_eq!(
            (s.upserted, s.removed, s.unchanged),
            (0, 0, 2),
            "restart: no writes"
        );

        desired.insert(key(1), fe(&[1, 2, 4]));
        desired.remove(&key(2));
        desired.insert(key(3), fe(&[]));
        let writes = maps.writes;
        let s = sync(&mut maps, &desired).unwrap();
        assert_eq!((s.upserted, s.removed, s.unchanged), (2, 1, 0));
        assert_eq!(maps.writes - writes, 3);
        assert_eq!(maps.frontends, desired);
    }

    #[test]
    fn one_failing_frontend_does_not_stop_the_rest() {
        let mut maps = MemoryMaps {
            poisoned: vec![key(1)],
            ..Default::default()
        };
        let desired = BTreeMap::from([(key(1), fe(&[1])), (key(2), fe(&[2]))]);
        let s = sync(&mut maps, &desired).unwrap();
        assert_eq!((s.upserted, s.failed), (1, 1));
        assert!(maps.frontends.contains_key(&key(2)));
    }
}
