use ferry_common::{
    Backend, PROTO_TCP, PROTO_UDP, SCOPE_CLUSTER_IP, SCOPE_EXTERNAL, SCOPE_EXTERNAL_FROM_PODS,
    SERVICE_FLAG_LOCAL_ONLY,
};

use super::*;

fn desired_state(objects: &Objects, node: &str) -> (NodePlan, Vec<Problem>) {
    plan(objects, &PlanConfig::for_node(node))
}

fn objects(yaml: &str) -> Objects {
    crate::source::file::parse_manifest(yaml).unwrap().0
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

const WEB: &str = include_str!("../../testdata/web.yaml");

const EXTERNAL: &str = include_str!("../../testdata/external.yaml");

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
        assert_eq!(
            fe.backends.to_vec(),
            vec![backend([10, 244, 1, 5], 8080)],
            "{key:?}"
        );
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
        t.frontends[&external([192, 168, 77, 11], 30080)]
            .backends
            .to_vec(),
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
    let yaml = include_str!("../../testdata/peers.yaml");
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
        http.backends.to_vec(),
        vec![
            backend([10, 244, 1, 11], 8080),
            backend([10, 244, 2, 12], 8080)
        ]
    );
    assert_eq!(&*http.name, "default/web:http");
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
    assert_eq!(
        http.backends.to_vec(),
        vec![backend([10, 244, 1, 11], 8080)]
    );
}

#[test]
fn terminating_serving_endpoints_are_the_fallback_only() {
    let yaml = include_str!("../../testdata/terminating.yaml");
    let backends = |yaml: &str| {
        let (d, _) = desired_state(&objects(yaml), "n1");
        d.frontends[&frontend([10, 96, 0, 1], 80, PROTO_TCP)]
            .backends
            .to_vec()
    };
    assert_eq!(backends(yaml), vec![backend([10, 0, 0, 1], 8080)]);
    // Once a ready endpoint exists, the terminating one is not used.
    let more = yaml.to_string() + "- addresses: [10.0.0.3]\n  conditions: {ready: true}\n";
    assert_eq!(backends(&more), vec![backend([10, 0, 0, 3], 8080)]);
}

#[test]
fn headless_externalname_and_sctp_are_not_proxied() {
    let yaml = include_str!("../../testdata/not_proxied.yaml");
    let (d, problems) = desired_state(&objects(yaml), "n1");
    assert!(d.frontends.is_empty(), "{:?}", d.frontends);
    // Headless and ExternalName are not proxied by design (as kube-proxy);
    // SCTP is a gap, and said so.
    let said: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        said,
        ["Service default/sctp spec.ports[0].protocol: SCTP is not served"]
    );
}

#[test]
fn a_service_without_endpoints_is_a_frontend_with_no_backends() {
    let yaml = include_str!("../../testdata/no_endpoints.yaml");
    let (d, _) = desired_state(&objects(yaml), "n1");
    assert_eq!(
        d.frontends[&frontend([10, 96, 0, 7], 80, PROTO_TCP)]
            .backends
            .to_vec(),
        vec![]
    );
}

#[test]
fn invalid_fields_are_reported_and_the_rest_still_served() {
    let yaml = WEB.to_string() + include_str!("../../testdata/invalid_fields.yaml");
    let (d, problems) = desired_state(&objects(&yaml), "n1");
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    for expected in [
        "Service default/broken spec.clusterIPs[0]",
        "Service default/badport spec.ports[0].port",
        "spec.ports[1].protocol",
        "EndpointSlice default/badport-1 endpoints[0].addresses[0]",
    ] {
        assert!(
            text.iter().any(|p| p.contains(expected)),
            "{expected} in {text:?}"
        );
    }
    assert_eq!(
        d.frontends[&frontend([10, 96, 0, 11], 82, PROTO_TCP)]
            .backends
            .to_vec(),
        vec![backend([10, 0, 0, 9], 8082)]
    );
    assert!(
        d.frontends
            .contains_key(&frontend([10, 96, 0, 10], 80, PROTO_TCP))
    );
}

