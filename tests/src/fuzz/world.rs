//! The node the fuzz runs against: its maps filled through the agent's own
//! map API as a node with local and remote backends, NodePorts, a
//! load-balancer IP fenced by source ranges, an externalIP, session
//! affinity, frontends without endpoints, service CIDRs and both routing
//! modes; then flows started by valid packets (both directions, so TCP
//! flows are established), whose tuples the generator reuses for replies,
//! later packets, fragments and ICMP errors.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use aya::maps::{Array, Map, MapData};
use ferry_agent::maps::{Endpoints, NodeMap, Routes, ServiceRanges, services::FrontendOptions};
use ferry_common::{
    Backend, Endpoint, MAP_MONITOR, MONITOR_DROPS, MONITOR_FLOWS, MonitorConfig, PROTO_TCP,
    PROTO_UDP, ROUTE_MODE_NATIVE, ROUTE_MODE_VXLAN, Route, SCOPE_CLUSTER_IP, SCOPE_EXTERNAL,
    SCOPE_EXTERNAL_FROM_PODS, SERVICE_FLAG_LOCAL_ONLY, SERVICE_RANGE_ALLOCATED,
    SERVICE_RANGE_UNALLOCATED, ServiceKey, ServiceRange,
};

use super::{Engine, Via};
use crate::{
    fixture::Kernel,
    packet::{Packet, TCP_ACK, TCP_SYN},
};

/// An address and a port.
pub type End = (Ipv4Addr, u16);

const fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

/// This node, on the uplink.
pub const NODE: Ipv4Addr = ip(192, 168, 77, 11);
/// A node reached by native routing (pod CIDR 10.244.2.0/24) and one by
/// VXLAN (10.244.3.0/24).
pub const NATIVE_NODE: Ipv4Addr = ip(192, 168, 77, 12);
pub const VXLAN_NODE: Ipv4Addr = ip(192, 168, 77, 13);
/// Routers on the path: between the nodes, and on an external client's side.
pub const ROUTERS: [Ipv4Addr; 2] = [ip(192, 168, 77, 1), ip(198, 51, 100, 1)];

/// This node's pods and their host-side veths. BPF_PROG_TEST_RUN puts
/// every skb on the loopback device (ifindex 1): pods on ifindex 1 send
/// "from their own veth", the others' addresses are borrowed.
pub const LOCAL_PODS: [(Ipv4Addr, u32); 5] = [
    (ip(10, 244, 1, 5), 1),
    (ip(10, 244, 1, 6), 9),
    (ip(10, 244, 1, 11), 1),
    (ip(10, 244, 1, 12), 12),
    (ip(10, 244, 1, 13), 1),
];
/// Pods that start flows (10.244.1.11 is a backend too: hairpin).
pub const POD_CLIENTS: [Ipv4Addr; 3] = [ip(10, 244, 1, 5), ip(10, 244, 1, 6), ip(10, 244, 1, 11)];
pub const REMOTE_PODS: [Ipv4Addr; 3] = [ip(10, 244, 2, 5), ip(10, 244, 2, 6), ip(10, 244, 3, 5)];
/// Clients outside the cluster: two inside the load balancer's source
/// ranges, two outside them.
pub const EXTERNAL_CLIENTS: [Ipv4Addr; 4] = [
    ip(192, 0, 2, 50),
    ip(192, 0, 2, 77),
    ip(203, 0, 113, 9),
    ip(198, 18, 7, 7),
];
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// Inside the service CIDR, held by no Service.
pub const UNALLOCATED: Ipv4Addr = ip(10, 96, 0, 99);
pub const LB_IP: Ipv4Addr = ip(198, 51, 100, 10);
pub const EXTERNAL_IP: Ipv4Addr = ip(203, 0, 113, 7);

const L11: Ipv4Addr = LOCAL_PODS[2].0;
const L12: Ipv4Addr = LOCAL_PODS[3].0;
const L13: Ipv4Addr = LOCAL_PODS[4].0;
const R25: Ipv4Addr = REMOTE_PODS[0];
const R26: Ipv4Addr = REMOTE_PODS[1];
const R35: Ipv4Addr = REMOTE_PODS[2];

/// Who reaches a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    Pods,
    Outside,
    Both,
}

/// One frontend (address, port, protocol) of a Service.
#[derive(Clone, Copy, Debug)]
pub struct Frontend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub protocol: u8,
    pub reach: Reach,
}

