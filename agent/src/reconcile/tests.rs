use std::net::Ipv4Addr;

use ferry_common::{
    Backend, PROTO_TCP, ROUTE_MODE_NATIVE, ROUTE_MODE_VXLAN, SCOPE_CLUSTER_IP, SCOPE_EXTERNAL,
};

use super::{memory::MemoryHost, *};
use crate::{
    config::{CniConfig, Overlay, Uplink, XdpMode},
    plan::{NodePlan, Objects, PlanConfig, plan},
};

fn key(last: u8) -> ServiceKey {
    ServiceKey {
        addr: [10, 96, 0, last],
        port: 80,
        protocol: PROTO_TCP,
        scope: SCOPE_CLUSTER_IP,
    }
}

fn fe(backends: &[u8]) -> DesiredFrontend {
    DesiredFrontend {
        backends: backends
            .iter()
            .map(|b| Backend {
                addr: [10, 244, 0, *b],
                port: 8080,
                pad: [0; 2],
            })
            .collect(),
        name: "ns/s".into(),
        options: Default::default(),
        flags: 0,
    }
}

#[test]
fn a_diff_applies_only_the_difference() {
    let host = MemoryHost::default();
    let mut services = host.targets().services;
    let mut desired = BTreeMap::from([(key(1), fe(&[1, 2])), (key(2), fe(&[3]))]);
    let s = apply_diff("services", &mut *services, &desired);
    assert_eq!((s.upserted, s.removed, s.unchanged), (2, 0, 0));
    assert_eq!(host.0.borrow().frontends, desired);

    let s = apply_diff("services", &mut *services, &desired);
    assert_eq!(
        (s.upserted, s.removed, s.unchanged),
        (0, 0, 2),
        "restart: no writes"
    );

    desired.insert(key(1), fe(&[1, 2, 4]));
    desired.remove(&key(2));
    desired.insert(key(3), fe(&[]));
    host.take_writes();
    let s = apply_diff("services", &mut *services, &desired);
    assert_eq!((s.upserted, s.removed, s.unchanged), (2, 1, 0));
    assert_eq!(host.take_writes().len(), 3);
    assert_eq!(host.0.borrow().frontends, desired);
}

#[test]
fn one_failing_frontend_does_not_stop_the_rest() {
    let host = MemoryHost::default();
    host.0.borrow_mut().poisoned = vec![format!("{:?}", key(1))];
    let mut services = host.targets().services;
    let desired = BTreeMap::from([(key(1), fe(&[1])), (key(2), fe(&[2]))]);
    let s = apply_diff("services", &mut *services, &desired);
    assert_eq!((s.upserted, s.failed), (1, 1));
    assert!(host.0.borrow().frontends.contains_key(&key(2)));
}

const CLUSTER: &str = include_str!("../../testdata/cluster.yaml");

fn objects(yaml: &str) -> Objects {
    let (objects, problems) = crate::source::file::parse_manifest(yaml).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    objects
}

fn config(overlay: Overlay) -> PlanConfig {
    PlanConfig {
        uplink: Some(Uplink {
            interface: "eth0".into(),
            overlay,
        }),
        cni: Some(CniConfig {
            conf_dir: "/etc/cni/net.d".into(),
            data_dir: "/var/lib/cni/networks".into(),
        }),
        ..PlanConfig::for_node("n1")
    }
}

fn node_plan(yaml: &str, cfg: &PlanConfig) -> NodePlan {
    let (plan, problems) = plan(&objects(yaml), cfg);
    assert!(problems.is_empty(), "{problems:?}");
    plan
}

/// A host on which a reconciler has made the plan of CLUSTER with
/// `overlay`; its writes so far are taken.
fn reconciled(overlay: Overlay) -> (MemoryHost, Reconciler) {
    let host = MemoryHost::with_interfaces(&[("eth0", 2)]);
    let mut reconciler = Reconciler::new(host.targets());
    reconciler.reconcile(&node_plan(CLUSTER, &config(overlay)));
    host.take_writes();
    (host, reconciler)
}

