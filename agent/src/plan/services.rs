//! Service objects, parsed once into what the frontends are built from.
//! Headless and ExternalName Services are not proxied (as kube-proxy); SCTP
//! ports and IPv6 addresses are not served yet (reported, then skipped).
use std::net::Ipv4Addr;

use ferry_common::{PROTO_TCP, PROTO_UDP};
use k8s_openapi::api::core::v1::Service;

use super::problem::{ObjectProblems, Problem};
use crate::{config::PortRange, net::Ipv4Net};

/// The annotation kube-proxy falls back on when
/// `spec.loadBalancerSourceRanges` is empty.
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// How a Service's traffic policies narrow its endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TrafficPolicies {
    /// `internalTrafficPolicy: Local`: ClusterIP traffic to this node's
    /// endpoints only.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local`: traffic from outside to this node's
    /// endpoints only, client address kept.
    pub external_local: bool,
}

/// A Service as the plan uses it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ParsedService {
    pub cluster_ips: Box<[Ipv4Addr]>,
    /// `spec.externalIPs`.
    pub external_ips: Box<[Ipv4Addr]>,
    /// Load-balancer ingress IPs captured on the node (LoadBalancer only;
    /// `ipMode: Proxy` excluded).
    pub load_balancer_ips: Box<[Ipv4Addr]>,
    pub policies: TrafficPolicies,
    /// Answered by the agent (LoadBalancer with externalTrafficPolicy
    /// Local only).
    pub health_check_node_port: Option<u16>,
    pub ports: Box<[ServicePort]>,
    /// `sessionAffinity: ClientIP`: its timeout in seconds; None without
    /// affinity.
    pub affinity_timeout_s: Option<u32>,
    /// `loadBalancerSourceRanges` (or its annotation), LoadBalancer only:
    /// the clients admitted to the load-balancer IPs (None: all).
    pub source_ranges: Option<Box<[Ipv4Net]>>,
}

/// One TCP or UDP port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServicePort {
    /// Its place in `spec.ports`, for the field paths of problems.
    pub index: usize,
    /// `spec.ports[i].name` ("" when unnamed): what slices match on.
    pub name: String,
    pub protocol: u8,
    pub port: u16,
    /// Its nodePort, when the Service type has one (whether it is in the
    /// cluster's NodePort range is the plan's to check: see `in_range`).
    pub node_port: Option<u16>,
    /// "namespace/name:port" for the CLI (shared by its frontends).
    pub display: std::sync::Arc<str>,
}

/// `spec.ports[].protocol` (default TCP) as an IP protocol number; None
/// for SCTP, which ferry does not serve.
pub fn protocol_number(p: Option<&str>) -> Result<Option<u8>, String> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(Some(PROTO_TCP)),
        "UDP" => Ok(Some(PROTO_UDP)),
        "SCTP" => Ok(None),
        other => Err(format!("unknown protocol {other:?}")),
    }
}

/// IPv4 addresses from a list of strings; bad ones become problems.
fn ipv4_list<'a>(
    items: impl Iterator<Item = &'a str>,
    field: &str,
    problems: &mut ObjectProblems,
) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    for (i, ip) in items.enumerate() {
        if ip.contains(':') {
            problems.push(
                format!("{field}[{i}]"),
                format!("{ip}: IPv6 is not served yet (IPv4 only)"),
            );
            continue;
        }
        match ip.parse() {
            Ok(a) => out.push(a),
            Err(_) => problems.push(
                format!("{field}[{i}]"),
                format!("{ip:?} is not an IPv4 address"),
            ),
        }
    }
    out
}