struct Service {
    name: &'static str,
    addr: Ipv4Addr,
    ports: &'static [(u16, u8)],
    reach: Reach,
    backends: &'static [End],
    flags: u8,
    affinity_s: u32,
    ranges: Option<&'static [&'static str]>,
}

const TCP: u8 = PROTO_TCP;
const UDP: u8 = PROTO_UDP;

const SERVICES: &[Service] = &[
    Service {
        name: "default/web:http",
        addr: ip(10, 96, 0, 10),
        ports: &[(80, TCP)],
        reach: Reach::Pods,
        backends: &[(L11, 8080), (L12, 8080), (R25, 8080), (R35, 8080)],
        flags: 0,
        affinity_s: 0,
        ranges: None,
    },
    Service {
        name: "kube-system/dns:dns",
        addr: ip(10, 96, 0, 20),
        ports: &[(53, UDP), (53, TCP)],
        reach: Reach::Pods,
        backends: &[(L13, 5353), (R26, 5353)],
        flags: 0,
        affinity_s: 0,
        ranges: None,
    },
    Service {
        name: "default/empty:http",
        addr: ip(10, 96, 0, 30),
        ports: &[(80, TCP), (53, UDP)],
        reach: Reach::Pods,
        backends: &[],
        flags: 0,
        affinity_s: 0,
        ranges: None,
    },
    Service {
        name: "default/sticky:https",
        addr: ip(10, 96, 0, 40),
        ports: &[(443, TCP)],
        reach: Reach::Pods,
        backends: &[(L11, 8443), (R25, 8443), (R35, 8443)],
        flags: 0,
        affinity_s: 10800,
        ranges: None,
    },
    Service {
        name: "default/web:nodeport",
        addr: NODE,
        ports: &[(30080, TCP), (30080, UDP)],
        reach: Reach::Both,
        backends: &[(L11, 8080), (R25, 8080), (R35, 8080)],
        flags: 0,
        affinity_s: 0,
        ranges: None,
    },
    Service {
        name: "default/local-elsewhere:nodeport",
        addr: NODE,
        ports: &[(30081, TCP)],
        reach: Reach::Outside,
        backends: &[(R25, 8080)],
        flags: SERVICE_FLAG_LOCAL_ONLY,
        affinity_s: 0,
        ranges: None,
    },
    Service {
        name: "default/local-here:nodeport",
        addr: NODE,
        ports: &[(30082, TCP)],
        reach: Reach::Outside,
        backends: &[(L12, 8080)],
        flags: SERVICE_FLAG_LOCAL_ONLY,
        affinity_s: 0,
        ranges: None,
    },
    Service {
        name: "default/empty:nodeport",
        addr: NODE,
        ports: &[(30090, UDP)],
        reach: Reach::Outside,
        backends: &[],
        flags: 0,
        affinity_s: 0,
        ranges: None,
    },
    Service {
        name: "default/sticky:nodeport",
        addr: NODE,
        ports: &[(30443, TCP)],
        reach: Reach::Outside,
        backends: &[(R25, 8443), (R26, 8443)],
        flags: 0,
        affinity_s: 60,
        ranges: None,
    },
    Service {
        name: "default/lb:http",
        addr: LB_IP,
        ports: &[(80, TCP)],
        reach: Reach::Both,
        backends: &[(L12, 8080), (R25, 8080)],
        flags: 0,
        affinity_s: 0,
        ranges: Some(&["192.0.2.0/25", "10.244.1.0/29"]),
    },
    Service {
        name: "default/ext:udp",
        addr: EXTERNAL_IP,
        ports: &[(8000, UDP)],
        reach: Reach::Both,
        backends: &[(R26, 8000), (L13, 8000)],
        flags: 0,
        affinity_s: 0,
        ranges: None,
    },
];

/// A flow the warm-up started, as each end knows it.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub protocol: u8,
    /// What the client sends: from `client` to `frontend`.
    pub client: End,
    pub frontend: End,
    /// What the backend gets: from `client_as` (the client, or this node
    /// and a source-NAT port) to `backend`.
    pub client_as: End,
    pub backend: End,
    /// Where the client's packets and the backend's arrive.
    pub client_via: Via,
    pub backend_via: Via,
}

pub struct World {
    pub frontends: Vec<Frontend>,
    pub flows: Vec<Flow>,
}