#[test]
fn endpoints_in_several_slices_are_merged_without_duplicates() {
    let yaml = include_str!("../../testdata/several_slices.yaml");
    let (d, _) = desired_state(&objects(yaml), "n1");
    let f = &d.frontends[&frontend([10, 96, 0, 1], 80, PROTO_TCP)];
    let addrs: Vec<_> = f.backends.iter().map(|b| b.addr[3]).collect();
    assert_eq!(addrs, vec![1, 2, 3]);
}

#[test]
fn a_ready_endpoint_is_used_even_while_terminating_as_kube_proxy_does() {
    // publishNotReadyAddresses: the EndpointSlice controller keeps `ready`
    // true for a terminating pod.
    let yaml = include_str!("../../testdata/terminating.yaml").to_string()
        + "- addresses: [10.0.0.4]\n  conditions: {ready: true, serving: false, terminating: true}\n";
    let (d, _) = desired_state(&objects(&yaml), "n1");
    let f = &d.frontends[&frontend([10, 96, 0, 1], 80, PROTO_TCP)];
    assert_eq!(f.backends.to_vec(), vec![backend([10, 0, 0, 4], 8080)]);
}

#[test]
fn fields_ferry_does_not_implement_are_reported_with_their_path_and_the_rest_served() {
    let (d, problems) = desired_state(
        &objects(include_str!("../../testdata/unsupported.yaml")),
        "n1",
    );
    let fields: Vec<(&str, &str)> = problems
        .iter()
        .map(|p| (p.object.as_str(), p.field.as_str()))
        .collect();
    assert_eq!(
        fields,
        [
            ("EndpointSlice default/web-v6", "addressType"),
            ("Service default/web", "spec.clusterIPs[1]"),
        ],
        "{problems:#?}"
    );
    assert_eq!(
        d.frontends[&frontend([10, 96, 0, 10], 80, PROTO_TCP)]
            .backends
            .to_vec(),
        vec![backend([10, 244, 1, 5], 8080)]
    );
}

