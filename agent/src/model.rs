//! The pure model: Kubernetes objects in, the dataplane state this node
//! should have out. All Service semantics live here and are unit-tested
//! without a kernel.
//!
//! What is followed, as kube-proxy does:
//! - ClusterIP, NodePort and LoadBalancer Services get their IPv4 cluster
//!   IPs served on every TCP and UDP port; headless (`clusterIP: None`) and
//!   ExternalName Services are not proxied; SCTP ports are skipped.
//! - Endpoints come from EndpointSlices (`discovery.k8s.io/v1`, IPv4) labelled
//!   `kubernetes.io/service-name`, matched to a service port by port name and
//!   protocol; the slice port carries the resolved target port, so named
//!   target ports work.
//! - Ready endpoints only; when none is ready, serving-and-terminating ones
//!   (KEP-1669), so a rolling update does not refuse connections.
//! - `internalTrafficPolicy: Local` keeps only endpoints on this node.
//! - An invalid object or field is reported and skipped; it never stops the
//!   rest from being served.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
};

use ferry_common::{
    Backend, PROTO_TCP, PROTO_UDP, SCOPE_CLUSTER_IP, SCOPE_EXTERNAL, SCOPE_EXTERNAL_FROM_PODS,
    SERVICE_FLAG_LOCAL_ONLY, ServiceKey,
};
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

use crate::net::Ipv4Net;

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Everything the agent reads.
#[derive(Debug, Default, Clone)]
pub struct Objects {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
}

/// One frontend's desired backends and its name for the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredFrontend {
    pub backends: Vec<Backend>,
    pub name: String,
    /// `SERVICE_FLAG_*` bits.
    pub flags: u8,
}

/// What the dataplane of this node should hold.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Desired {
    pub frontends: BTreeMap<ServiceKey, DesiredFrontend>,
    /// This node's pod CIDR, from its Node object.
    pub pod_cidr: Option<Ipv4Net>,
    /// Other nodes by pod CIDR: where their pods are reached.
    pub peers: BTreeMap<Ipv4Net, PeerNode>,
    /// This node's address (its first IPv4 InternalIP).
    pub node_addr: Option<Ipv4Addr>,
    /// healthCheckNodePorts to answer (LoadBalancer, externalTrafficPolicy
    /// Local), by port.
    pub health_checks: BTreeMap<u16, HealthCheck>,
}

/// A healthCheckNodePort: kube-proxy answers 200 while the node has a ready
/// local endpoint of the Service, 503 otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub namespace: String,
    pub name: String,
    pub local_endpoints: usize,
}

/// Another node, as far as routing to its pods goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNode {
    pub name: String,
    /// Its InternalIP.
    pub addr: Ipv4Addr,
}

/// An object (or part of one) that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// "Service default/web", "EndpointSlice default/web-abc", "Node n1".
    pub object: String,
    /// The offending field path.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.object, self.field, self.message)
    }
}

fn object_name(kind: &str, namespace: Option<&str>, name: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("{kind} {ns}/{}", name.unwrap_or("?")),
        None => format!("{kind} {}", name.unwrap_or("?")),
    }
}

fn protocol_number(p: Option<&str>) -> Result<Option<u8>, String> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(Some(PROTO_TCP)),
        "UDP" => Ok(Some(PROTO_UDP)),
        "SCTP" => Ok(None),
        other => Err(format!("unknown protocol {other:?}")),
    }
}

/// An endpoint address with the port of one slice port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    addr: Ipv4Addr,
    port: u16,
    ready: bool,
    serving_terminating: bool,
    on_this_node: bool,
}

/// How this node serves Services, beyond what the objects say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    pub node_name: String,
    /// The addresses NodePorts answer on (kube-proxy's
    /// --nodeport-addresses); None: this node's InternalIPs.
    pub nodeport_addresses: Option<Vec<Ipv4Addr>>,
    /// The cluster's NodePort range (the apiserver's
    /// --service-node-port-range), inclusive.
    pub nodeport_range: (u16, u16),
}