const VXLAN: Overlay = Overlay::Vxlan { vni: 7, port: 4789 };

fn assert_wrote(writes: &[String], expected: &[&str]) {
    for w in expected {
        assert!(writes.iter().any(|x| x == w), "{w} in {writes:?}");
    }
}

const NATIVE_XDP: Overlay = Overlay::Native {
    xdp: Some(XdpMode::Generic),
};

fn conflist_mtu(host: &MemoryHost) -> u64 {
    let host = host.0.borrow();
    let bytes = &host.files[std::path::Path::new("/etc/cni/net.d/10-ferry.conflist")];
    let json: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    json["plugins"][0]["mtu"].as_u64().unwrap()
}

#[test]
fn a_first_reconcile_builds_everything_and_an_unchanged_restart_only_repoints_links() {
    let host = MemoryHost::with_interfaces(&[("eth0", 2)]);
    let plan = node_plan(CLUSTER, &config(NATIVE_XDP));
    let report = Reconciler::new(host.targets()).reconcile(&plan);
    assert_eq!(report.failures, 0);
    assert_eq!(report.services.upserted, 1);
    assert_eq!(
        (report.routes.upserted, report.kernel_routes.upserted),
        (2, 2)
    );
    {
        let h = host.0.borrow();
        assert_eq!(
            h.links.keys().collect::<Vec<_>>(),
            ["eth0", "xdp-generic-eth0"]
        );
        let route = h.routes[&"10.244.2.0/24".parse().unwrap()];
        assert_eq!(
            (route.node_addr, route.mode, route.ifindex, route.vni),
            ([192, 168, 77, 12], ROUTE_MODE_NATIVE, 2, 0)
        );
        assert_eq!(
            h.kernel_routes[&"10.244.3.0/24".parse().unwrap()],
            KernelRoute::Via {
                gateway: Ipv4Addr::new(192, 168, 77, 13),
                device: "eth0".into()
            }
        );
        assert_eq!(h.node.unwrap().addr, Some(Ipv4Addr::new(192, 168, 77, 11)));
        assert_eq!(h.reserved_ports.len(), 2);
    }
    assert_eq!(conflist_mtu(&host), 1500);
    host.take_writes();

    // A restarted agent: the pinned maps and files hold the plan already;
    // only the links are pointed at the newly loaded programs. Kernel
    // routes are replaced once (this process has not installed them).
    let mut restarted = Reconciler::new(host.targets());
    restarted.reconcile(&plan);
    let writes = host.take_writes();
    assert!(
        writes
            .iter()
            .all(|w| w.starts_with("links attach") || w.starts_with("kernel routes upsert")),
        "{writes:?}"
    );
    // And a resync of the same plan writes nothing at all.
    restarted.reconcile(&plan);
    assert_eq!(host.take_writes(), Vec::<String>::new());
}

#[test]
fn an_overlay_change_from_native_to_vxlan_moves_links_routes_and_mtu() {
    let (host, _) = reconciled(NATIVE_XDP);

    let report = Reconciler::new(host.targets()).reconcile(&node_plan(CLUSTER, &config(VXLAN)));
    assert_eq!(report.failures, 0);
    let writes = host.take_writes();
    let position = |w: &str| {
        writes
            .iter()
            .position(|x| x == w)
            .unwrap_or_else(|| panic!("{w} in {writes:?}"))
    };
    // The device exists before anything is attached to it or routed
    // through it; the XDP link goes (VXLAN has no XDP path).
    assert!(position("device add ferry-vxlan") < position("links attach ferry-vxlan"));
    position("links detach xdp-generic-eth0");
    let h = host.0.borrow();
    assert_eq!(h.links.keys().collect::<Vec<_>>(), ["eth0", "ferry-vxlan"]);
    let vxlan_index = h.interfaces["ferry-vxlan"];
    let route = h.routes[&"10.244.2.0/24".parse().unwrap()];
    assert_eq!(
        (route.mode, route.ifindex, route.vni),
        (ROUTE_MODE_VXLAN, vxlan_index, 7)
    );
    assert_eq!(
        h.kernel_routes[&"10.244.2.0/24".parse().unwrap()],
        KernelRoute::Vxlan {
            vni: 7,
            remote: Ipv4Addr::new(192, 168, 77, 12),
            device: "ferry-vxlan".into()
        }
    );
    assert_eq!(report.kernel_routes.upserted, 2);
    drop(h);
    assert_eq!(conflist_mtu(&host), 1450);
}

