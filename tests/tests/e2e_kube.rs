//! The agent on the Kubernetes API, end to end: its real kube-rs watchers
//! against the API stand-in (ferry-apiserver-standin), which speaks the
//! list/watch protocol (resourceVersions, pagination, bookmarks, 410 on a
//! too-old resourceVersion). Objects change through the API; traffic
//! follows; an API restart with a new history makes the agent relist
//! without the datapath flapping; a Service labelled for another proxy is
//! no longer served; the service CIDRs follow the ServiceCIDR objects, and
//! an API server without them leaves `--service-cidr` alone in charge;
//! `--k8s-api-server` is what the agent dials, whatever its kubeconfig says.
use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{Ipv4Addr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ferry_apiserver_standin::ApiServer;
use ferry_harness::{Binaries, Cluster, Node, Pod, in_netns};
use ferry_tests::{
    client::{FixedPortUdp, tcp_ask_in, tcp_whoami, udp_whoami},
    service_cidrs::{assert_refused_at_once, counted, leaves_the_node, route_off_node},
};
use serde_json::{Value, json};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn node_object() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "n1"},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.77.11"}]}
    })
}

fn service(labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default", "labels": labels},
        "spec": {
            "type": "ClusterIP", "clusterIP": VIP.to_string(), "clusterIPs": [VIP.to_string()],
            "ports": [
                {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 8080}
            ]
        }
    })
}

fn slice(backends: &[&Pod]) -> Value {
    let endpoints: Vec<Value> = backends
        .iter()
        .map(|p| {
            json!({
                "addresses": [p.ip.to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": "n1"
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc12", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                  {"name": "dns", "port": 8080, "protocol": "UDP"}],
        "endpoints": endpoints
    })
}

/// Poll `check` until it holds, within `within`.
fn eventually(
    what: &str,
    node: &Node,
    within: Duration,
    mut check: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < within,
            "{what}: not within {within:?}\n{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn names(client: &Pod, tries: usize) -> BTreeSet<String> {
    (0..tries)
        .filter_map(|_| tcp_whoami(client, VIP, 80).ok())
        .collect()
}

/// GET `path` from the agent's metrics address in the node's namespace.
fn agent_http(node: &Node, path: &'static str) -> (u16, String) {
    in_netns(&node.netns.path(), move || {
        let mut s =
            TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, 9402).into(), Duration::from_secs(2))
                .expect("the agent serves its metrics address");
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        let code = r
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (
            code,
            r.split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default(),
        )
    })
    .unwrap()
}

/// The fields of the agent's last "synced changes" line (a sync of what
/// changed, not of everything), by name.
fn last_sync_of_changes(node: &Node) -> impl Fn(&str) -> Option<u64> + use<> {
    let log = node.agent_log();
    let line = log
        .lines()
        .rfind(|l| l.contains("synced changes"))
        .unwrap_or_else(|| panic!("no sync of changes in the log:\n{log}"))
        .to_string();
    move |key: &str| {
        line.split_whitespace()
            .filter_map(|w| w.split_once('='))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.parse().ok())
    }
}

/// Node n1 whose agent reads the objects from `api` (served inside the
/// node's namespace) through a kubeconfig.
fn node_fed_by(c: &Cluster, api: &ApiServer) -> Node {
    node_fed_by_with(c, api, &[])
}

/// `node_fed_by` with extra agent arguments.
fn node_fed_by_with(c: &Cluster, api: &ApiServer, extra: &[&str]) -> Node {
    let kubeconfig = c.root.join("kubeconfig");
    c.node_with_kube_api_and("n1", extra, |ns| {
        let addr = api.listen_in(&ns.path())?;
        api.kubeconfig(addr, &kubeconfig)?;
        Ok(kubeconfig.clone())
    })
    .expect("node with the API source")
}