pub const DEFAULT_NODEPORT_RANGE: (u16, u16) = (30000, 32767);

impl ModelConfig {
    pub fn for_node(node_name: &str) -> Self {
        Self {
            node_name: node_name.to_string(),
            nodeport_addresses: None,
            nodeport_range: DEFAULT_NODEPORT_RANGE,
        }
    }
}

/// Compute this node's desired dataplane state with default options.
pub fn desired_state(objects: &Objects, node_name: &str) -> (Desired, Vec<Problem>) {
    desired_state_with(objects, &ModelConfig::for_node(node_name))
}

fn internal_ips(node: &Node) -> Vec<Ipv4Addr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|a| {
            a.iter()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Compute this node's desired dataplane state.
pub fn desired_state_with(objects: &Objects, cfg: &ModelConfig) -> (Desired, Vec<Problem>) {
    let node_name = cfg.node_name.as_str();
    let mut problems = Vec::new();
    let mut desired = Desired::default();
    let own_ips: Vec<Ipv4Addr> = objects
        .nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() == Some(node_name))
        .flat_map(internal_ips)
        .collect();
    desired.node_addr = own_ips.first().copied();
    let nodeport_addresses = cfg.nodeport_addresses.clone().unwrap_or(own_ips);

    for node in &objects.nodes {
        let Some(name) = node.metadata.name.as_deref() else {
            continue;
        };
        let spec = node.spec.as_ref();
        let cidrs = spec
            .and_then(|s| s.pod_cidrs.clone())
            .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
            .unwrap_or_default();
        let v4 = cidrs.iter().find(|c| !c.contains(':'));
        let cidr = match v4.map(|c| c.parse::<Ipv4Net>()) {
            Some(Ok(net)) => net,
            Some(Err(e)) => {
                problems.push(Problem {
                    object: object_name("Node", None, Some(name)),
                    field: "spec.podCIDR".into(),
                    message: e.to_string(),
                });
                continue;
            }
            None => continue,
        };
        if name == node_name {
            desired.pod_cidr = Some(cidr);
            continue;
        }
        let internal_ip = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| {
                a.iter()
                    .find(|a| a.type_ == "InternalIP" && !a.address.contains(':'))
            });
        match internal_ip.map(|a| a.address.parse::<Ipv4Addr>()) {
            Some(Ok(addr)) => {
                desired.peers.insert(
                    cidr,
                    PeerNode {
                        name: name.to_string(),
                        addr,
                    },
                );
            }
            Some(Err(e)) => problems.push(Problem {
                object: object_name("Node", None, Some(name)),
                field: "status.addresses".into(),
                message: format!("InternalIP is not an IPv4 address: {e}"),
            }),
            None => problems.push(Problem {
                object: object_name("Node", None, Some(name)),
                field: "status.addresses".into(),
                message: "no IPv4 InternalIP: its pods cannot be routed to".into(),
            }),
        }
    }
    // Our own CIDR is never routed elsewhere, whatever another Node claims.
    if let Some(own) = desired.pod_cidr
        && let Some(peer) = desired.peers.remove(&own)
    {
        problems.push(Problem {
            object: object_name("Node", None, Some(&peer.name)),
            field: "spec.podCIDR".into(),
            message: format!("{own} is this node's own pod CIDR; not routed"),
        });
    }

    // Slices by (namespace, service name).
    let mut slices: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in &objects.slices {
        let meta = &slice.metadata;
        let Some(service) = meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
            continue;
        };
        if slice.address_type != "IPv4" {
            continue;
        }
        let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
        slices.entry((ns, service.clone())).or_default().push(slice);
    }

    for svc in &objects.services {
        let meta = &svc.metadata;
        let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let name = meta.name.clone().unwrap_or_default();
        let obj = object_name("Service", Some(&ns), Some(&name));
        let Some(spec) = &svc.spec else { continue };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let mut ips: Vec<&str> = spec
            .cluster_ips
            .as_ref()
            .map(|v| v.iter().map(String::as_str).collect())
            .unwrap_or_default();
        if ips.is_empty() {
            ips.extend(spec.cluster_ip.as_deref());
        }
        if ips.contains(&"None") || ips.is_empty() {
            continue; // headless, or no IP allocated yet
        }
        let mut cluster_ips = Vec::new();
        for (i, ip) in ips.iter().enumerate() {
            if ip.contains(':') {
                continue; // IPv6: not served yet
            }
            match ip.parse::<Ipv4Addr>() {
                Ok(a) => cluster_ips.push(a),
                Err(_) => problems.push(Problem {
                    object: obj.clone(),
                    field: format!("spec.clusterIPs[{i}]"),
                    message: format!("{ip:?} is not an IPv4 address"),
                }),
            }
        }
        let local_only = spec.internal_traffic_policy.as_deref() == Some("Local");
        let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
        let external_ips = ipv4_list(
            spec.external_ips.iter().flatten().map(String::as_str),
            &obj,
            "spec.externalIPs",
            &mut problems,
        );
        // ipMode Proxy: the load balancer proxies to the nodes itself, so
        // traffic to its IP is not captured on the nodes (as kube-proxy).
        let lb_ips = ipv4_list(
            svc.status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
                .filter_map(|i| i.ip.as_deref()),
            &obj,
            "status.loadBalancer.ingress",
            &mut problems,
        );
        let svc_slices = slices
            .get(&(ns.clone(), name.clone()))
            .map_or(&[][..], Vec::as_slice);
        for (i, port) in spec.ports.iter().flatten().enumerate() {
            let field = format!("spec.ports[{i}]");
            let protocol = match protocol_number(port.protocol.as_deref()) {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(message) => {
                    problems.push(Problem {
                        object: obj.clone(),
                        field: format!("{field}.protocol"),
                        message,
                    });
                    continue;
                }
            };
            let Ok(svc_port) = u16::try_from(port.port) else {
                problems.push(Problem {
                    object: obj.clone(),
                    field: format!("{field}.port"),
                    message: format!("{} is not a port number", port.port),
                });
                continue;
            };
            if svc_port == 0 {
                problems.push(Problem {
                    object: obj.clone(),
                    field: format!("{field}.port"),
                    message: "port 0 is not a port number".into(),
                });
                continue;
            }
            let port_name = port.name.clone().unwrap_or_default();
            let backends = backends_for(
                svc_slices,
                &port_name,
                protocol,
                local_only,
                node_name,
                &mut problems,
            );
            let display = if port_name.is_empty() {
                format!("{ns}/{name}")
            } else {
                format!("{ns}/{name}:{port_name}")
            };
            for ip in &cluster_ips {
                desired.frontends.insert(
                    ServiceKey {
                        addr: ip.octets(),
                        port: svc_port,
                        protocol,
                        scope: SCOPE_CLUSTER_IP,
                    },
                    DesiredFrontend {
                        backends: backends.clone(),
                        name: display.clone(),
                        flags: 0,
                    },
                );
            }

            // From outside: NodePorts, LoadBalancer ingress IPs, externalIPs.
            let mut external: Vec<(Ipv4Addr, u16)> = Vec::new();
            if matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"))
                && let Some(node_port) = port.node_port.filter(|p| *p != 0)
            {
                match u16::try_from(node_port) {
                    Ok(np) if (cfg.nodeport_range.0..=cfg.nodeport_range.1).contains(&np) => {
                        external.extend(nodeport_addresses.iter().map(|a| (*a, np)));
                    }
                    _ => problems.push(Problem {
                        object: obj.clone(),
                        field: format!("{field}.nodePort"),
                        message: format!(
                            "{node_port} is outside the NodePort range {}-{}",
                            cfg.nodeport_range.0, cfg.nodeport_range.1
                        ),
                    }),
                }
            }
            external.extend(external_ips.iter().map(|a| (*a, svc_port)));
            if spec.type_.as_deref() == Some("LoadBalancer") {
                external.extend(lb_ips.iter().map(|a| (*a, svc_port)));
            }
            if external.is_empty() {
                continue;
            }
            // The endpoints again, without the first pass's problems (they
            // were reported there).
            let backends_again = |local_only: bool| {
                backends_for(
                    svc_slices,
                    &port_name,
                    protocol,
                    local_only,
                    node_name,
                    &mut Vec::new(),
                )
            };
            // Every ready endpoint: internalTrafficPolicy narrows ClusterIP
            // traffic only.
            let all_backends = if local_only {
                backends_again(false)
            } else {
                backends.clone()
            };
            let (external_backends, flags) = if external_local {
                let local = backends_again(true);
                (local, SERVICE_FLAG_LOCAL_ONLY)
            } else {
                (all_backends.clone(), 0)
            };
            if external_local
                && spec.type_.as_deref() == Some("LoadBalancer")
                && let Some(hc) = spec
                    .health_check_node_port
                    .and_then(|p| u16::try_from(p).ok())
            {
                let entry = desired.health_checks.entry(hc).or_insert(HealthCheck {
                    namespace: ns.clone(),
                    name: name.clone(),
                    local_endpoints: 0,
                });
                // kube-proxy counts ready local endpoints only: a node whose
                // local pods are all terminating answers 503 and is drained.
                let ready_local = backends_with(
                    svc_slices,
                    &port_name,
                    protocol,
                    true,
                    node_name,
                    &mut Vec::new(),
                    false,
                );
                entry.local_endpoints = entry.local_endpoints.max(
                    ready_local
                        .iter()
                        .map(|b| b.addr)
                        .collect::<BTreeSet<_>>()
                        .len(),
                );
            }
            for (addr, port) in external {
                desired.frontends.insert(
                    ServiceKey {
                        addr: addr.octets(),
                        port,
                        protocol,
                        scope: SCOPE_EXTERNAL,
                    },
                    DesiredFrontend {
                        backends: external_backends.clone(),
                        name: display.clone(),
                        flags,
                    },
                );
                // Pods reaching the same address: kube-proxy sends traffic
                // from inside the cluster to any endpoint, whatever the
                // externalTrafficPolicy ("short-circuit"), with no SNAT.
                desired.frontends.insert(
                    ServiceKey {
                        addr: addr.octets(),
                        port,
                        protocol,
                        scope: SCOPE_EXTERNAL_FROM_PODS,
                    },
                    DesiredFrontend {
                        backends: all_backends.clone(),
                        name: display.clone(),
                        flags: 0,
                    },
                );
            }
        }
    }
    (desired, problems)
}