#[test]
fn zone_hints_are_matched_against_this_nodes_zone_label() {
    let yaml = include_str!("../../testdata/zones.yaml");
    let cluster_ip = |node: &str| {
        let (d, problems) = desired_state(&objects(yaml), node);
        assert!(problems.is_empty(), "{problems:?}");
        let fe = &d.frontends[&frontend([10, 96, 0, 10], 80, PROTO_TCP)];
        fe.backends.iter().map(|b| b.addr[3]).collect::<Vec<_>>()
    };
    assert_eq!(cluster_ip("n1"), [1], "zone-a");
    assert_eq!(cluster_ip("n2"), [2, 3], "zone-b");
    assert_eq!(cluster_ip("n3"), [1, 2, 3], "no zone label: every endpoint");
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

#[test]
fn service_ranges_are_the_cidrs_and_every_cluster_ip_whatever_its_ports() {
    let yaml = format!(
        "{WEB}\n---\n{}",
        include_str!("../../testdata/not_proxied.yaml")
    );
    let objects = objects(&yaml);
    // Without --service-cidr: nothing, so such packets pass as before.
    let (d, _) = desired_state(&objects, "n1");
    assert!(d.service_ranges.is_empty());

    let cfg = PlanConfig {
        service_cidrs: vec![net("10.96.0.0/12"), net("10.200.0.0/16")],
        ..PlanConfig::for_node("n1")
    };
    let (d, _) = plan(&objects, &cfg);
    let kinds: Vec<(Ipv4Net, u32)> = d.service_ranges.iter().map(|(n, r)| (*n, r.kind)).collect();
    // web's ClusterIP, and the SCTP-only Service's (its ports are not
    // served, its address is still allocated); not headless/ExternalName.
    assert_eq!(
        kinds,
        vec![
            (net("10.96.0.0/12"), SERVICE_RANGE_UNALLOCATED),
            (net("10.96.0.5/32"), SERVICE_RANGE_ALLOCATED),
            (net("10.96.0.10/32"), SERVICE_RANGE_ALLOCATED),
            (net("10.200.0.0/16"), SERVICE_RANGE_UNALLOCATED),
        ]
    );
}

const SERVICE_CIDRS: &str = include_str!("../../testdata/service_cidrs.yaml");

fn ranges(d: &NodePlan) -> Vec<(Ipv4Net, u32)> {
    d.service_ranges.iter().map(|(n, r)| (*n, r.kind)).collect()
}

#[test]
fn service_cidr_objects_add_their_ipv4_ranges_to_the_flag_and_say_what_they_skip() {
    let objects = objects(&format!("{WEB}\n---\n{SERVICE_CIDRS}"));
    assert_eq!(objects.service_cidrs.len(), 4);
    // Without --service-cidr: the objects alone are the ranges. The one
    // being deleted still counts (kube-proxy uses every ServiceCIDR: its
    // ClusterIPs stay allocated until the finalizer lets it go).
    let (d, problems) = desired_state(&objects, "n1");
    assert_eq!(
        ranges(&d),
        vec![
            (net("10.96.0.0/16"), SERVICE_RANGE_UNALLOCATED),
            (net("10.96.0.10/32"), SERVICE_RANGE_ALLOCATED),
            (net("10.200.0.0/24"), SERVICE_RANGE_UNALLOCATED),
            (net("10.201.0.0/24"), SERVICE_RANGE_UNALLOCATED),
            (net("10.203.0.0/24"), SERVICE_RANGE_UNALLOCATED),
        ]
    );
    let about: Vec<(&str, &str)> = problems
        .iter()
        .map(|p| (p.object.as_str(), p.field.as_str()))
        .collect();
    assert_eq!(
        about,
        [
            ("ServiceCIDR broken", "spec.cidrs[0]"),
            ("ServiceCIDR broken", "spec.cidrs[1]"),
            ("ServiceCIDR dual", "spec.cidrs[1]"),
        ],
        "{problems:#?}"
    );
    assert!(problems[0].message.contains("host bits"), "{}", problems[0]);
    assert!(
        problems[1].message.contains("not a CIDR"),
        "{}",
        problems[1]
    );
    assert!(problems[2].message.contains("IPv6"), "{}", problems[2]);

    // With --service-cidr: the union; a range both give is one entry.
    let cfg = PlanConfig {
        service_cidrs: vec![net("10.96.0.0/16"), net("10.100.0.0/16")],
        ..PlanConfig::for_node("n1")
    };
    let (d, _) = plan(&objects, &cfg);
    let nets: Vec<Ipv4Net> = ranges(&d)
        .into_iter()
        .filter(|(_, kind)| *kind == SERVICE_RANGE_UNALLOCATED)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        nets,
        [
            net("10.96.0.0/16"),
            net("10.100.0.0/16"),
            net("10.200.0.0/24"),
            net("10.201.0.0/24"),
            net("10.203.0.0/24"),
        ]
    );
}

#[test]
fn service_cidrs_beyond_what_the_map_holds_are_reported_not_written() {
    let flag: Vec<Ipv4Net> = (0..service_cidrs::MAX_SERVICE_CIDRS - 1)
        .map(|i| net(&format!("10.{}.0.0/16", 100 + i)))
        .collect();
    // Listed out of order: the first by name gets the last slot.
    let yaml = "
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: b}
spec: {cidrs: [10.1.0.0/16]}
---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: a}
spec: {cidrs: [10.0.0.0/16, 10.100.0.0/16]}
";
    let cfg = PlanConfig {
        service_cidrs: flag.clone(),
        ..PlanConfig::for_node("n1")
    };
    let (d, problems) = plan(&objects(yaml), &cfg);
    assert_eq!(d.service_ranges.len(), service_cidrs::MAX_SERVICE_CIDRS);
    assert!(d.service_ranges.contains_key(&net("10.0.0.0/16")));
    assert!(!d.service_ranges.contains_key(&net("10.1.0.0/16")));
    // Already there from the flag: not a new slot, not a problem.
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].object, "ServiceCIDR b");
    assert!(
        problems[0].message.contains("more than 64"),
        "{}",
        problems[0]
    );
}

