//! EndpointSlices (as `plan::objects` keeps them, grouped by Service by the
//! planner): read once per Service port into endpoints with their
//! conditions. Which endpoints serve which
//! traffic is decided by `categorize`, not here.
use std::net::Ipv4Addr;

use super::{
    objects::SliceObject,
    problem::{ObjectProblems, Problem},
    services::{ServicePort, protocol_number},
};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Where this node stands, for locality and topology hints.
#[derive(Debug, Clone, Copy)]
pub struct Locality<'a> {
    pub node_name: &'a str,
    /// The node's `topology.kubernetes.io/zone` label.
    pub zone: Option<&'a str>,
}

/// An endpoint's topology hints of one kind (zones, or nodes) as seen from
/// this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hint {
    /// The endpoint carries no hints of this kind.
    Absent,
    /// Its hints name other zones (nodes) only.
    Elsewhere,
    /// Its hints name this node's zone (this node).
    Here,
}

impl Hint {
    fn of<'a>(hinted: Option<impl Iterator<Item = &'a str>>, here: Option<&str>) -> Self {
        let Some(mut names) = hinted.map(|n| n.peekable()) else {
            return Hint::Absent;
        };
        if names.peek().is_none() {
            return Hint::Absent;
        }
        match here {
            Some(here) if names.any(|n| n == here) => Hint::Here,
            _ => Hint::Elsewhere,
        }
    }
}

/// An endpoint address with the port of one slice port, and its
/// conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: Ipv4Addr,
    pub port: u16,
    /// `conditions.ready` as given (nil: true). Usually false while
    /// terminating, but a Service with `publishNotReadyAddresses` keeps it
    /// true, and kube-proxy then still uses the endpoint.
    pub ready: bool,
    /// Terminating but still serving (KEP-1669's fallback).
    pub serving_terminating: bool,
    /// `conditions.terminating`: its pod is going away. It gets no new
    /// flows (unless it is the fallback), but keeps the ones it has.
    pub terminating: bool,
    /// On the node this plan is for.
    pub local: bool,
    /// `hints.forZones` against this node's zone.
    pub zone_hint: Hint,
    /// `hints.forNodes` against this node.
    pub node_hint: Hint,
}

/// Problems of `slice`.
pub fn slice_problems<'a>(
    slice: &'a SliceObject,
    sink: &'a mut Vec<Problem>,
) -> ObjectProblems<'a> {
    ObjectProblems {
        kind: "EndpointSlice",
        namespace: Some(&slice.namespace),
        name: Some(&slice.name),
        sink,
    }
}

/// The endpoints of one Service port across its slices (matched by port
/// name and protocol; the slice carries the resolved target port), sorted
/// and without exact repeats. Bad fields become problems.
pub fn endpoints_for_port(
    slices: &[&SliceObject],
    port: &ServicePort,
    here: Locality,
    problems: &mut Vec<Problem>,
) -> Vec<Endpoint> {
    // Pushed, then sorted and deduplicated: the order and the set a
    // `BTreeSet` would give, without a tree node per port.
    let mut out = Vec::with_capacity(slices.iter().map(|s| s.endpoints.len()).sum());
    for slice in slices {
        let mut problems = slice_problems(slice, problems);
        for (pi, sp) in slice.ports.iter().enumerate() {
            if sp.name.as_deref().unwrap_or("") != port.name
                || protocol_number(sp.protocol.as_deref()) != Ok(Some(port.protocol))
            {
                continue;
            }
            let target = match sp.port.map(u16::try_from) {
                Some(Ok(p)) if p != 0 => p,
                _ => {
                    problems.push(
                        format!("ports[{pi}].port"),
                        format!("{:?} is not a port number", sp.port),
                    );
                    continue;
                }
            };
            for (ei, ep) in slice.endpoints.iter().enumerate() {
                // The API: a nil `ready` or `serving` means true, a nil
                // `terminating` false.
                let ready = ep.ready.unwrap_or(true);
                let serving = ep.serving.unwrap_or(true);
                let terminating = ep.terminating.unwrap_or(false);
                let local = ep.node_name.as_deref().map(String::as_str) == Some(here.node_name);
                let hints = ep.hints();
                let zones = hints.and_then(|h| h.for_zones.as_ref());
                let nodes = hints.and_then(|h| h.for_nodes.as_ref());
                let zone_hint =
                    Hint::of(zones.map(|z| z.iter().map(|z| z.name.as_str())), here.zone);
                let node_hint = Hint::of(
                    nodes.map(|n| n.iter().map(|n| n.name.as_str())),
                    Some(here.node_name),
                );
                for (ai, a) in ep.addresses().enumerate() {
                    let parsed = a.map_err(|a| format!("{a:?} is not an IPv4 address"));
                    let usable = parsed.and_then(|addr| match unroutable(addr) {
                        Some(why) => Err(format!("{addr}: {why}; not used")),
                        None => Ok(addr),
                    });
                    match usable {
                        Ok(addr) => {
                            out.push(Endpoint {
                                addr,
                                port: target,
                                ready,
                                serving_terminating: serving && terminating,
                                terminating,
                                local,
                                zone_hint,
                                node_hint,
                            });
                        }
                        Err(message) => {
                            problems.push(format!("endpoints[{ei}].addresses[{ai}]"), message)
                        }
                    }
                }
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Why `addr` can be no endpoint, as the API server's endpoint validation
/// (and beyond it, the broadcast address): None when it can.
pub fn unroutable(addr: Ipv4Addr) -> Option<&'static str> {
    if addr.is_unspecified() {
        Some("the unspecified address")
    } else if addr.is_loopback() {
        Some("a loopback address")
    } else if addr.is_link_local() {
        Some("a link-local address")
    } else if addr.is_broadcast() {
        Some("the broadcast address")
    } else if addr.is_multicast() {
        Some("a multicast address")
    } else {
        None
    }
}
