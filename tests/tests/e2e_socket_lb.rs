//! Socket-level load balancing end to end: the node's own processes and
//! (with `--socket-lb on`) pods' processes, each a real process in its
//! cgroup below the node's (`--cgroup-root`) and in its network namespace,
//! reach Services through ferry's cgroup socket programs.
use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use ferry_harness::{Binaries, Cluster, Node, Pod, manifest};
use ferry_tests::{client::tcp_whoami, service_cidrs::counted};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NP_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const NODE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const NODE_PORT: u16 = 30080;
const CIDR: &str = "10.244.1.0/24";
const ECONNREFUSED: &str = "error=111";

fn cluster() -> Cluster {
    ferry_tests::fixture::require_root();
    Cluster::new(Binaries::locate().expect("binaries")).expect("cluster")
}

fn objects(backends: &[&Pod]) -> String {
    let ips: Vec<Ipv4Addr> = backends.iter().map(|p| p.ip).collect();
    let ports = [("http", 8080, "TCP"), ("dns", 8080, "UDP")];
    manifest::join(&[
        manifest::node_with_address("n1", CIDR, NODE_ADDR),
        manifest::service(
            "web",
            VIP,
            &[("http", 80, "TCP", 8080), ("dns", 53, "UDP", 8080)],
        ),
        manifest::endpoint_slice("web", "n1", &ips, &ports),
        manifest::node_port_service(
            "np",
            "NodePort",
            NP_VIP,
            "",
            &[
                ("http", 80, "TCP", 8080, NODE_PORT),
                ("dns", 53, "UDP", 8080, NODE_PORT),
            ],
        ),
        manifest::endpoint_slice("np", "n1", &ips, &ports),
        manifest::service(
            "empty",
            EMPTY_VIP,
            &[("http", 80, "TCP", 8080), ("dns", 53, "UDP", 8080)],
        ),
    ])
}

/// Node n1 (its address on its loopback device, so its own processes have
/// a source address towards pods and NodePorts answer on it), a client pod
/// and backends b1, b2 serving on 8080, all of them behind the Services.
fn setup(c: &Cluster, agent_args: &[&str]) -> (Node, Pod, Vec<Pod>) {
    c.write_manifest(&manifest::node_with_address("n1", CIDR, NODE_ADDR))
        .unwrap();
    let node = c.node_with("n1", agent_args).unwrap();
    node.netns
        .exec(&["ip", "addr", "add", &format!("{NODE_ADDR}/32"), "dev", "lo"])
        .unwrap();
    let client = node.add_pod("client").unwrap();
    let backends: Vec<Pod> = ["b1", "b2"]
        .into_iter()
        .map(|name| {
            let mut p = node.add_pod(name).unwrap();
            p.serve(8080).unwrap();
            p
        })
        .collect();
    c.write_manifest(&objects(&backends.iter().collect::<Vec<_>>()))
        .unwrap();
    wait_for(
        &node,
        "the Services programmed",
        Duration::from_secs(5),
        || {
            answer(
                &node
                    .sock_client(&["tcp", &VIP.to_string(), "80", "?"])
                    .unwrap(),
            )
            .is_some()
        },
    );
    (node, client, backends)
}

fn wait_for(node: &Node, what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < within,
            "{what}: not within {within:?}\n{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// The `key=` field of a ferry-sock-client line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
}

fn answer(line: &str) -> Option<String> {
    field(line, "answer").map(str::to_string)
}

fn ms(line: &str) -> u64 {
    field(line, "ms")
        .and_then(|m| m.parse().ok())
        .unwrap_or(u64::MAX)
}

fn names(lines: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    lines.into_iter().filter_map(|l| answer(&l)).collect()
}