/// IPv4 addresses from a list of strings; bad ones become problems.
fn ipv4_list<'a>(
    items: impl Iterator<Item = &'a str>,
    obj: &str,
    field: &str,
    problems: &mut Vec<Problem>,
) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    for (i, ip) in items.enumerate() {
        if ip.contains(':') {
            continue; // IPv6: not served yet
        }
        match ip.parse() {
            Ok(a) => out.push(a),
            Err(_) => problems.push(Problem {
                object: obj.to_string(),
                field: format!("{field}[{i}]"),
                message: format!("{ip:?} is not an IPv4 address"),
            }),
        }
    }
    out
}

fn backends_for(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: u8,
    local_only: bool,
    node_name: &str,
    problems: &mut Vec<Problem>,
) -> Vec<Backend> {
    backends_with(
        slices, port_name, protocol, local_only, node_name, problems, true,
    )
}

/// `backends_for`; `fallback`: use serving-and-terminating endpoints when
/// none is ready (traffic does; kube-proxy's health check count does not).
fn backends_with(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: u8,
    local_only: bool,
    node_name: &str,
    problems: &mut Vec<Problem>,
    fallback: bool,
) -> Vec<Backend> {
    let mut candidates = BTreeSet::new();
    for slice in slices {
        let meta = &slice.metadata;
        let obj = object_name(
            "EndpointSlice",
            meta.namespace.as_deref(),
            meta.name.as_deref(),
        );
        for (pi, sp) in slice.ports.iter().flatten().enumerate() {
            if sp.name.as_deref().unwrap_or("") != port_name {
                continue;
            }
            match protocol_number(sp.protocol.as_deref()) {
                Ok(Some(p)) if p == protocol => {}
                _ => continue,
            }
            let port = match sp.port.map(u16::try_from) {
                Some(Ok(p)) if p != 0 => p,
                other => {
                    problems.push(Problem {
                        object: obj.clone(),
                        field: format!("ports[{pi}].port"),
                        message: format!("{:?} is not a port number", other.map(|_| sp.port)),
                    });
                    continue;
                }
            };
            for (ei, ep) in slice.endpoints.iter().enumerate() {
                let cond = ep.conditions.as_ref();
                // The API says a nil `ready` means ready.
                let ready = cond.and_then(|c| c.ready).unwrap_or(true);
                let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
                let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
                let on_this_node = ep.node_name.as_deref() == Some(node_name);
                for (ai, a) in ep.addresses.iter().enumerate() {
                    match a.parse::<Ipv4Addr>() {
                        Ok(addr) => {
                            candidates.insert(Candidate {
                                addr,
                                port,
                                ready: ready && !terminating,
                                serving_terminating: serving && terminating,
                                on_this_node,
                            });
                        }
                        Err(_) => problems.push(Problem {
                            object: obj.clone(),
                            field: format!("endpoints[{ei}].addresses[{ai}]"),
                            message: format!("{a:?} is not an IPv4 address"),
                        }),
                    }
                }
            }
        }
    }
    let eligible: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| !local_only || c.on_this_node)
        .collect();
    let ready: Vec<&&Candidate> = eligible.iter().filter(|c| c.ready).collect();
    let chosen: Vec<&&Candidate> = if ready.is_empty() && fallback {
        eligible.iter().filter(|c| c.serving_terminating).collect()
    } else {
        ready
    };
    let mut out: Vec<Backend> = chosen
        .iter()
        .map(|c| Backend {
            addr: c.addr.octets(),
            port: c.port,
            pad: [0; 2],
        })
        .collect();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(yaml: &str) -> Objects {
        crate::source::file::parse_manifest(yaml).0
    }

    fn frontend(ip: [u8; 4], port: u16, protocol: u8) -> ServiceKey {
        ServiceKey {
            addr: ip,
            port,
            protocol,
            scope: SCOPE_CLUSTER_IP,
        }
    }

    fn backend(ip: [u8; 4], port: u16) -> Backend {
        Backend {
            addr: ip,
            port,
            pad: [0; 2],
        }
    }

    const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 80, targetPort: web}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: dns, port: 5353, protocol: UDP}
