//! One node end to end: pods created through ferry-cni, an agent reading a
//! YAML manifest, real TCP and UDP through the kernel programs.
use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{Ipv4Addr, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use ferry_harness::{Binaries, Cluster, Node, Pod, manifest};
use ferry_tests::{
    client::{FixedPortUdp, tcp_whoami, udp_whoami},
    service_cidrs::{assert_refused_at_once, counted, leaves_the_node, route_off_node},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const CIDR: &str = "10.244.1.0/24";

fn cluster() -> Cluster {
    ferry_tests::fixture::require_root();
    Cluster::new(Binaries::locate().expect("binaries")).expect("cluster")
}

/// Node n1 with a client and three backend pods serving on 8080.
fn one_node(c: &Cluster) -> (Node, Pod, Vec<Pod>) {
    c.write_manifest(&manifest::node("n1", CIDR)).unwrap();
    let node = c.node("n1").unwrap();
    let (client, backends) = ferry_tests::fixture::client_and_three_backends(&node);
    (node, client, backends)
}

fn web_manifest(backends: &[&Pod]) -> String {
    let ips: Vec<Ipv4Addr> = backends.iter().map(|p| p.ip).collect();
    manifest::join(&[
        manifest::node("n1", CIDR),
        manifest::service(
            "web",
            VIP,
            &[("http", 80, "TCP", 8080), ("dns", 53, "UDP", 8080)],
        ),
        manifest::endpoint_slice(
            "web",
            "n1",
            &ips,
            &[("http", 8080, "TCP"), ("dns", 8080, "UDP")],
        ),
        manifest::service(
            "empty",
            EMPTY_VIP,
            &[("http", 80, "TCP", 8080), ("dns", 53, "UDP", 8080)],
        ),
    ])
}

/// Wait until `inspect backends` lists exactly `n` backends for VIP:80.
fn wait_for_backends(node: &Node, n: usize, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let out = node.inspect("backends").unwrap();
        let count = out
            .lines()
            .filter(|l| l.starts_with(&format!("{VIP}:80 ")))
            .count();
        if count == n {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{n} backends not programmed within {within:?}:\n{out}\n{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn names_seen(tries: usize, mut ask: impl FnMut() -> String) -> BTreeSet<String> {
    (0..tries).map(|_| ask()).collect()
}

fn wait_until_serving(client: &Pod) {
    let start = Instant::now();
    while tcp_whoami(client, VIP, 80).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the ClusterIP never answered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn clusterip_over_tcp_and_udp_reaches_every_backend_and_follows_edits() {
    let c = cluster();
    let (node, client, mut backends) = one_node(&c);
    c.write_manifest(&web_manifest(&backends.iter().collect::<Vec<_>>()))
        .unwrap();
    wait_for_backends(&node, 3, Duration::from_secs(5));
    wait_until_serving(&client);

    let all: BTreeSet<String> = ["b1", "b2", "b3"].iter().map(|s| s.to_string()).collect();
    let tcp = names_seen(60, || tcp_whoami(&client, VIP, 80).unwrap());
    assert_eq!(tcp, all, "TCP through the ClusterIP reaches every backend");
    let udp = names_seen(60, || udp_whoami(&client, VIP, 53).unwrap());
    assert_eq!(udp, all, "UDP through the ClusterIP reaches every backend");

    // Pods reach each other by IP.
    for b in &backends {
        assert_eq!(tcp_whoami(&client, b.ip, 8080).unwrap(), b.name);
        assert_eq!(udp_whoami(&client, b.ip, 8080).unwrap(), b.name);
    }

    // Remove b3: programmed within 1 s, and no new connection reaches it.
    c.write_manifest(&web_manifest(&[&backends[0], &backends[1]]))
        .unwrap();
    let took = wait_for_backends(&node, 2, Duration::from_secs(1));
    println!("removal programmed in {took:?}");
    let seen = names_seen(40, || tcp_whoami(&client, VIP, 80).unwrap());
    assert!(!seen.contains("b3"), "b3 still reached: {seen:?}");

    // Add a new backend b4: reached within 1 s.
    let mut b4 = node.add_pod("b4").unwrap();
    b4.serve(8080).unwrap();
    backends.push(b4);
    c.write_manifest(&web_manifest(&[&backends[0], &backends[1], &backends[3]]))
        .unwrap();
    let took = wait_for_backends(&node, 3, Duration::from_secs(1));
    println!("addition programmed in {took:?}");
    let seen = names_seen(60, || tcp_whoami(&client, VIP, 80).unwrap());
    assert!(seen.contains("b4"), "b4 never reached: {seen:?}");

    // A Service with no endpoints refuses at once, TCP and UDP.
    assert_refused_at_once(&client, EMPTY_VIP, (80, 53), "a Service without endpoints");

    // Delete the Service: its frontends disappear within 1 s.
    c.write_manifest(&manifest::node("n1", CIDR)).unwrap();
    wait_for_backends(&node, 0, Duration::from_secs(1));
    assert!(!node.inspect("services").unwrap().contains(&VIP.to_string()));
    assert!(
        tcp_whoami(&client, VIP, 80).is_err(),
        "a deleted Service still answers"
    );
    drop(backends);
    drop(client);
}

#[test]
fn a_udp_client_on_a_fixed_port_moves_to_a_new_backend_when_its_backend_leaves() {
    // Kubernetes e2e "should be able to preserve UDP traffic when server pod
    // cycles": a resolver keeps its source port, so its flow never expires
    // while it keeps asking; the old backend (here still running) must stop
    // getting it once it leaves the Service.
    let c = cluster();
    let (node, client, backends) = one_node(&c);
    c.write_manifest(&web_manifest(&[&backends[0]])).unwrap();
    wait_for_backends(&node, 1, Duration::from_secs(5));
    let resolver = FixedPortUdp::open(&client, 5353, VIP, 53).unwrap();
    let ask = || resolver.ask();
    let start = Instant::now();
    while ask().as_deref() != Some("b1") {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "b1 never answered"
        );
    }
    c.write_manifest(&web_manifest(&[&backends[1]])).unwrap();
    let moved = Instant::now();
    let mut answers = Vec::new();
    loop {
        let answer = ask();
        if answer.as_deref() == Some("b2") {
            break;
        }
        answers.push(answer);
        assert!(
            moved.elapsed() < Duration::from_secs(3),
            "the flow stayed on its old backend: {answers:?}\n{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("moved to the new backend in {:?}", moved.elapsed());
    node.wait_for_log(
        "stale_udp_flows=1",
        Duration::from_secs(5),
        "the flow moved, but no sync says it removed a stale UDP flow",
    );
}

#[test]
fn an_established_connection_survives_an_agent_restart() {
    let c = cluster();
    let (mut node, client, backends) = one_node(&c);
    c.write_manifest(&web_manifest(&backends.iter().collect::<Vec<_>>()))
        .unwrap();
    wait_for_backends(&node, 3, Duration::from_secs(5));
    wait_until_serving(&client);

    let (tx, rx) = std::sync::mpsc::channel::<&'static [u8]>();
    let (back_tx, back_rx) = std::sync::mpsc::channel::<String>();
    // The connection lives on a thread inside the client pod's namespace.
    let client_ns = client.netns.path();
    let driver = std::thread::spawn(move || {
        ferry_harness::in_netns(&client_ns, move || -> anyhow::Result<()> {
            let mut s = TcpStream::connect_timeout(&(VIP, 80).into(), Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            while let Ok(msg) = rx.recv() {
                s.write_all(msg)?;
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf)?;
                back_tx.send(String::from_utf8_lossy(&buf[..n]).into_owned())?;
            }
            Ok(())
        })
    });
    let ask = |msg: &'static [u8]| {
        tx.send(msg).unwrap();
        back_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("answer on the connection")
    };
    let backend = ask(b"?");
    assert!(backend.starts_with('b'), "{backend}");

    node.kill_agent().unwrap();
    assert_eq!(
        ask(b"ping while the agent is down"),
        "ping while the agent is down"
    );
    assert_eq!(ask(b"?"), backend, "same backend, same connection");
    // New connections work without the agent too: the maps stay pinned.
    assert!(tcp_whoami(&client, VIP, 80).unwrap().starts_with('b'));

    let syncs_before = node.agent_log().matches(" synced ").count();
    node.start_agent().unwrap();
    // Wait for the restarted agent's first sync (loading the programs
    // through the verifier takes a few hundred milliseconds).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while node.agent_log().matches(" synced ").count() == syncs_before
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(ask(b"ping after the restart"), "ping after the restart");
    assert_eq!(ask(b"?"), backend);
    let log = node.agent_log();
    let last_sync = log
        .lines()
        .rev()
        .find(|l| l.contains(" synced "))
        .unwrap_or("");
    assert!(
        last_sync.contains("upserted=0") && last_sync.contains("unchanged=4"),
        "the restarted agent found the maps already right and wrote nothing:\n{log}"
    );
    drop(tx);
    driver.join().unwrap().unwrap().unwrap();
}

#[test]
fn a_pod_reaches_itself_through_its_own_service() {
    let c = cluster();
    c.write_manifest(&manifest::node("n1", CIDR)).unwrap();
    let node = c.node("n1").unwrap();
    let mut solo = node.add_pod("solo").unwrap();
    solo.serve(8080).unwrap();
    c.write_manifest(&web_manifest(&[&solo])).unwrap();
    wait_for_backends(&node, 1, Duration::from_secs(5));
    let start = Instant::now();
    loop {
        match tcp_whoami(&solo, VIP, 80) {
            Ok(name) => {
                assert_eq!(name, "solo");
                break;
            }
            Err(e) => assert!(start.elapsed() < Duration::from_secs(5), "hairpin: {e:#}"),
        }
    }
    assert_eq!(udp_whoami(&solo, VIP, 53).unwrap(), "solo");
}

#[test]
fn cni_check_and_del_leave_no_trace() {
    let c = cluster();
    c.write_manifest(&manifest::node("n1", CIDR)).unwrap();
    let node = c.node("n1").unwrap();
    let pod = node.add_pod("p").unwrap();
    pod.cni_check().expect("CNI CHECK of a healthy pod");
    let host_if = pod.result["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        node.inspect("endpoints")
            .unwrap()
            .contains(&pod.ip.to_string())
    );
    assert!(node.pin_dir.join("links").join(&host_if).exists());
    let ipam_file = node.cni_data_dir.join("ferry").join(pod.ip.to_string());
    assert!(ipam_file.exists());
    // Where the pod's network namespace is, for the agent (socket LB).
    let netns_record = node.cni_data_dir.join("ferry/netns").join(&host_if);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&netns_record).unwrap()).unwrap();
    assert_eq!(
        record["netns"].as_str(),
        pod.netns.path().to_str(),
        "{record}"
    );

    pod.cni_del().unwrap();
    assert!(
        !node
            .inspect("endpoints")
            .unwrap()
            .contains(&pod.ip.to_string())
    );
    assert!(!node.pin_dir.join("links").join(&host_if).exists());
    assert!(!ipam_file.exists());
    assert!(!netns_record.exists());
    assert!(node.netns.exec(&["ip", "link", "show", &host_if]).is_err());
    pod.cni_del().expect("DEL is idempotent");
    assert!(pod.cni_check().is_err(), "CHECK fails once the pod is gone");
    assert!(Path::new(&node.pin_dir).exists());
}

/// `ip -j ARGS` in `ns`, parsed.
fn ip_json(ns: &ferry_harness::Netns, args: &[&str]) -> serde_json::Value {
    let argv: Vec<&str> = ["ip", "-j"].iter().chain(args).copied().collect();
    let out = ns.exec(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e:#}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{argv:?}: {e}: {out}"))
}

/// ferry-cni and the agent run with nothing on their PATH, as on a node
/// without iproute2 or util-linux: ADD still wires the pod as it always
/// did (address, routes, neighbour, MTU, MACs, the host route), pods talk,
/// CHECK passes, and DEL removes the host link (twice is fine).
#[test]
fn cni_needs_neither_iproute2_nor_util_linux_on_the_node() {
    let c = cluster().without_node_tools().expect("an empty PATH");
    c.write_manifest(&manifest::node("n1", CIDR)).unwrap();
    let node = c.node("n1").unwrap();
    let pod = node
        .add_pod("p")
        .expect("ADD with no ip or nsenter on the PATH");
    let mut peer = node.add_pod("q").unwrap();
    let conflist: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(node.conflist_path()).unwrap()).unwrap();
    let mtu = conflist["plugins"][0]["mtu"].as_u64().unwrap();
    let host_if = pod.result["interfaces"][0]["name"].as_str().unwrap();
    let host_mac = pod.result["interfaces"][0]["mac"].as_str().unwrap();
    let pod_mac = pod.result["interfaces"][1]["mac"].as_str().unwrap();
    assert_eq!(
        pod.result["interfaces"][1]["name"], "eth0",
        "{}",
        pod.result
    );
    assert_eq!(
        pod.result["ips"][0]["address"],
        format!("{}/32", pod.ip),
        "{}",
        pod.result
    );

    // The pod's side: up, its MTU and MAC, the address as a /32.
    let eth0 = &ip_json(&pod.netns, &["addr", "show", "dev", "eth0"])[0];
    assert_eq!(eth0["mtu"].as_u64(), Some(mtu), "{eth0}");
    assert_eq!(eth0["address"], pod_mac, "{eth0}");
    assert!(eth0["flags"].to_string().contains("\"UP\""), "{eth0}");
    let addrs: Vec<String> = eth0["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    assert!(addrs.contains(&format!("{}/32", pod.ip)), "{eth0}");
    let lo = &ip_json(&pod.netns, &["link", "show", "dev", "lo"])[0];
    assert!(lo["flags"].to_string().contains("\"UP\""), "{lo}");
    // Its routes: the gateway on-link, the default route through it.
    let routes = ip_json(&pod.netns, &["-4", "route", "show"]);
    let gateway = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["dst"] == "169.254.1.1")
        .unwrap_or_else(|| panic!("no route to the gateway: {routes}"));
    assert_eq!(gateway["dev"], "eth0", "{routes}");
    assert_eq!(gateway["scope"], "link", "{routes}");
    let default = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["dst"] == "default")
        .unwrap_or_else(|| panic!("no default route: {routes}"));
    assert_eq!(default["gateway"], "169.254.1.1", "{routes}");
    assert_eq!(default["dev"], "eth0", "{routes}");
    // The gateway's permanent neighbour entry: the host veth's MAC.
    let neigh = ip_json(&pod.netns, &["neigh", "show", "dev", "eth0"]);
    let entry = neigh
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["dst"] == "169.254.1.1")
        .unwrap_or_else(|| panic!("no neighbour entry for the gateway: {neigh}"));
    assert_eq!(entry["lladdr"], host_mac, "{neigh}");
    assert_eq!(entry["state"], serde_json::json!(["PERMANENT"]), "{neigh}");

    // The node's side: the host veth up with the same MTU, and the /32
    // route to the pod through it.
    let host = &ip_json(&node.netns, &["link", "show", "dev", host_if])[0];
    assert_eq!(host["mtu"].as_u64(), Some(mtu), "{host}");
    assert_eq!(host["address"], host_mac, "{host}");
    assert!(host["flags"].to_string().contains("\"UP\""), "{host}");
    let to_pod = ip_json(&node.netns, &["-4", "route", "show", &pod.ip.to_string()]);
    assert_eq!(to_pod[0]["dev"], host_if, "{to_pod}");
    assert_eq!(to_pod[0]["scope"], "link", "{to_pod}");

    // Wired for real: the pods reach each other.
    peer.serve(8080).unwrap();
    assert_eq!(tcp_whoami(&pod, peer.ip, 8080).unwrap(), "q");

    pod.cni_check()
        .expect("CHECK with no ip or nsenter on the PATH");
    pod.cni_del()
        .expect("DEL with no ip or nsenter on the PATH");
    assert!(node.netns.exec(&["ip", "link", "show", host_if]).is_err());
    assert!(
        ip_json(&node.netns, &["-4", "route", "show", &pod.ip.to_string()])
            .as_array()
            .is_none_or(|r| r.is_empty()),
        "the route to the pod went with its veth"
    );
    pod.cni_del().expect("DEL is idempotent");
    assert!(pod.cni_check().is_err(), "CHECK fails once the pod is gone");
    assert!(
        node.agent_log().contains("dataplane loaded"),
        "{}",
        node.agent_log()
    );
}

#[test]
fn with_service_cidrs_an_unserved_port_is_refused_and_an_unallocated_address_never_leaves() {
    let c = cluster();
    c.write_manifest(&manifest::node("n1", CIDR)).unwrap();
    let node = c
        .node_with("n1", &["--service-cidr", "10.96.0.0/16"])
        .unwrap();
    let (client, backends) = ferry_tests::fixture::client_and_three_backends(&node);
    c.write_manifest(&web_manifest(&backends.iter().collect::<Vec<_>>()))
        .unwrap();
    wait_for_backends(&node, 3, Duration::from_secs(5));
    wait_until_serving(&client);
    let ranges = node.inspect("service-cidrs").unwrap();
    for want in [
        "10.96.0.0/16",
        "service-cidr",
        "10.96.0.10/32",
        "cluster-ip",
    ] {
        assert!(ranges.contains(want), "{want} in:\n{ranges}");
    }
    route_off_node(&node);

    // The ClusterIP on a port its Service does not have: refused at once.
    assert_refused_at_once(&client, VIP, (81, 54), "an unserved port");
    assert!(counted(&node, "rejected_unserved_port") >= 2);

    // An address in the range that no Service holds: dropped on the node;
    // outside the range the same connect leaves by the default route, as
    // before (so the capture does see what leaves).
    assert!(
        !leaves_the_node(&node, &client, Ipv4Addr::new(10, 96, 0, 99)),
        "an unallocated service address left the node"
    );
    assert!(leaves_the_node(
        &node,
        &client,
        Ipv4Addr::new(10, 97, 0, 99)
    ));
    assert!(counted(&node, "drop_unallocated_service_ip") >= 1);
    // The served ports still work.
    assert!(!tcp_whoami(&client, VIP, 80).unwrap().is_empty());
    drop(backends);
    drop(client);
}

#[test]
fn a_broken_or_missing_manifest_keeps_the_dataplane_and_is_said_once() {
    let c = cluster();
    let (node, client, backends) = one_node(&c);
    c.write_manifest(&web_manifest(&backends.iter().collect::<Vec<_>>()))
        .unwrap();
    wait_for_backends(&node, 3, Duration::from_secs(5));
    let count = |needle: &str| node.agent_log().matches(needle).count();
    let syncs = count(" synced ");
    // The manifest of issue 13: serde_yaml looped on it, eating memory.
    c.write_manifest(
        "kind: Service\nmetadata: {name: a}\n---\nkind: Service\nmetadata: {name: b\n  bad: [x\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(count("not valid YAML"), 1, "{}", node.agent_log());
    assert!(
        tcp_whoami(&client, VIP, 80).is_ok(),
        "the Services were flushed"
    );
    assert_eq!(
        count(" synced "),
        syncs,
        "nothing synced from a broken file"
    );
    // Gone: said once, still serving.
    std::fs::remove_file(&c.manifest).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(count("cannot read the manifest"), 1, "{}", node.agent_log());
    assert!(tcp_whoami(&client, VIP, 80).is_ok());
    // Back: read again.
    c.write_manifest(&web_manifest(&[&backends[0]])).unwrap();
    wait_for_backends(&node, 1, Duration::from_secs(5));
    assert_eq!(
        count("the manifest is readable again"),
        1,
        "{}",
        node.agent_log()
    );
}
