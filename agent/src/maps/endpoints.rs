//! Pods on this node: where `bpf_redirect_peer` delivers their traffic.
//! Written by the CNI plugin on ADD, removed on DEL.
use std::{net::Ipv4Addr, path::Path};

use aya::maps::{HashMap, MapData, MapError};
use ferry_common::{Endpoint, EndpointKey, MAP_ENDPOINTS};

use super::{OpenError, found, is_not_found, missing_is_fine, open_pinned};

pub struct Endpoints(HashMap<MapData, EndpointKey, Endpoint>);

impl Endpoints {
    pub fn open(pin_dir: &Path) -> Result<Self, OpenError> {
        open_pinned(pin_dir, MAP_ENDPOINTS).map(Self)
    }

    pub fn insert(&mut self, addr: Ipv4Addr, endpoint: Endpoint) -> Result<(), MapError> {
        self.0.insert(
            EndpointKey {
                addr: addr.octets(),
            },
            endpoint,
            0,
        )
    }

    pub fn get(&self, addr: Ipv4Addr) -> Result<Option<Endpoint>, MapError> {
        found(self.0.get(
            &EndpointKey {
                addr: addr.octets(),
            },
            0,
        ))
    }

    /// Remove `addr`; missing is fine.
    pub fn remove(&mut self, addr: Ipv4Addr) -> Result<(), MapError> {
        missing_is_fine(self.0.remove(&EndpointKey {
            addr: addr.octets(),
        }))
    }

    /// Every local endpoint, sorted by address.
    pub fn list(&self) -> Result<Vec<(Ipv4Addr, Endpoint)>, MapError> {
        let mut out = Vec::new();
        for item in self.0.iter() {
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