endpoints:
- addresses: [10.244.1.11]
  conditions: {ready: true}
  nodeName: n1
- addresses: [10.244.2.12]
  conditions: {ready: true}
  nodeName: n2
- addresses: [10.244.1.13]
  conditions: {ready: false}
  nodeName: n1
---
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDR: 10.244.1.0/24}
"#;

    const EXTERNAL: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 192.168.77.11}]}
---
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: default}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.30
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  externalIPs: [203.0.113.7]
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}]
status:
  loadBalancer:
    ingress: [{ip: 198.51.100.10}, {ip: 198.51.100.11, ipMode: Proxy}]
---
apiVersion: v1
kind: Service
metadata: {name: np, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.31
  internalTrafficPolicy: Local
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30081}
  - {name: bad, port: 81, protocol: TCP, targetPort: 8080, nodePort: 8081}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: lb-1, namespace: default, labels: {kubernetes.io/service-name: lb}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.5], conditions: {ready: true}, nodeName: n1}
- {addresses: [10.244.2.5], conditions: {ready: true}, nodeName: n2}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: np-1, namespace: default, labels: {kubernetes.io/service-name: np}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}, {name: bad, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.6], conditions: {ready: true}, nodeName: n1}
- {addresses: [10.244.2.6], conditions: {ready: true}, nodeName: n2}
"#;

    fn external(addr: [u8; 4], port: u16) -> ServiceKey {
        ServiceKey {
            addr,
            port,
            protocol: PROTO_TCP,
            scope: SCOPE_EXTERNAL,
        }
    }

    #[test]
    fn nodeports_load_balancer_ips_and_external_ips_with_traffic_policies() {
        let (d, problems) = desired_state(&objects(EXTERNAL), "n1");
        assert_eq!(d.node_addr, Some(Ipv4Addr::new(192, 168, 77, 11)));
        // eTP Local: local backends only, flagged, on NodePort, LB IP and
        // externalIP; the Proxy-mode LB IP is not captured.
        for key in [
            external([192, 168, 77, 11], 30080),
            external([198, 51, 100, 10], 80),
            external([203, 0, 113, 7], 80),
        ] {
            let fe = &d.frontends[&key];
            assert_eq!(fe.backends, vec![backend([10, 244, 1, 5], 8080)], "{key:?}");
            assert_eq!(fe.flags, SERVICE_FLAG_LOCAL_ONLY);
        }
        assert!(!d.frontends.contains_key(&external([198, 51, 100, 11], 80)));
        // Pods reaching those addresses get every endpoint, unflagged.
        for addr in [[192, 168, 77, 11], [198, 51, 100, 10], [203, 0, 113, 7]] {
            let port = if addr == [192, 168, 77, 11] {
                30080
            } else {
                80
            };
            let fe = &d.frontends[&ServiceKey {
                addr,
                port,
                protocol: PROTO_TCP,
                scope: SCOPE_EXTERNAL_FROM_PODS,
            }];
            assert_eq!((fe.backends.len(), fe.flags), (2, 0), "{addr:?}");
        }
        // The ClusterIP keeps every backend.
        assert_eq!(
            d.frontends[&frontend([10, 96, 0, 30], 80, PROTO_TCP)]
                .backends
                .len(),
            2
        );
        assert_eq!(
            d.health_checks[&32000],
            HealthCheck {
                namespace: "default".into(),
                name: "lb".into(),
                local_endpoints: 1
            }
        );
        // The local pod terminating (still serving): traffic may still use
        // it, but the health check reports no ready local endpoint.
        let terminating = EXTERNAL.replace(
            "- {addresses: [10.244.1.5], conditions: {ready: true}, nodeName: n1}",
            "- {addresses: [10.244.1.5], conditions: {ready: false, serving: true, terminating: true}, nodeName: n1}",
        );
        assert_ne!(terminating, EXTERNAL);
        let (t, _) = desired_state(&objects(&terminating), "n1");
        assert_eq!(t.health_checks[&32000].local_endpoints, 0);
        assert_eq!(
            t.frontends[&external([192, 168, 77, 11], 30080)].backends,
            vec![backend([10, 244, 1, 5], 8080)]
        );
        // iTP Local narrows the ClusterIP only; eTP Cluster uses every backend.
        assert_eq!(
            d.frontends[&frontend([10, 96, 0, 31], 80, PROTO_TCP)]
                .backends
                .len(),
            1
        );
        let np = &d.frontends[&external([192, 168, 77, 11], 30081)];
        assert_eq!((np.backends.len(), np.flags), (2, 0));
        // A nodePort outside the range is refused, naming the field.
        assert!(!d.frontends.keys().any(|k| k.port == 8081));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "spec.ports[1].nodePort");

        // Configured NodePort addresses replace the InternalIP.
        let cfg = ModelConfig {
            nodeport_addresses: Some(vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]),
            ..ModelConfig::for_node("n1")
        };
        let (d, _) = desired_state_with(&objects(EXTERNAL), &cfg);
        assert!(d.frontends.contains_key(&external([10, 0, 0, 1], 30081)));
        assert!(d.frontends.contains_key(&external([10, 0, 0, 2], 30081)));
        assert!(
            !d.frontends
                .contains_key(&external([192, 168, 77, 11], 30081))
        );
    }

    #[test]
    fn other_nodes_become_peers_by_pod_cidr_and_internal_ip() {
        let yaml = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 192.168.77.11}]}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