const AFFINITY_RANGES: &str = include_str!("../../testdata/affinity_ranges.yaml");

fn key(addr: [u8; 4], port: u16, scope: u8) -> ServiceKey {
    ServiceKey {
        addr,
        port,
        protocol: PROTO_TCP,
        scope,
    }
}

fn nets(list: &[&str]) -> Option<std::collections::BTreeSet<crate::net::Ipv4Net>> {
    Some(list.iter().map(|n| n.parse().unwrap()).collect())
}

#[test]
fn client_ip_affinity_applies_to_every_frontend_of_the_port_with_its_timeout() {
    let (d, _) = desired_state(&objects(AFFINITY_RANGES), "n1");
    for scope in [SCOPE_EXTERNAL, SCOPE_EXTERNAL_FROM_PODS] {
        for addr in [[192, 168, 77, 11], [203, 0, 113, 7]] {
            let port = if addr[0] == 192 { 30080 } else { 80 };
            let fe = &d.frontends[&key(addr, port, scope)];
            assert_eq!(fe.options.affinity_timeout_s, 10_800, "{addr:?} {scope}");
        }
    }
    let cluster = &d.frontends[&key([10, 96, 0, 30], 80, SCOPE_CLUSTER_IP)];
    assert_eq!(cluster.options.affinity_timeout_s, 10_800);
    let timed = &d.frontends[&key([10, 96, 0, 31], 80, SCOPE_CLUSTER_IP)];
    assert_eq!(timed.options.affinity_timeout_s, 30);
    let none = &d.frontends[&key([10, 96, 0, 33], 80, SCOPE_CLUSTER_IP)];
    assert_eq!(none.options, frontends::FrontendOptions::default());
}

#[test]
fn source_ranges_fence_load_balancer_ips_only() {
    let (d, problems) = desired_state(&objects(AFFINITY_RANGES), "n1");
    // The malformed range is reported with its path; the IPv6 one quietly
    // admits no IPv4 client; 10.1.2.3/16 is taken as its network.
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        ["spec.loadBalancerSourceRanges[3]"],
        "{problems:#?}"
    );
    for scope in [SCOPE_EXTERNAL, SCOPE_EXTERNAL_FROM_PODS] {
        let lb = &d.frontends[&key([198, 51, 100, 10], 80, scope)];
        assert_eq!(
            lb.options.source_ranges,
            nets(&["10.1.0.0/16", "192.0.2.0/24"])
        );
        let annotated = &d.frontends[&key([198, 51, 100, 20], 80, scope)];
        assert_eq!(
            annotated.options.source_ranges,
            nets(&["192.0.2.7/32", "198.18.0.0/15"])
        );
        let v6only = &d.frontends[&key([198, 51, 100, 30], 80, scope)];
        assert_eq!(v6only.options.source_ranges, nets(&[]));
        // The same Service's NodePort and externalIP are open to all.
        for (addr, port) in [([192, 168, 77, 11], 30080), ([203, 0, 113, 7], 80)] {
            let open = &d.frontends[&key(addr, port, scope)];
            assert_eq!(open.options.source_ranges, None, "{addr:?}");
        }
    }
    for (addr, port) in [([10, 96, 0, 30], 80), ([192, 168, 77, 11], 30083)] {
        let scope = if port == 80 {
            SCOPE_CLUSTER_IP
        } else {
            SCOPE_EXTERNAL
        };
        let open = &d.frontends[&key(addr, port, scope)];
        assert_eq!(open.options.source_ranges, None, "{addr:?}");
    }
}