pub fn is_local_pod(addr: Ipv4Addr) -> bool {
    LOCAL_PODS.iter().any(|(a, _)| *a == addr)
}

/// Where a packet from `addr` arrives: a pod's veth, or the uplink.
pub fn via_for_sender(addr: Ipv4Addr) -> Via {
    if is_local_pod(addr) {
        Via::Pod
    } else {
        Via::Network
    }
}

/// The node's network namespace: forwarding on, this node's address on an
/// uplink (a veth whose peer stays here), the other nodes and the router
/// as permanent neighbours, routes to the other nodes' pods and a default
/// route. BPF_PROG_TEST_RUN's fib lookups (the thread's namespace, from its
/// loopback device) then find next hops, so XDP transmits what it
/// translates and tc redirects by fib, instead of every lookup failing and
/// the rewriting paths behind them never running. Nothing is sent: a test
/// run redirects nothing.
pub fn namespace() -> anyhow::Result<ferry_harness::Netns> {
    let ns = ferry_harness::Netns::create(&format!("fry-fuzz-{}", std::process::id()))?;
    let [router, _] = ROUTERS;
    let mut steps = vec![
        "sysctl -qw net.ipv4.ip_forward=1".to_string(),
        "ip link add up0 type veth peer name up1".into(),
        "ip link set up1 up".into(),
        "ip link set up0 up".into(),
        format!("ip addr add {NODE}/24 dev up0"),
    ];
    for (i, neighbour) in [router, NATIVE_NODE, VXLAN_NODE].iter().enumerate() {
        steps.push(format!(
            "ip neigh replace {neighbour} lladdr 02:00:00:00:77:{i:02x} dev up0 nud permanent"
        ));
    }
    steps.push(format!("ip route add default via {router}"));
    steps.push(format!("ip route add 10.244.2.0/24 via {NATIVE_NODE}"));
    steps.push(format!("ip route add 10.244.3.0/24 via {VXLAN_NODE}"));
    for step in steps {
        ns.exec(&step.split(' ').collect::<Vec<_>>())?;
    }
    Ok(ns)
}

/// Fill the maps of `k`.
pub fn fill(k: &mut Kernel) -> Vec<Frontend> {
    let pins = k.pin_dir().to_path_buf();
    NodeMap::open(&pins)
        .unwrap()
        .set_address(Some(NODE))
        .unwrap();
    let mut endpoints = Endpoints::open(&pins).unwrap();
    for (i, (addr, ifindex)) in LOCAL_PODS.iter().enumerate() {
        let last = addr.octets()[3];
        endpoints
            .insert(
                *addr,
                Endpoint {
                    ifindex: *ifindex,
                    flags: 0,
                    pod_mac: [0x0a, 0x58, 10, 244, 1, last],
                    host_mac: [0xee, 0xee, 0xee, 0xee, i as u8, last],
                },
            )
            .unwrap();
    }
    let mut routes = BTreeMap::new();
    routes.insert(
        "10.244.2.0/24".parse().unwrap(),
        Route {
            node_addr: NATIVE_NODE.octets(),
            mode: ROUTE_MODE_NATIVE,
            ifindex: 1,
            vni: 0,
        },
    );
    routes.insert(
        "10.244.3.0/24".parse().unwrap(),
        Route {
            node_addr: VXLAN_NODE.octets(),
            mode: ROUTE_MODE_VXLAN,
            ifindex: 1,
            vni: 7,
        },
    );
    Routes::open(&pins).unwrap().sync(&routes).unwrap();
    // Drop, reject and flow events on, as while `ferry-agent monitor` runs:
    // their path reads the packet too.
    let mut monitor: Array<MapData, MonitorConfig> =
        Map::Array(MapData::from_pin(pins.join(MAP_MONITOR)).unwrap())
            .try_into()
            .unwrap();
    monitor
        .set(
            0,
            MonitorConfig {
                flags: MONITOR_DROPS | MONITOR_FLOWS,
            },
            0,
        )
        .unwrap();
    let mut ranges = ServiceRanges::open(&pins).unwrap();
    ranges
        .insert(
            &SERVICE_CIDR.parse().unwrap(),
            ServiceRange {
                kind: SERVICE_RANGE_UNALLOCATED,
            },
        )
        .unwrap();

    let mut frontends = Vec::new();
    for s in SERVICES {
        let backends: Vec<Backend> = s
            .backends
            .iter()
            .map(|(a, p)| Backend {
                addr: a.octets(),
                port: *p,
                pad: [0; 2],
            })
            .collect();
        let options = FrontendOptions {
            affinity_timeout_s: s.affinity_s,
            source_ranges: s.ranges.map(|list| {
                list.iter()
                    .map(|r| r.parse().unwrap())
                    .collect::<BTreeSet<_>>()
            }),
        };
        let scopes: &[u8] = match s.reach {
            Reach::Pods => &[SCOPE_CLUSTER_IP],
            Reach::Outside => &[SCOPE_EXTERNAL],
            Reach::Both => &[SCOPE_EXTERNAL, SCOPE_EXTERNAL_FROM_PODS],
        };
        for &(port, protocol) in s.ports {
            for &scope in scopes {
                let key = ServiceKey {
                    addr: s.addr.octets(),
                    port,
                    protocol,
                    scope,
                };
                k.services
                    .upsert_with_options(key, &backends, s.name, s.flags, &options)
                    .unwrap();
            }
            frontends.push(Frontend {
                addr: s.addr,
                port,
                protocol,
                reach: s.reach,
            });
        }
        if s.reach == Reach::Pods {
            ranges
                .insert(
                    &format!("{}/32", s.addr).parse().unwrap(),
                    ServiceRange {
                        kind: SERVICE_RANGE_ALLOCATED,
                    },
                )
                .unwrap();
        }
    }
    frontends
}