/// Parse a Service; None when it is not proxied (headless, ExternalName,
/// no cluster IP yet). Nothing here depends on the agent's configuration,
/// so a Service is parsed once, when it arrives.
pub fn parse_service(svc: &Service, problems: &mut Vec<Problem>) -> Option<ParsedService> {
    let meta = &svc.metadata;
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let name = meta.name.clone().unwrap_or_default();
    let mut problems = ObjectProblems {
        kind: "Service",
        namespace: Some(&namespace),
        name: Some(&name),
        sink: problems,
    };
    let spec = svc.spec.as_ref()?;
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if kind == "ExternalName" {
        return None;
    }
    let mut ips: Vec<&str> = spec
        .cluster_ips
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    if ips.is_empty() {
        ips.extend(spec.cluster_ip.as_deref());
    }
    if ips.is_empty() || ips.contains(&"None") {
        return None; // headless, or no IP allocated yet
    }
    let cluster_ips = ipv4_list(ips.into_iter(), "spec.clusterIPs", &mut problems);
    let external_ips = ipv4_list(
        spec.external_ips.iter().flatten().map(String::as_str),
        "spec.externalIPs",
        &mut problems,
    );
    // ipMode Proxy: the load balancer proxies to the nodes itself, so
    // traffic to its IP is not captured on the nodes (as kube-proxy).
    let ingress_ips = ipv4_list(
        svc.status
            .iter()
            .filter_map(|s| s.load_balancer.as_ref())
            .flat_map(|lb| lb.ingress.iter().flatten())
            .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|i| i.ip.as_deref()),
        "status.loadBalancer.ingress",
        &mut problems,
    );
    let is_load_balancer = kind == "LoadBalancer";
    let has_node_ports = matches!(kind, "NodePort" | "LoadBalancer");
    let policies = TrafficPolicies {
        internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
    };
    let health_check_node_port = spec
        .health_check_node_port
        .filter(|_| is_load_balancer && policies.external_local)
        .and_then(|p| u16::try_from(p).ok());
    let affinity_timeout_s = session_affinity(spec, &mut problems);
    let source_ranges = is_load_balancer
        .then(|| source_ranges(svc, &mut problems))
        .flatten();
    let ports = spec
        .ports
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, port)| {
            parse_port(port, i, (&namespace, &name), has_node_ports, &mut problems)
        })
        .collect();
    Some(ParsedService {
        cluster_ips: cluster_ips.into(),
        external_ips: external_ips.into(),
        load_balancer_ips: if is_load_balancer {
            ingress_ips.into()
        } else {
            Box::default()
        },
        policies,
        health_check_node_port,
        ports,
        affinity_timeout_s,
        source_ranges: source_ranges.map(Vec::into_boxed_slice),
    })
}

/// `spec.sessionAffinity` and its timeout (default 10800 s); an invalid
/// timeout is reported and the default used, as the API server would not
/// have accepted it.
fn session_affinity(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    problems: &mut ObjectProblems,
) -> Option<u32> {
    use ferry_common::affinity::{DEFAULT_TIMEOUT_S, MAX_TIMEOUT_S};
    match spec.session_affinity.as_deref() {
        None | Some("None") => return None,
        Some("ClientIP") => {}
        Some(other) => {
            problems.push(
                "spec.sessionAffinity",
                format!("unknown value {other:?}: no affinity"),
            );
            return None;
        }
    }
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    Some(match timeout {
        None => DEFAULT_TIMEOUT_S,
        Some(t) if (1..=i64::from(MAX_TIMEOUT_S)).contains(&i64::from(t)) => t as u32,
        Some(t) => {
            problems.push(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                format!(
                    "{t} is outside 1..={MAX_TIMEOUT_S}; the default {DEFAULT_TIMEOUT_S} is used"
                ),
            );
            DEFAULT_TIMEOUT_S
        }
    })
}

