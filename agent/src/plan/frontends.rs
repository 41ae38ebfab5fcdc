//! Frontends of one Service port: its cluster IPs, and the addresses it is
//! reached on from outside (NodePorts, load-balancer IPs, externalIPs),
//! each with the backends `categorize` chose for that traffic.
use std::{net::Ipv4Addr, sync::Arc};

use ferry_common::{
    Backend, LOOPBACK_ADDR, SCOPE_CLUSTER_IP, SCOPE_EXTERNAL, SCOPE_EXTERNAL_FROM_PODS,
    SERVICE_FLAG_LOCAL_ONLY, ServiceKey,
};

use super::{
    categorize::Categorized,
    services::{ParsedService, ServicePort},
};
pub use crate::maps::services::{DesiredFrontend, FrontendOptions};

/// The options of a frontend of `svc`; `load_balancer_ip`: it is one of
/// the Service's load-balancer IPs, which alone are fenced by
/// loadBalancerSourceRanges (as kube-proxy: NodePorts and ClusterIPs are
/// not).
fn options(svc: &ParsedService, load_balancer_ip: bool) -> FrontendOptions {
    FrontendOptions {
        affinity_timeout_s: svc.affinity_timeout_s.unwrap_or(0),
        source_ranges: svc
            .source_ranges
            .as_ref()
            .filter(|_| load_balancer_ip)
            .map(|r| r.iter().copied().collect()),
    }
}

fn frontend(
    addr: Ipv4Addr,
    port: u16,
    scope: u8,
    svc_port: &ServicePort,
    backends: &Arc<[Backend]>,
    (flags, options): (u8, FrontendOptions),
) -> (ServiceKey, DesiredFrontend) {
    let key = ServiceKey {
        addr: addr.octets(),
        port,
        protocol: svc_port.protocol,
        scope,
    };
    let frontend = DesiredFrontend {
        backends: backends.clone(),
        name: svc_port.display.clone(),
        flags,
        options,
    };
    (key, frontend)
}

/// The port on each of the Service's cluster IPs (an iterator: the
/// planner puts them straight into the Service's frontends).
pub fn cluster_ip_frontends(
    svc: &ParsedService,
    port: &ServicePort,
    backends: &Categorized,
) -> impl Iterator<Item = (ServiceKey, DesiredFrontend)> {
    svc.cluster_ips.iter().map(move |ip| {
        let settings = (0, options(svc, false));
        frontend(
            *ip,
            port.port,
            SCOPE_CLUSTER_IP,
            port,
            &backends.cluster,
            settings,
        )
    })
}

/// The addresses and ports the Service port is reached on from outside:
/// its nodePort on `nodeport_addresses`, then externalIPs and load-balancer
/// IPs on the Service port.
pub fn external_addresses(
    svc: &ParsedService,
    port: &ServicePort,
    nodeport_addresses: &[Ipv4Addr],
) -> Vec<(Ipv4Addr, u16)> {
    let node_ports = port
        .node_port
        .into_iter()
        .flat_map(|np| nodeport_addresses.iter().map(move |a| (*a, np)));
    let on_service_port = svc
        .external_ips
        .iter()
        .chain(&svc.load_balancer_ips)
        .map(|a| (*a, port.port));
    node_ports.chain(on_service_port).collect()
}

/// The nodePort on 127.0.0.1, as the node's own processes reach it
/// (kube-proxy's localhost NodePorts): any endpoint, no source NAT, as the
/// node's other addresses from inside the cluster. Only the socket
/// programs read it, for sockets of the node's own namespace.
pub fn loopback_node_port(
    svc: &ParsedService,
    port: &ServicePort,
    backends: &Categorized,
) -> Option<(ServiceKey, DesiredFrontend)> {
    let node_port = port.node_port?;
    Some(frontend(
        Ipv4Addr::from(LOOPBACK_ADDR),
        node_port,
        SCOPE_EXTERNAL_FROM_PODS,
        port,
        &backends.any,
        (0, options(svc, false)),
    ))
}

/// Two frontends per external address: one for clients outside the
/// cluster (externalTrafficPolicy applies), one for this node's pods
/// reaching the same address (any endpoint, no source NAT: kube-proxy's
/// short-circuit).
pub fn external_frontends(
    svc: &ParsedService,
    port: &ServicePort,
    addresses: &[(Ipv4Addr, u16)],
    backends: &Categorized,
) -> Vec<(ServiceKey, DesiredFrontend)> {
    let flags = if svc.policies.external_local {
        SERVICE_FLAG_LOCAL_ONLY
    } else {
        0
    };
    addresses
        .iter()
        .flat_map(|(addr, p)| {
            let fenced = svc.load_balancer_ips.contains(addr) && *p == port.port;
            let from_outside = (flags, options(svc, fenced));
            let from_pods = (0, options(svc, fenced));
            [
                frontend(
                    *addr,
                    *p,
                    SCOPE_EXTERNAL,
                    port,
                    &backends.external,
                    from_outside,
                ),
                frontend(
                    *addr,
                    *p,
                    SCOPE_EXTERNAL_FROM_PODS,
                    port,
                    &backends.any,
                    from_pods,
                ),
            ]
        })
        .collect()
}