#[test]
fn an_xdp_mode_change_replaces_the_link_and_xdp_off_removes_it() {
    let (host, mut reconciler) = reconciled(NATIVE_XDP);
    let native = Overlay::Native {
        xdp: Some(XdpMode::Native),
    };
    reconciler.reconcile(&node_plan(CLUSTER, &config(native)));
    let writes = host.take_writes();
    assert_wrote(
        &writes,
        &[
            "links detach xdp-generic-eth0",
            "links attach xdp-native-eth0",
        ],
    );
    assert_eq!(
        host.0.borrow().links["xdp-native-eth0"].hook,
        crate::plan::network::Hook::Xdp(XdpMode::Native)
    );
    // Only the links changed.
    assert!(writes.iter().all(|w| w.starts_with("links")), "{writes:?}");
    reconciler.reconcile(&node_plan(CLUSTER, &config(Overlay::Native { xdp: None })));
    assert_eq!(host.0.borrow().links.keys().collect::<Vec<_>>(), ["eth0"]);
}

#[test]
fn a_move_back_to_native_routing_removes_the_vxlan_device_and_its_link() {
    let (host, _) = reconciled(VXLAN);
    assert!(host.0.borrow().interfaces.contains_key("ferry-vxlan"));
    let report =
        Reconciler::new(host.targets()).reconcile(&node_plan(CLUSTER, &config(NATIVE_XDP)));
    assert_eq!(report.failures, 0);
    let writes = host.take_writes();
    assert_wrote(
        &writes,
        &[
            "links detach ferry-vxlan",
            "device del ferry-vxlan",
            "links attach xdp-generic-eth0",
        ],
    );
    let h = host.0.borrow();
    assert!(!h.interfaces.contains_key("ferry-vxlan"));
    let route = h.routes[&"10.244.2.0/24".parse().unwrap()];
    assert_eq!(
        (route.mode, route.ifindex, route.vni),
        (ROUTE_MODE_NATIVE, 2, 0)
    );
}

#[test]
fn a_node_leaving_takes_its_route_and_kernel_route_and_nothing_else() {
    let cfg = config(NATIVE_XDP);
    let (host, mut reconciler) = reconciled(NATIVE_XDP);
    let without_n3 = CLUSTER.replace(
        "---\napiVersion: v1\nkind: Node\nmetadata: {name: n3}\nspec: {podCIDR: 10.244.3.0/24}\nstatus: {addresses: [{type: InternalIP, address: 192.168.77.13}]}\n",
        "",
    );
    assert_ne!(without_n3, CLUSTER);
    let report = reconciler.reconcile(&node_plan(&without_n3, &cfg));
    assert_eq!(
        (report.routes.removed, report.kernel_routes.removed),
        (1, 1)
    );
    assert_eq!(
        host.take_writes(),
        [
            "route map 0 upserted 1 removed",
            "kernel routes remove Ipv4Net { addr: 10.244.3.0, prefix: 24 }"
        ]
    );
    let h = host.0.borrow();
    assert!(!h.routes.contains_key(&"10.244.3.0/24".parse().unwrap()));
    assert!(h.routes.contains_key(&"10.244.2.0/24".parse().unwrap()));
}