spec: {podCIDRs: [10.244.2.0/24, "fd00::/64"]}
status: {addresses: [{type: Hostname, address: n2}, {type: InternalIP, address: "fd00::2"}, {type: InternalIP, address: 192.168.77.12}]}
---
apiVersion: v1
kind: Node
metadata: {name: n3-no-address}
spec: {podCIDR: 10.244.3.0/24}
---
apiVersion: v1
kind: Node
metadata: {name: n4-claims-ours}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 192.168.77.14}]}
---
apiVersion: v1
kind: Node
metadata: {name: n5-no-cidr-yet}
status: {addresses: [{type: InternalIP, address: 192.168.77.15}]}
"#;
        let (d, problems) = desired_state(&objects(yaml), "n1");
        assert_eq!(d.pod_cidr, Some("10.244.1.0/24".parse().unwrap()));
        assert_eq!(d.peers.len(), 1, "{:?}", d.peers);
        let n2 = &d.peers[&"10.244.2.0/24".parse().unwrap()];
        assert_eq!(n2.name, "n2");
        assert_eq!(n2.addr, Ipv4Addr::new(192, 168, 77, 12));
        let named: Vec<&str> = problems.iter().map(|p| p.object.as_str()).collect();
        assert_eq!(
            named,
            ["Node n3-no-address", "Node n4-claims-ours"],
            "{problems:?}"
        );
        assert_eq!(problems[0].field, "status.addresses");
        assert_eq!(problems[1].field, "spec.podCIDR");
    }

    #[test]
    fn multi_port_service_with_named_target_ports_and_ready_endpoints() {
        let (d, problems) = desired_state(&objects(WEB), "n1");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(d.pod_cidr, Some("10.244.1.0/24".parse().unwrap()));
        let http = &d.frontends[&frontend([10, 96, 0, 10], 80, PROTO_TCP)];
        assert_eq!(
            http.backends,
            vec![
                backend([10, 244, 1, 11], 8080),
                backend([10, 244, 2, 12], 8080)
            ]
        );
        assert_eq!(http.name, "default/web:http");
        let dns = &d.frontends[&frontend([10, 96, 0, 10], 53, PROTO_UDP)];
        assert_eq!(dns.backends.len(), 2);
        assert_eq!(dns.backends[0].port, 5353);
        assert_eq!(d.frontends.len(), 2);
    }

    #[test]
    fn internal_traffic_policy_local_keeps_this_nodes_endpoints() {
        let yaml = WEB.replace(
            "clusterIP: 10.96.0.10",
            "clusterIP: 10.96.0.10\n  internalTrafficPolicy: Local",
        );
        let (d, _) = desired_state(&objects(&yaml), "n1");
        let http = &d.frontends[&frontend([10, 96, 0, 10], 80, PROTO_TCP)];
        assert_eq!(http.backends, vec![backend([10, 244, 1, 11], 8080)]);
    }

    #[test]
    fn terminating_serving_endpoints_are_the_fallback_only() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: s, namespace: ns}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-1, namespace: ns, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- addresses: [10.0.0.1]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.0.0.2]
  conditions: {ready: false, serving: false, terminating: true}