#[test]
fn services_follow_the_api_through_scale_delete_relist_and_proxy_name() {
    ferry_tests::fixture::require_root();
    let c = Cluster::new(Binaries::locate().expect("binaries")).expect("cluster");
    let api = ApiServer::new();
    api.create(node_object()).unwrap();
    let node = node_fed_by(&c, &api);
    let (client, backends) = ferry_tests::fixture::client_and_three_backends(&node);
    // Ready after the first full sync (the lists), and saying so.
    eventually("/readyz", &node, Duration::from_secs(5), || {
        agent_http(&node, "/readyz").0 == 200
    });

    // Another Service, which no change below touches.
    let mut other = service(json!({}));
    other["metadata"]["name"] = json!("other");
    other["spec"]["clusterIP"] = json!("10.96.0.99");
    other["spec"]["clusterIPs"] = json!(["10.96.0.99"]);
    api.create(other).unwrap();
    // Create through the API: traffic works, TCP and UDP.
    api.create(service(json!({}))).unwrap();
    api.create(slice(&[&backends[0], &backends[1]])).unwrap();
    let took = eventually(
        "the ClusterIP answers",
        &node,
        Duration::from_secs(2),
        || tcp_whoami(&client, VIP, 80).is_ok(),
    );
    println!("created -> serving in {took:?}");
    let two: BTreeSet<String> = ["b1", "b2"].iter().map(|s| s.to_string()).collect();
    assert_eq!(names(&client, 40), two);
    assert!(["b1", "b2"].contains(&udp_whoami(&client, VIP, 53).unwrap().as_str()));

    // Scale up: the new endpoint is reached within 1 s.
    api.apply(slice(&[&backends[0], &backends[1], &backends[2]]))
        .unwrap();
    let took = eventually("b3 reached", &node, Duration::from_secs(1), || {
        names(&client, 10).contains("b3")
    });
    println!("scaled -> b3 reached in {took:?}");
    // Only the changed Service was looked at: its two frontends written,
    // the other Service's not even compared (a full sync would count them
    // unchanged).
    // (The line follows the writes: wait for it.)
    eventually(
        "the change's sync logged",
        &node,
        Duration::from_secs(2),
        || last_sync_of_changes(&node)("upserted") == Some(2),
    );
    let sync = last_sync_of_changes(&node);
    assert_eq!(
        (sync("upserted"), sync("removed"), sync("unchanged")),
        (Some(2), Some(0), Some(0)),
        "{}",
        node.agent_log()
    );

    // The API restarts with a new history: the agent's re-watch gets 410,
    // it relists; traffic never fails meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let probe = {
        let (stop, failures) = (stop.clone(), failures.clone());
        let ns = client.netns.path();
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let ok = ferry_tests::client::tcp_ask_in(&ns, VIP, 80, b"?").is_ok();
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                sent += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            sent
        })
    };
    let lists_before = api
        .requests()
        .iter()
        .filter(|r| r.contains("/services?") && !r.contains("watch=true"))
        .count();
    api.restart_with_new_history();
    eventually(
        "the agent relists Services",
        &node,
        Duration::from_secs(10),
        || {
            api.requests()
                .iter()
                .filter(|r| r.contains("/services?") && !r.contains("watch=true"))
                .count()
                > lists_before
        },
    );
    // After the relist it still follows changes: back to b1 only. The
    // EndpointSlice controller stamps when the change began; the
    // programming latency is measured from there (5 s ago), as kube-proxy's.
    let mut scaled_down = slice(&[&backends[0]]);
    let began =
        k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(5);
    scaled_down["metadata"]["annotations"] =
        json!({"endpoints.kubernetes.io/last-change-trigger-time": began.to_string()});
    api.apply(scaled_down).unwrap();
    eventually(
        "scaled down to b1 after the relist",
        &node,
        Duration::from_secs(2),
        || names(&client, 10) == BTreeSet::from(["b1".to_string()]),
    );
    stop.store(true, Ordering::Relaxed);
    let sent = probe.join().unwrap();
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "connections failed around the API restart ({sent} tried)\n{}",
        node.agent_log()
    );

    // Labelled for another proxy: ferry stops serving it.
    api.apply(service(
        json!({"service.kubernetes.io/service-proxy-name": "other"}),
    ))
    .unwrap();
    eventually(
        "the labelled Service is dropped",
        &node,
        Duration::from_secs(2),
        || !node.inspect("services").unwrap().contains(&VIP.to_string()),
    );
    assert!(tcp_whoami(&client, VIP, 80).is_err());
    // Unlabelled again, then deleted: served, then refused.
    api.apply(service(json!({}))).unwrap();
    eventually("served again", &node, Duration::from_secs(2), || {
        tcp_whoami(&client, VIP, 80).is_ok()
    });
    api.delete("Service", Some("default"), "web").unwrap();
    eventually("deleted", &node, Duration::from_secs(2), || {
        !node.inspect("services").unwrap().contains(&VIP.to_string())
    });
    assert!(tcp_whoami(&client, VIP, 80).is_err());

    // Metrics saw the programming.
    let (code, metrics) = agent_http(&node, "/metrics");
    assert_eq!(code, 200);
    let count = metrics
        .lines()
        .find(|l| l.starts_with("ferry_network_programming_duration_seconds_count"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        count >= 5,
        "programming latencies recorded: {count}\n{metrics}"
    );
    let sum = metrics
        .lines()
        .find(|l| l.starts_with("ferry_network_programming_duration_seconds_sum"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        (5.0..20.0).contains(&sum),
        "the scale-down counted from its trigger time 5 s earlier: sum {sum}\n{metrics}"
    );
    assert!(metrics.contains("ferry_datapath_packets_total{outcome=\"translated\"}"));
    drop(backends);
    drop(client);
    drop(node);
}

#[test]
fn objects_that_exist_before_the_agent_starts_are_served_and_it_reports_healthy() {
    ferry_tests::fixture::require_root();
    let c = Cluster::new(Binaries::locate().expect("binaries")).expect("cluster");
    let api = ApiServer::new();
    api.create(node_object()).unwrap();
    api.create(service(json!({}))).unwrap();
    let node = node_fed_by(&c, &api);
    // Served (no endpoints: refused at once), and ready.
    eventually(
        "the Service is programmed",
        &node,
        Duration::from_secs(5),
        || node.inspect("services").unwrap().contains(&VIP.to_string()),
    );
    assert_eq!(agent_http(&node, "/readyz").0, 200);
    assert_eq!(agent_http(&node, "/healthz").0, 200);
    drop(node);
}

fn service_cidr(name: &str, cidr: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": name},
        "spec": {"cidrs": [cidr]},
    })
}