#[test]
fn a_service_changing_type_gains_and_loses_only_its_external_frontends() {
    let cfg = config(NATIVE_XDP);
    let (host, mut reconciler) = reconciled(NATIVE_XDP);
    let cluster_ip_only = host.0.borrow().frontends.clone();
    assert_eq!(cluster_ip_only.len(), 1);

    let node_port = CLUSTER.replace("type: ClusterIP", "type: NodePort");
    let report = reconciler.reconcile(&node_plan(&node_port, &cfg));
    // The node's address on the NodePort, for outside clients and for pods.
    assert_eq!(
        (report.services.upserted, report.services.unchanged),
        (2, 1)
    );
    assert!(host.0.borrow().frontends.contains_key(&ServiceKey {
        addr: [192, 168, 77, 11],
        port: 30080,
        protocol: PROTO_TCP,
        scope: SCOPE_EXTERNAL,
    }));

    let local_lb = node_port.replace(
        "type: NodePort",
        "type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000",
    );
    reconciler.reconcile(&node_plan(&local_lb, &cfg));
    assert_eq!(host.0.borrow().health_checks[&32000].local_endpoints, 1);

    let report = reconciler.reconcile(&node_plan(CLUSTER, &cfg));
    assert_eq!((report.services.removed, report.services.unchanged), (2, 1));
    let h = host.0.borrow();
    assert_eq!(h.frontends, cluster_ip_only);
    assert!(h.health_checks.is_empty());
}

#[test]
fn a_missing_uplink_is_an_error_that_names_it() {
    let host = MemoryHost::with_interfaces(&[("lo", 1)]);
    let plan = node_plan(CLUSTER, &config(NATIVE_XDP));
    let err = Reconciler::new(host.targets())
        .reconcile_links(&plan.links)
        .unwrap_err();
    assert!(err.to_string().contains("eth0 does not exist"), "{err}");
    assert!(host.0.borrow().links.is_empty());
    // Nor is a VXLAN device made for it.
    let plan = node_plan(CLUSTER, &config(VXLAN));
    let mut reconciler = Reconciler::new(host.targets());
    assert!(reconciler.reconcile_links(&plan.links).is_err());
    assert_eq!(host.take_writes(), Vec::<String>::new());
}

#[test]
fn udp_flows_of_a_departed_backend_are_removed_after_the_new_set_is_written() {
    let udp_key = |port| ServiceKey {
        protocol: ferry_common::PROTO_UDP,
        port,
        ..key(1)
    };
    let host = MemoryHost::default();
    let mut targets = host.targets();
    let before = BTreeMap::from([
        (udp_key(53), fe(&[1, 2])),
        (udp_key(54), fe(&[3])),
        (key(1), fe(&[1, 2])),
    ]);
    apply_diff("services", &mut *targets.services, &before);
    let mut reconciler = Reconciler::new(targets);
    let mut plan = node_plan("", &PlanConfig::for_node("n1"));
    // Backend 1 leaves port 53 (and the TCP frontend); port 54 goes.
    plan.frontends = BTreeMap::from([(udp_key(53), fe(&[2, 4])), (key(1), fe(&[2]))]);
    host.take_writes();
    let report = reconciler.reconcile(&plan);
    assert_eq!(report.stale_flows, 2);
    let gone: Vec<(u16, u8)> = host
        .0
        .borrow()
        .removed_flows
        .iter()
        .map(|f| (f.port, f.backend.addr[3]))
        .collect();
    assert_eq!(gone, [(53, 1), (54, 3)], "UDP only; TCP flows are kept");
    let writes = host.take_writes();
    let last_service_write = writes
        .iter()
        .rposition(|w| w.starts_with("services"))
        .unwrap();
    let flows = writes.iter().position(|w| w.starts_with("flows")).unwrap();
    assert!(last_service_write < flows, "{writes:?}");
}