"#;
        let (d, _) = desired_state(&objects(yaml), "n1");
        let f = &d.frontends[&frontend([10, 96, 0, 1], 80, PROTO_TCP)];
        assert_eq!(f.backends, vec![backend([10, 0, 0, 1], 8080)]);
        // Once a ready endpoint exists, the terminating one is not used.
        let more = yaml.to_string() + "- addresses: [10.0.0.3]\n  conditions: {ready: true}\n";
        let (d, _) = desired_state(&objects(&more), "n1");
        let f = &d.frontends[&frontend([10, 96, 0, 1], 80, PROTO_TCP)];
        assert_eq!(f.backends, vec![backend([10, 0, 0, 3], 8080)]);
    }

    #[test]
    fn headless_externalname_and_sctp_are_not_proxied() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: default}
spec: {clusterIP: None, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec: {type: ExternalName, externalName: example.org}
---
apiVersion: v1
kind: Service
metadata: {name: sctp, namespace: default}
spec: {clusterIP: 10.96.0.5, ports: [{port: 9, protocol: SCTP}]}
"#;
        let (d, problems) = desired_state(&objects(yaml), "n1");
        assert!(d.frontends.is_empty(), "{:?}", d.frontends);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn a_service_without_endpoints_is_a_frontend_with_no_backends() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: lonely, namespace: default}