/// Wait until `inspect service-cidrs` does (or does not) list `net`.
fn wait_for_range(node: &Node, net: &str, listed: bool) {
    eventually(
        &format!("{net} listed: {listed}"),
        node,
        Duration::from_secs(2),
        || node.inspect("service-cidrs").unwrap().contains(net) == listed,
    );
}

#[test]
fn service_cidr_objects_alone_set_the_ranges_and_the_datapath_follows_them() {
    ferry_tests::fixture::require_root();
    let c = Cluster::new(Binaries::locate().expect("binaries")).expect("cluster");
    let api = ApiServer::new();
    api.create(node_object()).unwrap();
    // As the API server creates it from --service-cluster-ip-range; the
    // agent has no --service-cidr.
    api.create(service_cidr("kubernetes", "10.96.0.0/16"))
        .unwrap();
    api.create(service(json!({}))).unwrap();
    let node = node_fed_by(&c, &api);
    let (client, backends) = ferry_tests::fixture::client_and_three_backends(&node);
    api.create(slice(&backends.iter().collect::<Vec<_>>()))
        .unwrap();
    eventually(
        "the ClusterIP answers",
        &node,
        Duration::from_secs(5),
        || tcp_whoami(&client, VIP, 80).is_ok(),
    );
    wait_for_range(&node, "10.96.0.0/16", true);
    wait_for_range(&node, "10.96.0.10/32", true);
    route_off_node(&node);

    // The ClusterIP's unserved port is refused; an unallocated address in
    // the object's range is dropped and counted, and never leaves.
    assert_refused_at_once(&client, VIP, (81, 54), "an unserved port");
    assert!(counted(&node, "rejected_unserved_port") >= 2);
    let in_first = Ipv4Addr::new(10, 96, 0, 99);
    let in_second = Ipv4Addr::new(10, 97, 0, 99);
    let dropped = counted(&node, "drop_unallocated_service_ip");
    assert!(!leaves_the_node(&node, &client, in_first));
    assert!(counted(&node, "drop_unallocated_service_ip") > dropped);
    assert!(leaves_the_node(&node, &client, in_second));

    // A second ServiceCIDR extends the ranges (spec.cidrs is immutable:
    // ranges are added and removed as objects).
    api.create(service_cidr("extra", "10.97.0.0/16")).unwrap();
    wait_for_range(&node, "10.97.0.0/16", true);
    assert!(!leaves_the_node(&node, &client, in_second));

    // The first one deleted: its range is an ordinary address again.
    api.delete("ServiceCIDR", None, "kubernetes").unwrap();
    wait_for_range(&node, "10.96.0.0/16", false);
    assert!(leaves_the_node(&node, &client, in_first));
    assert!(!leaves_the_node(&node, &client, in_second));

    // None left: no ranges and no ClusterIP entries, as without any.
    api.delete("ServiceCIDR", None, "extra").unwrap();
    wait_for_range(&node, "10.96.0.10/32", false);
    wait_for_range(&node, "10.97.0.0/16", false);
    assert!(leaves_the_node(&node, &client, in_second));
    assert!(!tcp_whoami(&client, VIP, 80).unwrap().is_empty());
    drop(backends);
    drop(client);
}