#[test]
fn udp_flows_of_a_terminating_backend_are_kept_until_it_leaves_the_slice() {
    let udp = ServiceKey {
        protocol: ferry_common::PROTO_UDP,
        port: 53,
        ..key(1)
    };
    let host = MemoryHost::default();
    let mut targets = host.targets();
    apply_diff(
        "services",
        &mut *targets.services,
        &BTreeMap::from([(udp, fe(&[1, 2]))]),
    );
    let mut reconciler = Reconciler::new(targets);
    let mut plan = node_plan("", &PlanConfig::for_node("n1"));
    // Backend 1 is terminating: out of the set, its flows drain.
    plan.frontends = BTreeMap::from([(udp, fe(&[2]))]);
    plan.draining = fe(&[1]).backends.iter().copied().collect();
    assert_eq!(reconciler.reconcile(&plan).stale_flows, 0);
    assert!(host.0.borrow().removed_flows.is_empty());
    // Gone from the slice: its flows go.
    plan.draining.clear();
    plan.frontends = BTreeMap::from([(udp, fe(&[2, 3]))]);
    reconciler.reconcile(&plan);
    let gone: Vec<u8> = host
        .0
        .borrow()
        .removed_flows
        .iter()
        .map(|f| f.backend.addr[3])
        .collect();
    assert_eq!(gone, [1]);
}

#[test]
fn a_deleted_vxlan_device_is_made_again_at_the_next_sync() {
    let (host, mut reconciler) = reconciled(VXLAN);
    host.0.borrow_mut().interfaces.remove("ferry-vxlan");
    let report = reconciler.reconcile(&node_plan(CLUSTER, &config(VXLAN)));
    assert_eq!(report.failures, 0);
    let writes = host.take_writes();
    assert_wrote(
        &writes,
        &["device add ferry-vxlan", "links attach ferry-vxlan"],
    );
    let h = host.0.borrow();
    let route = h.routes[&"10.244.2.0/24".parse().unwrap()];
    assert_eq!(route.ifindex, h.interfaces["ferry-vxlan"]);
}

#[test]
fn service_ranges_follow_the_cidrs_and_the_cluster_ips_by_diff() {
    use ferry_common::{SERVICE_RANGE_ALLOCATED, SERVICE_RANGE_UNALLOCATED};
    let cfg = PlanConfig {
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        ..config(NATIVE_XDP)
    };
    let host = MemoryHost::with_interfaces(&[("eth0", 2)]);
    let mut reconciler = Reconciler::new(host.targets());
    let report = reconciler.reconcile(&node_plan(CLUSTER, &cfg));
    assert_eq!(report.service_ranges.upserted, 2);
    let kinds = |host: &MemoryHost| -> Vec<(String, u32)> {
        let h = host.0.borrow();
        h.service_ranges
            .iter()
            .map(|(n, r)| (n.to_string(), r.kind))
            .collect()
    };
    assert_eq!(
        kinds(&host),
        vec![
            ("10.96.0.0/12".to_string(), SERVICE_RANGE_UNALLOCATED),
            ("10.96.0.10/32".to_string(), SERVICE_RANGE_ALLOCATED),
        ]
    );
    host.take_writes();
    // Unchanged: nothing written.
    let report = reconciler.reconcile(&node_plan(CLUSTER, &cfg));
    assert_eq!(report.service_ranges.changed(), 0);
    assert!(
        !host
            .take_writes()
            .iter()
            .any(|w| w.starts_with("service ranges")),
    );
    // The Service's ClusterIP moves: the old /32 goes after the new one
    // is written; the CIDR stays.
    let moved = CLUSTER.replace("10.96.0.10", "10.96.0.11");
    let report = reconciler.reconcile(&node_plan(&moved, &cfg));
    assert_eq!(
        (
            report.service_ranges.upserted,
            report.service_ranges.removed
        ),
        (1, 1)
    );
    let writes: Vec<String> = host
        .take_writes()
        .into_iter()
        .filter(|w| w.starts_with("service ranges"))
        .collect();
    assert!(writes[0].starts_with("service ranges upsert"), "{writes:?}");
    assert_eq!(
        kinds(&host)[1],
        ("10.96.0.11/32".to_string(), SERVICE_RANGE_ALLOCATED)
    );
    // --service-cidr dropped: the map is emptied.
    let report = reconciler.reconcile(&node_plan(&moved, &config(NATIVE_XDP)));
    assert_eq!(report.service_ranges.removed, 2);
    assert!(kinds(&host).is_empty());
}

