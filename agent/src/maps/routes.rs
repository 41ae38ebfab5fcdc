//! Where other nodes' pods live: pod CIDR -> node address and how to get
//! there. Written by the agent from Node objects.
use std::{collections::BTreeMap, path::Path};

use aya::maps::{MapData, MapError, lpm_trie::LpmTrie};
use ferry_common::{MAP_ROUTES, Route};

use super::{OpenError, is_not_found, lpm_entries, lpm_key as key, open_pinned};
use crate::net::Ipv4Net;

pub struct Routes(LpmTrie<MapData, [u8; 4], Route>);

/// What a sync of the route map changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RouteStats {
    pub upserted: usize,
    pub removed: usize,
}

impl Routes {
    pub fn open(pin_dir: &Path) -> Result<Self, OpenError> {
        open_pinned(pin_dir, MAP_ROUTES).map(Self)
    }

    /// Every route, by pod CIDR.
    pub fn list(&self) -> Result<BTreeMap<Ipv4Net, Route>, MapError> {
        lpm_entries(&self.0)
    }

    /// Make the map hold exactly `desired`: upsert what differs, then remove
    /// what is no longer wanted (a moved CIDR is never unrouted in between).
    pub fn sync(&mut self, desired: &BTreeMap<Ipv4Net, Route>) -> Result<RouteStats, MapError> {
        let current = self.list()?;
        let mut stats = RouteStats::default();
        for (net, route) in desired {
            if current.get(net) != Some(route) {
                self.0.insert(&key(net), *route, 0)?;
                stats.upserted += 1;
            }
        }
        for net in current.keys().filter(|n| !desired.contains_key(n)) {
            match self.0.remove(&key(net)) {
                Err(e) if !is_not_found(&e) => return Err(e),
                _ => stats.removed += 1,
            }
        }
        Ok(stats)
    }
}