/// `spec.loadBalancerSourceRanges`, else the annotation kube-proxy also
/// reads (a comma-separated list); None when neither lists a range. A range
/// that does not parse is reported and left out; if none is left of a
/// non-empty list (or only IPv6 ones), the Service admits no IPv4 client
/// rather than every client: a firewall that fails open is worse.
fn source_ranges(svc: &Service, problems: &mut ObjectProblems) -> Option<Vec<Ipv4Net>> {
    let from_spec: Vec<&str> = svc
        .spec
        .iter()
        .flat_map(|s| s.load_balancer_source_ranges.iter().flatten())
        .map(String::as_str)
        .collect();
    let (field, listed): (String, Vec<&str>) = if from_spec.is_empty() {
        let annotation = svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SOURCE_RANGES_ANNOTATION));
        let listed = annotation
            .map(|a| {
                a.split(',')
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        (
            format!("metadata.annotations[{SOURCE_RANGES_ANNOTATION}]"),
            listed,
        )
    } else {
        ("spec.loadBalancerSourceRanges".to_string(), from_spec)
    };
    if listed.is_empty() {
        return None;
    }
    let mut ranges = Vec::new();
    for (i, range) in listed.iter().enumerate() {
        let range = range.trim();
        if range.contains(':') {
            // An IPv6 range admits no IPv4 client; ferry serves IPv4 only.
            continue;
        }
        match range.parse::<Ipv4Net>() {
            Ok(net) => ranges.push(Ipv4Net {
                addr: net.network(),
                prefix: net.prefix,
            }),
            Err(e) => problems.push(format!("{field}[{i}]"), format!("{range:?}: {e}; left out")),
        }
    }
    ranges.sort();
    ranges.dedup();
    Some(ranges)
}

/// `spec.ports[index]`; `has_node_ports`: the Service type has NodePorts.
fn parse_port(
    port: &k8s_openapi::api::core::v1::ServicePort,
    index: usize,
    (namespace, service): (&str, &str),
    has_node_ports: bool,
    problems: &mut ObjectProblems,
) -> Option<ServicePort> {
    let field = &format!("spec.ports[{index}]");
    let protocol = match protocol_number(port.protocol.as_deref()) {
        Ok(Some(p)) => p,
        Ok(None) => {
            problems.push(format!("{field}.protocol"), "SCTP is not served");
            return None;
        }
        Err(message) => {
            problems.push(format!("{field}.protocol"), message);
            return None;
        }
    };
    let number = match u16::try_from(port.port) {
        Ok(0) => {
            problems.push(format!("{field}.port"), "port 0 is not a port number");
            return None;
        }
        Ok(p) => p,
        Err(_) => {
            problems.push(
                format!("{field}.port"),
                format!("{} is not a port number", port.port),
            );
            return None;
        }
    };
    let node_port = match port.node_port.filter(|p| *p != 0 && has_node_ports) {
        Some(np) => match u16::try_from(np) {
            Ok(np) => Some(np),
            Err(_) => {
                problems.push(
                    format!("{field}.nodePort"),
                    format!("{np} is not a port number"),
                );
                None
            }
        },
        None => None,
    };
    let name = port.name.clone().unwrap_or_default();
    let display = if name.is_empty() {
        format!("{namespace}/{service}")
    } else {
        format!("{namespace}/{service}:{name}")
    };
    Some(ServicePort {
        index,
        name,
        protocol,
        port: number,
        node_port,
        display: display.into(),
    })
}

impl ServicePort {
    /// This port with its nodePort only if it is in `range`, the cluster's
    /// NodePort range (kube-proxy's check too); one outside is reported.
    pub fn in_range(
        &self,
        range: PortRange,
        problems: &mut ObjectProblems,
    ) -> std::borrow::Cow<'_, ServicePort> {
        match self.node_port {
            Some(np) if !range.contains(np) => {
                problems.push(
                    format!("spec.ports[{}].nodePort", self.index),
                    format!("{np} is outside the NodePort range {range}"),
                );
                std::borrow::Cow::Owned(ServicePort {
                    node_port: None,
                    ..self.clone()
                })
            }
            _ => std::borrow::Cow::Borrowed(self),
        }
    }
}