#[test]
fn an_api_server_without_service_cidrs_leaves_the_flag_in_charge_and_is_told_once() {
    ferry_tests::fixture::require_root();
    let c = Cluster::new(Binaries::locate().expect("binaries")).expect("cluster");
    // As an API server before Kubernetes 1.33: 404 for ServiceCIDRs.
    let api = ApiServer::without(&["ServiceCIDR"]).unwrap();
    api.create(node_object()).unwrap();
    api.create(service(json!({}))).unwrap();
    let node = node_fed_by_with(&c, &api, &["--service-cidr", "10.96.0.0/16"]);
    eventually(
        "the Service is programmed",
        &node,
        Duration::from_secs(5),
        || node.inspect("services").unwrap().contains(&VIP.to_string()),
    );
    assert_eq!(agent_http(&node, "/readyz").0, 200);
    wait_for_range(&node, "10.96.0.0/16", true);
    wait_for_range(&node, "10.96.0.10/32", true);
    // Still following changes, and not asking for ServiceCIDRs again.
    api.delete("Service", Some("default"), "web").unwrap();
    wait_for_range(&node, "10.96.0.10/32", false);
    std::thread::sleep(Duration::from_secs(2));
    let asked = api
        .requests()
        .iter()
        .filter(|r| r.contains("/servicecidrs"))
        .count();
    assert_eq!(asked, 1, "{:#?}", api.requests());
    let log = node.agent_log();
    let said = log
        .matches("does not serve networking.k8s.io/v1 ServiceCIDRs")
        .count();
    assert_eq!(said, 1, "said once:\n{log}");
    drop(node);
}

#[test]
fn session_affinity_and_source_ranges_come_from_the_api() {
    ferry_tests::fixture::require_root();
    let c = Cluster::new(Binaries::locate().expect("binaries")).expect("cluster");
    let api = ApiServer::new();
    api.create(node_object()).unwrap();
    let node = node_fed_by(&c, &api);
    let (client, backends) = ferry_tests::fixture::client_and_three_backends(&node);
    let lb_ip = Ipv4Addr::new(198, 51, 100, 10);
    // A LoadBalancer Service with ClientIP affinity and source ranges that
    // leave the client pod out.
    let with = |affinity: &str, ranges: &[String]| {
        let mut svc = service(json!({}));
        svc["spec"]["type"] = json!("LoadBalancer");
        svc["spec"]["sessionAffinity"] = json!(affinity);
        svc["spec"]["loadBalancerSourceRanges"] = json!(ranges);
        svc["spec"]["ports"][0]["nodePort"] = json!(30080);
        svc["spec"]["ports"][1]["nodePort"] = json!(30053);
        svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": lb_ip.to_string()}]}});
        svc
    };
    api.create(with("ClientIP", &["192.0.2.0/24".to_string()]))
        .unwrap();
    api.create(slice(&backends.iter().collect::<Vec<_>>()))
        .unwrap();
    eventually("affinity programmed", &node, Duration::from_secs(5), || {
        node.inspect("services")
            .unwrap()
            .contains("ClientIP 10800s")
    });
    let sticky = names(&client, 12);
    assert_eq!(sticky.len(), 1, "{sticky:?}");
    let refused = tcp_ask_in(&client.netns.path(), lb_ip, 80, b"?");
    assert!(refused.is_err(), "outside the ranges, got {refused:?}");

    // Through the API again: affinity off, the client's /32 admitted.
    let own = format!("{}/32", client.ip);
    api.apply(with("None", std::slice::from_ref(&own))).unwrap();
    eventually("ranges programmed", &node, Duration::from_secs(5), || {
        node.inspect("services").unwrap().contains(&own)
    });
    assert!(!node.inspect("services").unwrap().contains("ClientIP"));
    assert!(names(&client, 12).len() > 1, "affinity still applied");
    tcp_ask_in(&client.netns.path(), lb_ip, 80, b"?").expect("admitted to the LB IP");
}