fn both() -> BTreeSet<String> {
    ["b1", "b2"].iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_nodes_own_processes_reach_services_and_see_the_service_as_their_peer() {
    let c = cluster();
    let (node, _client, _backends) = setup(&c, &[]);
    let vip = VIP.to_string();
    let tc_translated = counted(&node, "translated");

    // TCP: every backend reached, getpeername says the ClusterIP.
    let tcp: Vec<String> = (0..30)
        .map(|_| node.sock_client(&["tcp", &vip, "80", "?"]).unwrap())
        .collect();
    assert_eq!(names(tcp.clone()), both(), "{tcp:?}");
    for line in &tcp {
        assert_eq!(field(line, "peer"), Some("10.96.0.10:80"), "{line}");
    }

    // UDP, DNS-style: an unconnected socket's recvfrom reports the
    // ClusterIP as the answer's source; a connected one's peer is it too.
    let udp: Vec<String> = (0..30)
        .map(|_| node.sock_client(&["udp", &vip, "53", "?"]).unwrap())
        .collect();
    assert_eq!(names(udp.clone()), both(), "{udp:?}");
    for line in &udp {
        assert_eq!(field(line, "from"), Some("10.96.0.10:53"), "{line}");
    }
    let connected = node.sock_client(&["udpc", &vip, "53", "?"]).unwrap();
    assert_eq!(
        field(&connected, "peer"),
        Some("10.96.0.10:53"),
        "{connected}"
    );
    assert_eq!(
        field(&connected, "from"),
        Some("10.96.0.10:53"),
        "{connected}"
    );

    // NodePort on the node's address and on 127.0.0.1, TCP and UDP.
    let port = NODE_PORT.to_string();
    for addr in [NODE_ADDR.to_string(), "127.0.0.1".to_string()] {
        let tcp = node.sock_client(&["tcp", &addr, &port, "?"]).unwrap();
        assert!(answer(&tcp).is_some(), "NodePort {addr}:{port}: {tcp}");
        assert_eq!(field(&tcp, "peer"), Some(format!("{addr}:{port}").as_str()));
        let udp = node.sock_client(&["udp", &addr, &port, "?"]).unwrap();
        assert!(answer(&udp).is_some(), "NodePort {addr}:{port}/UDP: {udp}");
        assert_eq!(field(&udp, "from"), Some(format!("{addr}:{port}").as_str()));
    }

    // No endpoints: refused at once, TCP at connect(), UDP at the send.
    let empty = EMPTY_VIP.to_string();
    let tcp = node.sock_client(&["tcp", &empty, "80", "?"]).unwrap();
    assert!(
        tcp.starts_with(&format!("{ECONNREFUSED} step=connect")),
        "{tcp}"
    );
    assert!(ms(&tcp) < 100, "not at once: {tcp}");
    let udp = node.sock_client(&["udp", &empty, "53", "?"]).unwrap();
    assert!(
        udp.starts_with(&format!("{ECONNREFUSED} step=send")),
        "{udp}"
    );

    // All of it at connect(): tc never saw a Service address.
    assert_eq!(counted(&node, "translated"), tc_translated);
    assert!(counted(&node, "sock_translated") >= 60);
    assert!(counted(&node, "sock_rejected_no_endpoints") >= 2);
    assert!(counted(&node, "sock_reverse_translated") >= 30);
}

#[test]
fn a_backend_change_reaches_the_next_connect_within_a_second() {
    let c = cluster();
    let (node, _client, mut backends) = setup(&c, &[]);
    let vip = VIP.to_string();
    let mut b3 = node.add_pod("b3").unwrap();
    b3.serve(8080).unwrap();
    backends.push(b3);
    c.write_manifest(&objects(&[&backends[2]])).unwrap();
    let took = wait_for(&node, "b3 reached", Duration::from_secs(1), || {
        answer(&node.sock_client(&["tcp", &vip, "80", "?"]).unwrap()).as_deref() == Some("b3")
    });
    println!("the next connect reached the new backend after {took:?}");
    let seen = names((0..10).map(|_| node.sock_client(&["tcp", &vip, "80", "?"]).unwrap()));
    assert_eq!(seen, BTreeSet::from(["b3".to_string()]));
}

#[test]
fn restarts_and_socket_lb_off_keep_connections_and_fall_back_to_tc() {
    let c = cluster();
    let (mut node, client, _backends) = setup(&c, &[]);
    let vip = VIP.to_string();
    let mut held = node
        .spawn_sock_client(&["tcp-held", &vip, "80", "?"])
        .unwrap();
    let mut held_in = held.stdin.take().unwrap();
    let mut held_out = BufReader::new(held.stdout.take().unwrap()).lines();
    let mut ask_held = move || {
        writeln!(held_in, "again").unwrap();
        held_out.next().unwrap().unwrap()
    };
    // (The first answer was printed at connect.)
    let first = ask_held();
    let backend = answer(&first).unwrap_or_else(|| panic!("{first}"));

    // Killed agent: the pinned links keep translating.
    node.kill_agent().unwrap();
    let line = node.sock_client(&["tcp", &vip, "80", "?"]).unwrap();
    assert!(answer(&line).is_some(), "without the agent: {line}");
    node.start_agent().unwrap();
    wait_for(
        &node,
        "the restarted agent synced",
        Duration::from_secs(10),
        || node.agent_log().matches(" synced ").count() >= 2,
    );
    let line = node.sock_client(&["udp", &vip, "53", "?"]).unwrap();
    assert_eq!(
        field(&line, "from"),
        Some("10.96.0.10:53"),
        "after a restart: {line}"
    );
    assert_eq!(answer(&ask_held()), Some(backend.clone()));

    // --socket-lb off: the links go. The node's own process is then not
    // translated at all: the node has no route to the service range, so
    // connect() fails at once (ENETUNREACH).
    node.kill_agent().unwrap();
    node.set_agent_args(&["--socket-lb", "off"]);
    node.start_agent().unwrap();
    wait_for(&node, "socket LB detached", Duration::from_secs(10), || {
        node.sock_client(&["tcp", &vip, "80", "?"])
            .unwrap()
            .starts_with("error=101 step=connect")
    });
    // A connection translated at connect() keeps its backend: it needs no
    // state after connect().
    assert_eq!(answer(&ask_held()), Some(backend));
    // Pods still reach the Service, through tc.
    let tc_before = counted(&node, "translated");
    let line = client.sock_client(&["tcp", &vip, "80", "?"]).unwrap();
    assert_eq!(field(&line, "peer"), Some("10.96.0.10:80"), "{line}");
    assert!(tcp_whoami(&client, VIP, 80).is_ok());
    assert!(counted(&node, "translated") > tc_before);
    let _ = held.kill();
    let _ = held.wait();
}

#[test]
fn with_socket_lb_on_a_pods_connection_is_translated_at_connect_not_by_tc() {
    let c = cluster();
    let vip = VIP.to_string();

    // host-only (the default): a pod's process goes through tc.
    {
        let (node, client, _backends) = setup(&c, &[]);
        let before = (
            counted(&node, "translated"),
            counted(&node, "sock_translated"),
        );
        let line = client.sock_client(&["tcp", &vip, "80", "?"]).unwrap();
        assert!(answer(&line).is_some(), "{line}");
        assert!(counted(&node, "translated") > before.0);
        assert_eq!(counted(&node, "sock_translated"), before.1);
    }

    // (A cluster of its own: a node's directory outlives the node.)
    let c = cluster();
    let (node, client, _backends) = setup(&c, &["--socket-lb", "on"]);
    let tc_before = counted(&node, "translated");
    let sock_before = counted(&node, "sock_translated");
    let tcp: Vec<String> = (0..20)
        .map(|_| client.sock_client(&["tcp", &vip, "80", "?"]).unwrap())
        .collect();
    assert_eq!(names(tcp.clone()), both(), "{tcp:?}");
    assert!(
        tcp.iter()
            .all(|l| field(l, "peer") == Some("10.96.0.10:80")),
        "{tcp:?}"
    );
    let udp = client.sock_client(&["udp", &vip, "53", "?"]).unwrap();
    assert_eq!(field(&udp, "from"), Some("10.96.0.10:53"), "{udp}");
    // The packets carried the backend's address already: tc translated
    // none of them.
    assert_eq!(counted(&node, "translated"), tc_before);
    assert!(counted(&node, "sock_translated") >= sock_before + 21);
    // A pod's 127.0.0.1 is its own: no NodePort there.
    let line = client
        .sock_client(&["tcp", "127.0.0.1", &NODE_PORT.to_string(), "?"])
        .unwrap();
    assert!(
        line.starts_with(&format!("{ECONNREFUSED} step=connect")),
        "{line}"
    );
    // No endpoints: refused at connect(), by the socket program.
    let refused = counted(&node, "sock_rejected_no_endpoints");
    let line = client
        .sock_client(&["tcp", &EMPTY_VIP.to_string(), "80", "?"])
        .unwrap();
    assert!(
        line.starts_with(&format!("{ECONNREFUSED} step=connect")),
        "{line}"
    );
    assert_eq!(counted(&node, "sock_rejected_no_endpoints"), refused + 1);
}

/// Each line a `udpc-loop` client prints, with when the test read it.
fn timed_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<(Instant, String)> {
    let out = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                return;
            }
        }
    });
    rx
}

