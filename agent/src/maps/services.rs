//! Service frontends and their backend sets.
//!
//! Update protocol (the datapath never sees a half-written backend set):
//! 1. write every slot of the new set into the bank the frontend is not using;
//! 2. replace the frontend's `ServiceValue` (one atomic map update) so it
//!    points at that bank with the new count;
//! 3. the previous bank stays intact until the next update, for packets that
//!    read the old value just before the flip.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use aya::maps::{HashMap, MapData, MapError};
use ferry_common::{
    Backend, BackendKey, MAP_BACKENDS, MAP_SERVICE_NAMES, MAP_SERVICES, MAX_BACKENDS_PER_SERVICE,
    ServiceKey, ServiceName, ServiceValue,
};

use super::{OpenError, found, is_not_found, missing_is_fine, open_pinned};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(
        "service {frontend} has {count} backends; at most {max} per frontend are supported: scale the Service's endpoints down"
    )]
    TooManyBackends {
        frontend: String,
        count: usize,
        max: u16,
    },
    #[error(
        "writing {map} failed: {source}; if the map is full, raise its size or remove Services"
    )]
    Write { map: &'static str, source: MapError },
    #[error("reading {map} failed: {source}")]
    Read { map: &'static str, source: MapError },
    #[error("no free service id: more than 2^32 frontends")]
    NoFreeId,
}

/// One frontend as the datapath sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    pub frontend: ServiceKey,
    pub value: ServiceValue,
    /// The active bank's backends, slot order.
    pub backends: Vec<Backend>,
    /// "namespace/name:port" ("" if unnamed).
    pub name: String,
}

pub struct ServiceTable {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, BackendKey, Backend>,
    names: HashMap<MapData, u32, ServiceName>,
    used_ids: BTreeSet<u32>,
}

fn display_frontend(k: &ServiceKey) -> String {
    format!(
        "{}:{}/{}",
        std::net::Ipv4Addr::from(k.addr),
        k.port,
        ferry_common::protocol_name(k.protocol)
    )
}

/// `map_err` for a failed write of `map`.
fn write_failed(map: &'static str) -> impl Fn(MapError) -> SyncError {
    move |source| SyncError::Write { map, source }
}

/// `map_err` for a failed read of `map`.
fn read_failed(map: &'static str) -> impl Fn(MapError) -> SyncError {
    move |source| SyncError::Read { map, source }
}

impl ServiceTable {
    pub fn open(pin_dir: &Path) -> Result<Self, OpenError> {
        let services: HashMap<MapData, ServiceKey, ServiceValue> =
            open_pinned(pin_dir, MAP_SERVICES)?;
        let backends = open_pinned(pin_dir, MAP_BACKENDS)?;
        let names = open_pinned(pin_dir, MAP_SERVICE_NAMES)?;
        let used_ids = services
            .iter()
            .filter_map(Result::ok)
            .map(|(_, v)| v.service_id)
            .collect();
        Ok(Self {
            services,
            backends,
            names,
            used_ids,
        })
    }

    fn allocate_id(&mut self) -> Result<u32, SyncError> {
        // Ids start at 1 so that 0 never names a live service.
        let mut id = 1u32;
        for used in &self.used_ids {
            if *used > id {
                break;
            }
            id = used.checked_add(1).ok_or(SyncError::NoFreeId)?;
        }
        self.used_ids.insert(id);
        Ok(id)
    }

    pub fn get(&self, frontend: &ServiceKey) -> Result<Option<ServiceValue>, SyncError> {
        found(self.services.get(frontend, 0)).map_err(read_failed(MAP_SERVICES))
    }

    /// Create or replace `frontend`'s backend set. An empty set makes the
    /// datapath reject new connections to it. Returns the service id.
    pub fn upsert(&mut self, frontend: ServiceKey, backends: &[Backend]) -> Result<u32, SyncError> {
        self.upsert_named(frontend, backends, "")
    }

    /// `upsert`, recording `name` ("namespace/name:port") for the CLI.
    pub fn upsert_named(
        &mut self,
        frontend: ServiceKey,
        backends: &[Backend],
        name: &str,
    ) -> Result<u32, SyncError> {
        self.upsert_frontend(frontend, backends, name, 0)
    }