/// A flow's first packet from `client` to `fe`.
fn opening(protocol: u8, client: End, fe: End) -> Packet {
    if protocol == PROTO_TCP {
        Packet::tcp(client, fe, TCP_SYN, b"")
    } else {
        Packet::udp(client, fe, b"\x12\x34\x01\x00hello")
    }
}

/// The (source, destination) tuple of a TCP/UDP frame.
fn tuple(frame: &[u8]) -> Option<(End, End)> {
    let ip = super::check::Ip::read(frame, super::check::ETH_HLEN).ok()?;
    let l4 = ip.l4();
    let port = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    (frame.len() >= l4 + 4).then(|| {
        (
            (Ipv4Addr::from(ip.src), port(l4)),
            (Ipv4Addr::from(ip.dst), port(l4 + 2)),
        )
    })
}

/// Start flows from every kind of client to every frontend it reaches,
/// answered by their backends, and keep those that were translated.
pub fn warm_up(engine: &mut Engine, frontends: Vec<Frontend>) -> World {
    let mut flows = Vec::new();
    let mut port = 20_000u16;
    for fe in &frontends {
        let mut clients: Vec<(Ipv4Addr, Via)> = Vec::new();
        if fe.reach != Reach::Outside {
            clients.extend(POD_CLIENTS.iter().map(|a| (*a, Via::Pod)));
        }
        if fe.reach != Reach::Pods {
            clients.extend(EXTERNAL_CLIENTS.iter().map(|a| (*a, Via::Network)));
        }
        for (client, client_via) in clients {
            for _ in 0..2 {
                port += 1;
                let c = (client, port);
                let f = (fe.addr, fe.port);
                let first = opening(fe.protocol, c, f);
                let Some(out) = engine.send(&first.bytes(), client_via, "warm-up") else {
                    continue;
                };
                let Some((client_as, backend)) = tuple(&out) else {
                    continue;
                };
                if backend == f {
                    // Not translated (rejected, passed): no flow.
                    continue;
                }
                let backend_via = via_for_sender(backend.0);
                let answer = if fe.protocol == PROTO_TCP {
                    Packet::tcp(backend, client_as, TCP_SYN | TCP_ACK, b"")
                } else {
                    Packet::udp(backend, client_as, b"\x12\x34\x81\x80answer")
                };
                engine.send(&answer.bytes(), backend_via, "warm-up");
                if fe.protocol == PROTO_TCP {
                    let ack = Packet::tcp(c, f, TCP_ACK, b"");
                    engine.send(&ack.bytes(), client_via, "warm-up");
                }
                flows.push(Flow {
                    protocol: fe.protocol,
                    client: c,
                    frontend: f,
                    client_as,
                    backend,
                    client_via,
                    backend_via,
                });
            }
        }
    }
    World { frontends, flows }
}
