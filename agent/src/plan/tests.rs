use ferry_common::{
    Backend, PROTO_TCP, PROTO_UDP, SCOPE_CLUSTER_IP, SCOPE_EXTERNAL, SCOPE_EXTERNAL_FROM_PODS,
    SERVICE_FLAG_LOCAL_ONLY,
};

use super::*;

fn desired_state(objects: &Objects, node: &str) -> (NodePlan, Vec<Problem>) {
    plan(objects, &PlanConfig::for_node(node))
}

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
    assert_eq!(d.node.addr, Some(Ipv4Addr::new(192, 168, 77, 11)));
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
    let cfg = PlanConfig {
        nodeport_addresses: Some(vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]),
        ..PlanConfig::for_node("n1")
    };
    let (d, _) = plan(&objects(EXTERNAL), &cfg);
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