#[test]
fn an_affinity_timeout_out_of_range_is_reported_and_the_default_used() {
    let yaml = AFFINITY_RANGES.replace("timeoutSeconds: 30", "timeoutSeconds: 90000");
    let (d, problems) = desired_state(&objects(&yaml), "n1");
    let timed = &d.frontends[&key([10, 96, 0, 31], 80, SCOPE_CLUSTER_IP)];
    assert_eq!(timed.options.affinity_timeout_s, 10_800);
    assert!(
        problems
            .iter()
            .any(|p| p.field == "spec.sessionAffinityConfig.clientIP.timeoutSeconds"),
        "{problems:#?}"
    );
}

#[test]
fn terminating_endpoints_drain_whether_or_not_they_still_serve() {
    let yaml = include_str!("../../testdata/terminating.yaml").to_string()
        + "- addresses: [10.0.0.4]\n  conditions: {ready: false, serving: false, terminating: true}\n"
        + "- addresses: [10.0.0.5]\n  conditions: {ready: false, serving: false, terminating: false}\n";
    let (d, _) = desired_state(&objects(&yaml), "n1");
    let draining: Vec<[u8; 4]> = d.draining.iter().map(|b| b.addr).collect();
    assert!(draining.contains(&[10, 0, 0, 4]), "{draining:?}");
    assert!(
        !draining.contains(&[10, 0, 0, 5]),
        "not ready is not draining"
    );
}

#[test]
fn endpoint_addresses_no_pod_can_have_are_reported_and_not_used() {
    let yaml = include_str!("../../testdata/terminating.yaml").replace(
        "endpoints:\n",
        "endpoints:\n- addresses: [0.0.0.0, 255.255.255.255, 127.0.0.1, 169.254.1.1, 224.0.0.5, 10.0.0.9]\n",
    );
    let (d, problems) = desired_state(&objects(&yaml), "n1");
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "endpoints[0].addresses[0]",
            "endpoints[0].addresses[1]",
            "endpoints[0].addresses[2]",
            "endpoints[0].addresses[3]",
            "endpoints[0].addresses[4]",
        ],
        "{problems:#?}"
    );
    let f = &d.frontends[&frontend([10, 96, 0, 1], 80, PROTO_TCP)];
    assert_eq!(f.backends.to_vec(), vec![backend([10, 0, 0, 9], 8080)]);
}

#[test]
fn with_socket_lb_every_node_port_is_also_served_on_loopback_to_the_node_only() {
    let loopback = |port| ServiceKey {
        addr: ferry_common::LOOPBACK_ADDR,
        port,
        protocol: PROTO_TCP,
        scope: SCOPE_EXTERNAL_FROM_PODS,
    };
    let cfg = PlanConfig {
        node_ports_on_loopback: true,
        ..PlanConfig::for_node("n1")
    };
    let (d, _) = plan(&objects(EXTERNAL), &cfg);
    // Any endpoint, whatever externalTrafficPolicy: the node is inside the
    // cluster, as its pods are.
    let etp_local = &d.frontends[&loopback(30080)];
    assert_eq!(
        (etp_local.backends.len(), etp_local.flags),
        (
            d.frontends[&key([192, 168, 77, 11], 30080, SCOPE_EXTERNAL_FROM_PODS)]
                .backends
                .len(),
            0
        )
    );
    assert!(d.frontends.contains_key(&loopback(30081)));
    // Never for clients from outside, and not at all without socket LB.
    let mut outside = loopback(30080);
    outside.scope = SCOPE_EXTERNAL;
    assert!(!d.frontends.contains_key(&outside));
    let (without, _) = plan(&objects(EXTERNAL), &PlanConfig::for_node("n1"));
    assert!(
        !without
            .frontends
            .keys()
            .any(|k| k.addr == ferry_common::LOOPBACK_ADDR)
    );
}