spec: {clusterIP: 10.96.0.7, ports: [{port: 80}]}
"#;
        let (d, _) = desired_state(&objects(yaml), "n1");
        assert_eq!(
            d.frontends[&frontend([10, 96, 0, 7], 80, PROTO_TCP)].backends,
            vec![]
        );
    }

    #[test]
    fn invalid_fields_are_reported_and_the_rest_still_served() {
        let yaml = WEB.to_string()
            + r#"---
apiVersion: v1
kind: Service
metadata: {name: broken, namespace: default}
spec:
  clusterIP: 10.96.0.300
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: badport, namespace: default}
spec:
  clusterIP: 10.96.0.11
  ports: [{port: 70000}, {port: 81, protocol: ICMP}, {port: 82}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: badport-1, namespace: default, labels: {kubernetes.io/service-name: badport}}
addressType: IPv4
ports: [{port: 8082}]
endpoints:
- addresses: [not-an-ip, 10.0.0.9]
"#;
        let (d, problems) = desired_state(&objects(&yaml), "n1");
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|p| p.contains("Service default/broken spec.clusterIPs[0]")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|p| p.contains("Service default/badport spec.ports[0].port")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|p| p.contains("spec.ports[1].protocol")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|p| p.contains("EndpointSlice default/badport-1 endpoints[0].addresses[0]")),
            "{text:?}"
        );
        assert_eq!(
            d.frontends[&frontend([10, 96, 0, 11], 82, PROTO_TCP)].backends,
            vec![backend([10, 0, 0, 9], 8082)]
        );
        assert!(
            d.frontends
                .contains_key(&frontend([10, 96, 0, 10], 80, PROTO_TCP))
        );
    }

    #[test]
    fn endpoints_in_several_slices_are_merged_without_duplicates() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: s, namespace: default}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-1, namespace: default, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.0.0.1]}, {addresses: [10.0.0.2]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-2, namespace: default, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.0.0.2]}, {addresses: [10.0.0.3]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: other-ns, namespace: other, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.9.9.9]}]
"#;
        let (d, _) = desired_state(&objects(yaml), "n1");
        let f = &d.frontends[&frontend([10, 96, 0, 1], 80, PROTO_TCP)];
        let addrs: Vec<_> = f.backends.iter().map(|b| b.addr[3]).collect();
        assert_eq!(addrs, vec![1, 2, 3]);
    }
}
