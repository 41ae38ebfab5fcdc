//! `ferry_node`: this node's own facts for the datapath.
use std::{net::Ipv4Addr, path::Path};

use aya::maps::{Array, MapData, MapError};
use ferry_common::{MAP_NODE, NodeConfig, SNAT_PORT_MAX, SNAT_PORT_MIN};

use super::{OpenError, open_pinned};

pub struct NodeMap(Array<MapData, NodeConfig>);

impl NodeMap {
    pub fn open(pin_dir: &Path) -> Result<Self, OpenError> {
        open_pinned(pin_dir, MAP_NODE).map(Self)
    }

    pub fn get(&self) -> Result<NodeConfig, MapError> {
        self.0.get(&0, 0)
    }

    /// Record this node's address (None: not known), with the default
    /// source-NAT ports.
    pub fn set_address(&mut self, addr: Option<Ipv4Addr>) -> Result<(), MapError> {
        self.set(addr, (SNAT_PORT_MIN, SNAT_PORT_MAX))
    }

    /// Record this node's address and its source-NAT port range.
    pub fn set(&mut self, addr: Option<Ipv4Addr>, snat_ports: (u16, u16)) -> Result<(), MapError> {
        let config = NodeConfig {
            node_addr: addr.map_or([0; 4], |a| a.octets()),
            snat_port_min: snat_ports.0,
            snat_port_max: snat_ports.1,
        };
        if self.get()? != config {
            self.0.set(0, config, 0)?;
        }
        Ok(())
    }
}