    /// `upsert_named` with `SERVICE_FLAG_*` bits.
    pub fn upsert_frontend(
        &mut self,
        frontend: ServiceKey,
        backends: &[Backend],
        name: &str,
        flags: u8,
    ) -> Result<u32, SyncError> {
        if backends.len() > MAX_BACKENDS_PER_SERVICE as usize {
            return Err(SyncError::TooManyBackends {
                frontend: display_frontend(&frontend),
                count: backends.len(),
                max: MAX_BACKENDS_PER_SERVICE,
            });
        }
        let (service_id, bank) = match self.get(&frontend)? {
            Some(v) => (v.service_id, v.bank ^ 1),
            None => (self.allocate_id()?, 0),
        };
        for (slot, backend) in backends.iter().enumerate() {
            let key = BackendKey {
                service_id,
                slot: slot as u16,
                bank,
                pad: 0,
            };
            self.backends
                .insert(key, backend, 0)
                .map_err(write_failed(MAP_BACKENDS))?;
        }
        // Slots beyond the new count in this bank are leftovers of an older
        // set; nothing will read them once the count is written.
        self.remove_slots(service_id, bank, backends.len() as u16)?;
        self.names
            .insert(service_id, ServiceName::new(name), 0)
            .map_err(write_failed(MAP_SERVICE_NAMES))?;
        let value = ServiceValue {
            service_id,
            backend_count: backends.len() as u16,
            bank,
            flags,
        };
        self.services
            .insert(frontend, value, 0)
            .map_err(write_failed(MAP_SERVICES))?;
        Ok(service_id)
    }

    /// Remove `frontend` and both of its banks. Missing is fine.
    pub fn remove(&mut self, frontend: &ServiceKey) -> Result<(), SyncError> {
        let Some(value) = self.get(frontend)? else {
            return Ok(());
        };
        missing_is_fine(self.services.remove(frontend)).map_err(write_failed(MAP_SERVICES))?;
        self.remove_slots(value.service_id, 0, 0)?;
        self.remove_slots(value.service_id, 1, 0)?;
        missing_is_fine(self.names.remove(&value.service_id))
            .map_err(write_failed(MAP_SERVICE_NAMES))?;
        self.used_ids.remove(&value.service_id);
        Ok(())
    }

    /// Remove the contiguous slots `from..` of one bank.
    fn remove_slots(&mut self, service_id: u32, bank: u8, from: u16) -> Result<(), SyncError> {
        for slot in from..MAX_BACKENDS_PER_SERVICE {
            let key = BackendKey {
                service_id,
                slot,
                bank,
                pad: 0,
            };
            match self.backends.remove(&key) {
                Err(e) if is_not_found(&e) => break,
                removed => removed.map_err(write_failed(MAP_BACKENDS))?,
            }
        }
        Ok(())
    }

    /// Every frontend with its active backends, sorted by frontend.
    pub fn list(&self) -> Result<Vec<ServiceRecord>, SyncError> {
        let mut frontends = BTreeMap::new();
        for item in self.services.iter() {
            let (k, v) = item.map_err(read_failed(MAP_SERVICES))?;
            frontends.insert((k.addr, k.port, k.protocol, k.scope), (k, v));
        }
        let mut out = Vec::with_capacity(frontends.len());
        for (_, (frontend, value)) in frontends {
            let mut backends = Vec::with_capacity(value.backend_count as usize);
            for slot in 0..value.backend_count {
                let key = BackendKey {
                    service_id: value.service_id,
                    slot,
                    bank: value.bank,
                    pad: 0,
                };
                let backend = found(self.backends.get(&key, 0));
                backends.extend(backend.map_err(read_failed(MAP_BACKENDS))?);
            }
            let name = match self.names.get(&value.service_id, 0) {
                Ok(n) => n.as_str().to_string(),
                Err(_) => String::new(),
            };
            out.push(ServiceRecord {
                frontend,
                value,
                backends,
                name,
            });
        }
        Ok(out)
    }
}
