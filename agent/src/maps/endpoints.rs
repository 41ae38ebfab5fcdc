//! Pods on this node: where `bpf_redirect_peer` delivers their traffic.
//! Written by the CNI plugin on ADD, removed on DEL.
use std::{net::Ipv4Addr, path::Path};

use aya::maps::{HashMap, MapData, MapError};
use ferry_common::{Endpoint, EndpointKey, MAP_ENDPOINTS};

use super::{OpenError, is_not_found, open_pinned};

pub struct Endpoints {
    map: HashMap<MapData, EndpointKey, Endpoint>,
}

impl Endpoints {
    pub fn open(pin_dir: &Path) -> Result<Self, OpenError> {
        let map = open_pinned(pin_dir, MAP_ENDPOINTS)?;
        let map = HashMap::try_from(map).map_err(|source| OpenError::Open {
            path: pin_dir.join(MAP_ENDPOINTS).display().to_string(),
            source,
        })?;
        Ok(Self { map })
    }

    pub fn insert(&mut self, addr: Ipv4Addr, endpoint: Endpoint) -> Result<(), MapError> {
        self.map.insert(
            EndpointKey {
                addr: addr.octets(),
            },
            endpoint,
            0,
        )
    }

    pub fn get(&self, addr: Ipv4Addr) -> Result<Option<Endpoint>, MapError> {
        match self.map.get(
            &EndpointKey {
                addr: addr.octets(),
            },
            0,
        ) {
            Ok(e) => Ok(Some(e)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Remove `addr`; missing is fine.
    pub fn remove(&mut self, addr: Ipv4Addr) -> Result<(), MapError> {
        match self.map.remove(&EndpointKey {
            addr: addr.octets(),
        }) {
            Err(e) if !is_not_found(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Every local endpoint, sorted by address.
    pub fn list(&self) -> Result<Vec<(Ipv4Addr, Endpoint)>, MapError> {
        let mut out = Vec::new();
        for item in self.map.iter() {
            match item {
                Ok((k, v)) => out.push((Ipv4Addr::from(k.addr), v)),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|(a, _)| *a);
        Ok(out)
    }
}
