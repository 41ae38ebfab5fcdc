//! Kubernetes objects as YAML for the harness's manifest.
use std::net::Ipv4Addr;

pub fn node(name: &str, pod_cidr: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nspec:\n  podCIDR: {pod_cidr}\n  podCIDRs: [{pod_cidr}]\n"
    )
}

/// A Node like [`node`] that also reports its addresses: `internal_ip` as
/// its InternalIP (what other nodes route this node's podCIDR to) and its
/// name as Hostname.
pub fn node_with_address(name: &str, pod_cidr: &str, internal_ip: Ipv4Addr) -> String {
    node(name, pod_cidr)
        + &format!(
            "status:\n  addresses:\n  - type: InternalIP\n    address: {internal_ip}\n  - type: Hostname\n    address: {name}\n"
        )
}

/// A ClusterIP Service with (name, port, protocol, target port) ports.
pub fn service(name: &str, cluster_ip: Ipv4Addr, ports: &[(&str, u16, &str, u16)]) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  type: ClusterIP\n  clusterIP: {cluster_ip}\n  clusterIPs: [{cluster_ip}]\n  ports:\n"
    );
    for (pname, port, proto, target) in ports {
        s += &format!(
            "  - name: {pname}\n    port: {port}\n    protocol: {proto}\n    targetPort: {target}\n"
        );
    }
    s
}

/// A Service of `type_` (NodePort, LoadBalancer) with (name, port,
/// protocol, target port, nodePort) ports; `spec_extra`: more `spec:`
/// lines, each indented by two spaces and ending in a newline.
pub fn node_port_service(
    name: &str,
    type_: &str,
    cluster_ip: Ipv4Addr,
    spec_extra: &str,
    ports: &[(&str, u16, &str, u16, u16)],
) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  type: {type_}\n  clusterIP: {cluster_ip}\n{spec_extra}  ports:\n"
    );
    for (pname, port, proto, target, node_port) in ports {
        s += &format!(
            "  - {{name: {pname}, port: {port}, protocol: {proto}, targetPort: {target}, nodePort: {node_port}}}\n"
        );
    }
    s
}

/// An EndpointSlice for `service` with ready endpoints on `node`.
pub fn endpoint_slice(
    service: &str,
    node: &str,
    addresses: &[Ipv4Addr],
    ports: &[(&str, u16, &str)],
) -> String {
    let endpoints: Vec<(Ipv4Addr, &str)> = addresses.iter().map(|a| (*a, node)).collect();
    endpoint_slice_on_nodes(service, &endpoints, ports)
}

/// An EndpointSlice for `service` with ready endpoints, each (address,
/// nodeName).
pub fn endpoint_slice_on_nodes(
    service: &str,
    endpoints: &[(Ipv4Addr, &str)],
    ports: &[(&str, u16, &str)],
) -> String {
    let mut s = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-slice\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nports:\n"
    );
    for (pname, port, proto) in ports {
        s += &format!("- name: {pname}\n  port: {port}\n  protocol: {proto}\n");
    }
    if endpoints.is_empty() {
        s += "endpoints: []\n";
    } else {
        s += "endpoints:\n";
    }
    for (a, node) in endpoints {
        s += &format!(
            "- addresses: [\"{a}\"]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  nodeName: {node}\n"
        );
    }
    s
}

/// Documents joined into one manifest.
pub fn join(docs: &[String]) -> String {
    docs.join("---\n")
}