/// Where a client runs: the node's own processes or a pod's.
trait Client {
    fn ask(&self, args: &[&str]) -> String;
    fn spawn(&self, args: &[&str]) -> std::process::Child;
}

impl Client for Node {
    fn ask(&self, args: &[&str]) -> String {
        self.sock_client(args).unwrap()
    }
    fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.spawn_sock_client(args).unwrap()
    }
}

impl Client for Pod {
    fn ask(&self, args: &[&str]) -> String {
        self.sock_client(args).unwrap()
    }
    fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.spawn_sock_client(args).unwrap()
    }
}

/// A connected UDP socket of `client` translated to b1, and one that
/// dialled b1's pod IP itself; b1 leaves the Service: the first gets an
/// error within a second and a fresh connect reaches b2, the second keeps
/// b1.
fn a_departed_backends_socket_gets_an_error(
    c: &Cluster,
    node: &Node,
    client: &dyn Client,
    backends: &[Pod],
) {
    let (b1, b2) = (&backends[0], &backends[1]);
    let vip = VIP.to_string();
    // Only b1 behind the Service, so the connected socket's backend is
    // known.
    c.write_manifest(&objects(&[b1])).unwrap();
    wait_for(node, "only b1 drawn", Duration::from_secs(5), || {
        let seen = names((0..10).map(|_| client.ask(&["udpc", &vip, "53", "?"])));
        seen == BTreeSet::from(["b1".to_string()])
    });
    // One socket connected to the ClusterIP (translated to b1), one
    // connected to b1's pod IP itself (not translated).
    let mut via_service = client.spawn(&["udpc-loop", &vip, "53", "?", "20"]);
    let mut direct = client.spawn(&["udpc-loop", &b1.ip.to_string(), "8080", "?", "20"]);
    let service_lines = timed_lines(&mut via_service);
    let direct_lines = timed_lines(&mut direct);
    let second = Duration::from_secs(1);
    for (what, lines) in [
        ("via the Service", &service_lines),
        ("direct", &direct_lines),
    ] {
        let (_, line) = lines.recv_timeout(second).unwrap();
        assert_eq!(answer(&line).as_deref(), Some("b1"), "{what}: {line}");
    }
    std::thread::sleep(Duration::from_millis(300));
    while service_lines.try_recv().is_ok() {}
    while direct_lines.try_recv().is_ok() {}

    // b1's endpoint leaves the slice; b2 serves instead. The pod b1 still
    // answers: without termination the socket would go on reaching it.
    let changed = Instant::now();
    c.write_manifest(&objects(&[b2])).unwrap();
    let (error_at, error) = loop {
        let (at, line) = service_lines
            .recv_timeout(Duration::from_secs(2))
            .unwrap_or_else(|_| panic!("no line from the client\n{}", node.agent_log()));
        if line.starts_with("error=") {
            break (at, line);
        }
        assert_eq!(answer(&line).as_deref(), Some("b1"), "{line}");
        assert!(
            changed.elapsed() < Duration::from_secs(3),
            "the socket was not terminated: {line}\n{}",
            node.agent_log()
        );
    };
    let took = error_at - changed;
    println!("the connected socket saw `{error}` {took:?} after the endpoint left");
    // ECONNABORTED on a pending or the next recv; a send on the socket,
    // which the kernel disconnected, fails with EDESTADDRREQ, and the
    // ECONNABORTED is pending.
    assert!(
        error.starts_with("error=103 ")
            || (error.starts_with("error=89 step=send") && error.ends_with(" so_error=103")),
        "{error}"
    );
    assert!(took < second, "{error} after {took:?}");
    node.wait_for_log(
        "terminated_sockets=1",
        Duration::from_secs(2),
        "the socket was terminated, but no sync says so",
    );

    // A fresh connect reaches the new backend.
    let fresh = client.ask(&["udpc", &vip, "53", "?"]);
    assert_eq!(answer(&fresh).as_deref(), Some("b2"), "{fresh}");

    // The socket that dialled b1 itself was not terminated.
    let since = Instant::now();
    while since.elapsed() < Duration::from_millis(500) {
        let (at, line) = direct_lines.recv_timeout(second).unwrap();
        if at > error_at {
            assert_eq!(answer(&line).as_deref(), Some("b1"), "direct: {line}");
        }
    }
    for mut child in [via_service, direct] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn a_connected_udp_socket_whose_backend_leaves_gets_an_error_within_a_second() {
    let c = cluster();
    let (node, _client, backends) = setup(&c, &[]);
    a_departed_backends_socket_gets_an_error(&c, &node, &node, &backends);
}

/// ferry-cni's records of the pods' network namespaces on `node`.
fn netns_records(node: &Node) -> usize {
    std::fs::read_dir(node.cni_data_dir.join("ferry/netns"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn with_socket_lb_on_a_pods_connected_udp_socket_whose_backend_leaves_gets_an_error_within_a_second()
 {
    let c = cluster();
    let (node, client, backends) = setup(&c, &["--socket-lb", "on"]);
    // ferry-cni recorded each pod's namespace (client, b1, b2); DEL
    // removes the record.
    assert_eq!(netns_records(&node), 3);
    let extra = node.add_pod("extra").unwrap();
    assert_eq!(netns_records(&node), 4);
    extra.cni_del().unwrap();
    assert_eq!(netns_records(&node), 3);
    drop(extra);
    // The client is a process of the pod (its namespace and cgroup), so
    // its sockets are translated at connect().
    let sock_before = counted(&node, "sock_translated");
    a_departed_backends_socket_gets_an_error(&c, &node, &client, &backends);
    assert!(counted(&node, "sock_translated") > sock_before);
}