#[test]
fn topology_hints_and_terminating_endpoints_come_from_the_api() {
    ferry_tests::fixture::require_root();
    let c = Cluster::new(Binaries::locate().expect("binaries")).expect("cluster");
    let api = ApiServer::new();
    let mut node = node_object();
    node["metadata"]["labels"] = json!({"topology.kubernetes.io/zone": "zone-a"});
    api.create(node).unwrap();
    let node = node_fed_by(&c, &api);
    let (client, backends) = ferry_tests::fixture::client_and_three_backends(&node);
    // Zone hints: b1 for this node's zone, b2 and b3 for another.
    let endpoint = |pod: &Pod, conditions: Value, zone: &str| {
        json!({
            "addresses": [pod.ip.to_string()], "conditions": conditions, "nodeName": "n1",
            "zone": zone, "hints": {"forZones": [{"name": zone}]}
        })
    };
    let ready = json!({"ready": true, "serving": true, "terminating": false});
    let mut hinted = slice(&[]);
    hinted["endpoints"] = json!([
        endpoint(&backends[0], ready.clone(), "zone-a"),
        endpoint(&backends[1], ready.clone(), "zone-b"),
        endpoint(&backends[2], ready.clone(), "zone-b"),
    ]);
    api.create(service(json!({}))).unwrap();
    api.create(hinted.clone()).unwrap();
    eventually(
        "hinted endpoint served",
        &node,
        Duration::from_secs(5),
        || tcp_whoami(&client, VIP, 80).is_ok(),
    );
    let in_zone = names(&client, 12);
    assert_eq!(in_zone, BTreeSet::from(["b1".to_string()]), "hints ignored");

    // A resolver-like client on a fixed port reaches b1.
    let resolver = FixedPortUdp::open(&client, 5353, VIP, 53).unwrap();
    let ask = || resolver.ask();
    assert_eq!(ask().as_deref(), Some("b1"));

    // b1 starts terminating: the zone has no ready endpoint left, so hints
    // no longer apply and new connections go to b2 and b3; b1's
    // established UDP flow drains on it.
    let terminating = json!({"ready": false, "serving": true, "terminating": true});
    hinted["endpoints"][0] = endpoint(&backends[0], terminating, "zone-a");
    api.apply(hinted).unwrap();
    eventually("b1 out of the set", &node, Duration::from_secs(5), || {
        !node
            .inspect("backends")
            .unwrap()
            .contains(&backends[0].ip.to_string())
    });
    let others = names(&client, 12);
    assert!(!others.contains("b1"), "{others:?}");
    for _ in 0..5 {
        assert_eq!(ask().as_deref(), Some("b1"), "the draining flow moved");
    }
}

/// Without kube-proxy, the `kubernetes` ClusterIP reaches nothing: the agent
/// is given the API server's own address. Here the kubeconfig names that
/// ClusterIP (which nothing serves in the node's namespace: no route), and
/// `--k8s-api-server` the stand-in: everything still syncs, so the flag is
/// what the agent dials.
#[test]
fn the_agent_dials_the_k8s_api_server_flag_instead_of_the_kubeconfigs_server() {
    ferry_tests::fixture::require_root();
    let c = Cluster::new(Binaries::locate().expect("binaries")).expect("cluster");
    let api = ApiServer::new();
    api.create(node_object()).unwrap();
    api.create(service(json!({}))).unwrap();
    let kubeconfig = c.root.join("kubeconfig-clusterip");
    let cluster_ip: std::net::SocketAddr = "10.96.0.1:443".parse().unwrap();
    let node = c
        .node_with_agent_args("n1", |ns| {
            let addr = api.listen_in(&ns.path())?;
            api.kubeconfig(cluster_ip, &kubeconfig)?;
            Ok(vec![
                "--source=kube".to_string(),
                format!("--kubeconfig={}", kubeconfig.display()),
                format!("--k8s-api-server=http://{addr}"),
            ])
        })
        .expect("node with the API source");
    let (client, backends) = ferry_tests::fixture::client_and_three_backends(&node);
    eventually("/readyz", &node, Duration::from_secs(5), || {
        agent_http(&node, "/readyz").0 == 200
    });
    api.create(slice(&[&backends[0], &backends[1]])).unwrap();
    eventually(
        "the ClusterIP answers",
        &node,
        Duration::from_secs(5),
        || tcp_whoami(&client, VIP, 80).is_ok(),
    );
    // It keeps following changes over the flag's address.
    api.apply(slice(&[&backends[2]])).unwrap();
    eventually("moved to b3", &node, Duration::from_secs(2), || {
        names(&client, 10) == BTreeSet::from(["b3".to_string()])
    });
    let log = node.agent_log();
    assert!(log.contains("(--k8s-api-server)"), "{log}");
    assert!(
        !log.contains("10.96.0.1"),
        "the kubeconfig's server is never dialled:\n{log}"
    );
    drop(backends);
    drop(client);
    drop(node);
}
