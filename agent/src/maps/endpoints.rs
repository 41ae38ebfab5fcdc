//! Pods on this node: where `bpf_redirect_peer` delivers their traffic
//! (`ferry_endpoints`, by address), and the one source address each pod's
//! veth may carry (`ferry_pod_srcs`, by ifindex). Written by the CNI plugin
//! on ADD, removed on DEL; the two maps always change together here.
use std::{net::Ipv4Addr, path::Path};

use aya::maps::{HashMap, MapData, MapError};
use ferry_common::{Endpoint, EndpointKey, MAP_ENDPOINTS, MAP_POD_SOURCES, PodSource};

use super::{OpenError, found, is_not_found, missing_is_fine, open_pinned};

pub struct Endpoints {
    by_addr: HashMap<MapData, EndpointKey, Endpoint>,
    sources: HashMap<MapData, u32, PodSource>,
}

impl Endpoints {
    pub fn open(pin_dir: &Path) -> Result<Self, OpenError> {
        Ok(Self {
            by_addr: open_pinned(pin_dir, MAP_ENDPOINTS)?,
            sources: open_pinned(pin_dir, MAP_POD_SOURCES)?,
        })
    }

    /// Record the pod `addr` behind the veth `endpoint.ifindex`. Its source
    /// is written first: until then the veth's IPv4 is dropped, which is
    /// harmless before the pod runs.
    pub fn insert(&mut self, addr: Ipv4Addr, endpoint: Endpoint) -> Result<(), MapError> {
        self.sources.insert(
            endpoint.ifindex,
            PodSource {
                addr: addr.octets(),
            },
            0,
        )?;
        self.by_addr.insert(
            EndpointKey {
                addr: addr.octets(),
            },
            endpoint,
            0,
        )
    }

    /// Give every recorded pod its source entry when it has none (pods set
    /// up by a ferry-cni that predates `ferry_pod_srcs`, whose IPv4 would
    /// otherwise be dropped as spoofed). Entries present are left alone: a
    /// CNI ADD may be writing one right now. Returns how many were added.
    pub fn restore_sources(&mut self) -> Result<usize, MapError> {
        let mut added = 0;
        for (addr, endpoint) in self.list()? {
            if found(self.sources.get(&endpoint.ifindex, 0))?.is_none() {
                self.sources.insert(
                    endpoint.ifindex,
                    PodSource {
                        addr: addr.octets(),
                    },
                    0,
                )?;
                added += 1;
            }
        }
        Ok(added)
    }

    /// The address the veth `ifindex` may send from.
    pub fn source_of(&self, ifindex: u32) -> Result<Option<Ipv4Addr>, MapError> {
        Ok(found(self.sources.get(&ifindex, 0))?.map(|s| Ipv4Addr::from(s.addr)))
    }

    pub fn get(&self, addr: Ipv4Addr) -> Result<Option<Endpoint>, MapError> {
        found(self.by_addr.get(
            &EndpointKey {
                addr: addr.octets(),
            },
            0,
        ))
    }

    /// Remove `addr` and its veth's source entry (unless the veth's
    /// ifindex now belongs to another pod); missing is fine.
    pub fn remove(&mut self, addr: Ipv4Addr) -> Result<(), MapError> {
        if let Some(endpoint) = self.get(addr)?
            && self.source_of(endpoint.ifindex)? == Some(addr)
        {
            missing_is_fine(self.sources.remove(&endpoint.ifindex))?;
        }
        missing_is_fine(self.by_addr.remove(&EndpointKey {
            addr: addr.octets(),
        }))
    }

    /// Every local endpoint, sorted by address.
    pub fn list(&self) -> Result<Vec<(Ipv4Addr, Endpoint)>, MapError> {
        let mut out = Vec::new();
        for item in self.by_addr.iter() {
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