#[test]
fn sockets_of_a_departed_udp_backend_are_terminated_after_the_new_set_is_written() {
    let udp = ServiceKey {
        protocol: ferry_common::PROTO_UDP,
        port: 53,
        ..key(1)
    };
    let host = MemoryHost::default();
    let mut targets = host.targets();
    apply_diff(
        "services",
        &mut *targets.services,
        &BTreeMap::from([(udp, fe(&[1, 2])), (key(1), fe(&[1, 2]))]),
    );
    let mut reconciler = Reconciler::new(targets);
    let mut plan = node_plan("", &PlanConfig::for_node("n1"));
    // Backend 1 leaves both frontends; another is added.
    plan.frontends = BTreeMap::from([(udp, fe(&[2, 3])), (key(1), fe(&[2, 3]))]);
    host.take_writes();
    let report = reconciler.reconcile(&plan);
    assert_eq!(report.terminated_sockets, 1);
    let asked: Vec<(u16, u8, u8)> = host
        .0
        .borrow()
        .terminated_sockets
        .iter()
        .map(|f| (f.port, f.protocol, f.backend.addr[3]))
        .collect();
    assert_eq!(
        asked,
        [(53, ferry_common::PROTO_UDP, 1)],
        "UDP only: a TCP connection is left to its endpoints"
    );
    let writes = host.take_writes();
    let last_service_write = writes
        .iter()
        .rposition(|w| w.starts_with("services"))
        .unwrap();
    let sockets = writes
        .iter()
        .position(|w| w.starts_with("sockets terminate"))
        .unwrap();
    assert!(last_service_write < sockets, "{writes:?}");
    // Nothing left: the next sync terminates nothing.
    assert_eq!(reconciler.reconcile(&plan).terminated_sockets, 0);
    assert_eq!(host.0.borrow().terminated_sockets.len(), 1);
}

#[test]
fn sockets_of_a_draining_backend_are_kept_until_it_leaves_the_slice() {
    let udp = ServiceKey {
        protocol: ferry_common::PROTO_UDP,
        port: 53,
        ..key(1)
    };
    let host = MemoryHost::default();
    let mut targets = host.targets();
    apply_diff(
        "services",
        &mut *targets.services,
        &BTreeMap::from([(udp, fe(&[1, 2]))]),
    );
    let mut reconciler = Reconciler::new(targets);
    let mut plan = node_plan("", &PlanConfig::for_node("n1"));
    // Backend 1 is terminating: out of the set, its sockets kept.
    plan.frontends = BTreeMap::from([(udp, fe(&[2]))]);
    plan.draining = fe(&[1]).backends.iter().copied().collect();
    assert_eq!(reconciler.reconcile(&plan).terminated_sockets, 0);
    assert!(host.0.borrow().terminated_sockets.is_empty());
    // Still draining at the next sync: still kept.
    assert_eq!(reconciler.reconcile(&plan).terminated_sockets, 0);
    // Gone from the slice: its sockets are terminated.
    plan.draining.clear();
    let report = reconciler.reconcile(&plan);
    assert_eq!(report.terminated_sockets, 1);
    let asked: Vec<u8> = host
        .0
        .borrow()
        .terminated_sockets
        .iter()
        .map(|f| f.backend.addr[3])
        .collect();
    assert_eq!(asked, [1]);
}
