//! `ferry_svc_cidrs`: the service CIDRs and the allocated ClusterIPs (/32),
//! which the datapath consults for a pod's packet that no frontend took.
//! Written by the agent from `--service-cidr` and the Services.
use std::{collections::BTreeMap, path::Path};

use aya::maps::{MapData, MapError, lpm_trie::LpmTrie};
use ferry_common::{MAP_SERVICE_RANGES, ServiceRange};

use super::{OpenError, lpm_entries, lpm_key as key, missing_is_fine, open_pinned};
use crate::net::Ipv4Net;

pub struct ServiceRanges(LpmTrie<MapData, [u8; 4], ServiceRange>);

impl ServiceRanges {
    pub fn open(pin_dir: &Path) -> Result<Self, OpenError> {
        open_pinned(pin_dir, MAP_SERVICE_RANGES).map(Self)
    }

    /// Every entry, by prefix.
    pub fn list(&self) -> Result<BTreeMap<Ipv4Net, ServiceRange>, MapError> {
        lpm_entries(&self.0)
    }

    pub fn insert(&mut self, net: &Ipv4Net, range: ServiceRange) -> Result<(), MapError> {
        self.0.insert(&key(net), range, 0)
    }

    /// Remove `net`; missing is fine.
    pub fn remove(&mut self, net: &Ipv4Net) -> Result<(), MapError> {
        missing_is_fine(self.0.remove(&key(net)))
    }
}
