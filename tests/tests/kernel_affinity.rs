//! sessionAffinity ClientIP in the kernel, through BPF_PROG_TEST_RUN on
//! exact bytes: a client's new flows keep going to one backend while it
//! comes back within the timeout; an expired entry, or one whose backend
//! left its slot, draws again; the agent's service table renumbers entries
//! when the backend set changes, drops those of backends that left, and all
//! of them when affinity is switched off. Through the from-pod program
//! (ClusterIP) and the uplink's programs (a NodePort from outside, tc and
//! XDP).
//!
//! Draws are random, so "goes to one backend" is asserted over many flows
//! among three backends: a datapath without affinity passes such a check
//! with a chance of 3^-(flows-1), never in practice.
use std::{collections::BTreeSet, net::Ipv4Addr};

use ferry_agent::maps::{AffinityTable, NodeMap, Routes, services::FrontendOptions};
use ferry_common::{
    AffinityEntry, AffinityKey, Backend, CT_DIR_ORIGINAL, CtKey, PROTO_TCP, ROUTE_MODE_NATIVE,
    Route, SCOPE_EXTERNAL, ServiceKey, affinity::DEFAULT_TIMEOUT_S,
};
use ferry_tests::{
    fixture::{Kernel, TC_ACT_OK, backend, frontend},
    packet::{Packet, TCP_SYN},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const PODS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 244, 2, 11),
    Ipv4Addr::new(10, 244, 2, 12),
    Ipv4Addr::new(10, 244, 2, 13),
];
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 11);
const NODE_PORT: u16 = 30080;
const FLOWS: u16 = 24;

fn backends(pods: &[Ipv4Addr]) -> Vec<Backend> {
    pods.iter().map(|p| backend(*p, 8080)).collect()
}

fn affinity(timeout_s: u32) -> FrontendOptions {
    FrontendOptions {
        affinity_timeout_s: timeout_s,
        source_ranges: None,
    }
}

/// The ClusterIP VIP:80 over three pods, with `options`; its service id.
fn cluster_ip(k: &mut Kernel, pods: &[Ipv4Addr], options: &FrontendOptions) -> u32 {
    let key = frontend(VIP, 80, PROTO_TCP);
    k.services
        .upsert_with_options(key, &backends(pods), "default/web:http", 0, options)
        .unwrap()
}

/// A pod client's SYN to VIP:80 from `port`; the backend it was sent to.
fn connect(k: &mut Kernel, client: Ipv4Addr, port: u16) -> Ipv4Addr {
    let syn = Packet::tcp((client, port), (VIP, 80), TCP_SYN, b"");
    let (verdict, out) = k.run(&syn.bytes());
    assert_eq!(verdict, TC_ACT_OK, "translated and handed on");
    let to = Ipv4Addr::new(out[30], out[31], out[32], out[33]);
    // Exactly the SYN, translated: checksums right, nothing else touched.
    assert_eq!(out, syn.with_dst(to, 8080).bytes(), "{client}:{port}");
    to
}

/// The backends `client`'s next `FLOWS` new flows go to.
fn spread(k: &mut Kernel, client: Ipv4Addr, first_port: u16) -> BTreeSet<Ipv4Addr> {
    (0..FLOWS)
        .map(|i| connect(k, client, first_port + i))
        .collect()
}

fn client(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, 100 + i)
}

fn entry_of(k: &Kernel, service_id: u32, client: Ipv4Addr) -> Option<AffinityEntry> {
    let table = AffinityTable::open(k.pin_dir()).unwrap();
    let key = AffinityKey {
        service_id,
        client_addr: client.octets(),
    };
    table
        .entries()
        .unwrap()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, e)| e)
}

fn set_entry(k: &Kernel, service_id: u32, client: Ipv4Addr, entry: AffinityEntry) {
    let key = AffinityKey {
        service_id,
        client_addr: client.octets(),
    };
    AffinityTable::open(k.pin_dir())
        .unwrap()
        .set(key, entry)
        .unwrap();
}

fn now_ns() -> u64 {
    ferry_agent::maps::monotonic_now_ns()
}

#[test]
fn a_clients_new_flows_keep_one_backend_and_clients_spread() {
    let mut k = Kernel::load();
    let id = cluster_ip(&mut k, &PODS, &affinity(DEFAULT_TIMEOUT_S));
    let mut chosen = BTreeSet::new();
    for i in 0..16 {
        let went = spread(&mut k, client(i), 40_000);
        assert_eq!(went.len(), 1, "client {} went to {went:?}", client(i));
        let to = *went.iter().next().unwrap();
        let e = entry_of(&k, id, client(i)).expect("the client's affinity is recorded");
        assert_eq!((e.backend_addr, e.backend_port), (to.octets(), 8080));
        assert_eq!(
            PODS[e.slot as usize], to,
            "the entry names the backend's slot"
        );
        chosen.insert(to);
    }
    // Each client drew on its own: 16 clients on one backend is 3^-15.
    assert!(chosen.len() > 1, "every client went to {chosen:?}");
}

#[test]
fn without_affinity_one_clients_flows_spread() {
    let mut k = Kernel::load();
    let id = cluster_ip(&mut k, &PODS, &FrontendOptions::default());
    let went = spread(&mut k, client(0), 40_000);
    assert!(went.len() > 1, "every flow went to {went:?}");
    assert!(entry_of(&k, id, client(0)).is_none(), "nothing recorded");
}

#[test]
fn an_entry_within_its_timeout_holds_and_an_expired_one_draws_again() {
    let mut k = Kernel::load();
    let id = cluster_ip(&mut k, &PODS, &affinity(10));
    let second = AffinityEntry {
        last_used_ns: 0,
        backend_addr: PODS[1].octets(),
        backend_port: 8080,
        slot: 1,
    };
    // Clients last seen 9 s ago (timeout 10 s): all kept on the second pod,
    // their entries refreshed.
    for i in 0..12 {
        let entry = AffinityEntry {
            last_used_ns: now_ns() - 9_000_000_000,
            ..second
        };
        set_entry(&k, id, client(i), entry);
        let before = now_ns();
        assert_eq!(connect(&mut k, client(i), 50_000), PODS[1]);
        let e = entry_of(&k, id, client(i)).unwrap();
        assert!(e.last_used_ns >= before, "refreshed by the new flow");
    }
    // Clients last seen 11 s ago: each draws again (12 of them all landing
    // on the second pod again is 3^-12).
    let mut went = BTreeSet::new();
    for i in 12..24 {
        let entry = AffinityEntry {
            last_used_ns: now_ns() - 11_000_000_000,
            ..second
        };
        set_entry(&k, id, client(i), entry);
        let to = connect(&mut k, client(i), 50_000);
        let e = entry_of(&k, id, client(i)).unwrap();
        assert_eq!(e.backend_addr, to.octets(), "the new draw is recorded");
        went.insert(to);
    }
    assert!(went.len() > 1, "expired clients all stayed on {went:?}");
}

#[test]
fn an_entry_whose_backend_is_not_at_its_slot_is_not_trusted() {
    let mut k = Kernel::load();
    let id = cluster_ip(&mut k, &PODS, &affinity(DEFAULT_TIMEOUT_S));
    // A pod that is no backend (it left before the agent settled the
    // entries), or a backend named at a slot that holds another.
    let gone = Ipv4Addr::new(10, 244, 2, 99);
    for (i, (addr, slot)) in [(gone, 0), (PODS[1], 0), (PODS[2], 7)].iter().enumerate() {
        let entry = AffinityEntry {
            last_used_ns: now_ns(),
            backend_addr: addr.octets(),
            backend_port: 8080,
            slot: *slot,
        };
        set_entry(&k, id, client(i as u8), entry);
        let to = connect(&mut k, client(i as u8), 50_000);
        assert_ne!(to, gone);
        let e = entry_of(&k, id, client(i as u8)).unwrap();
        assert_eq!(PODS[e.slot as usize], to, "replaced by a trusted entry");
    }
}

#[test]
fn a_new_backend_set_keeps_clients_of_remaining_backends_and_frees_the_others() {
    let mut k = Kernel::load();
    let id = cluster_ip(&mut k, &PODS, &affinity(DEFAULT_TIMEOUT_S));
    let mut by_client = Vec::new();
    for i in 0..16 {
        by_client.push((client(i), connect(&mut k, client(i), 40_000)));
    }
    // The second pod leaves; the others change slots (third first).
    let remaining = [PODS[2], PODS[0]];
    assert_eq!(
        cluster_ip(&mut k, &remaining, &affinity(DEFAULT_TIMEOUT_S)),
        id
    );
    for (c, had) in &by_client {
        match entry_of(&k, id, *c) {
            Some(e) => {
                assert_eq!(e.backend_addr, had.octets());
                assert_eq!(remaining[e.slot as usize], *had, "renumbered");
                assert_eq!(connect(&mut k, *c, 41_000), *had, "kept");
            }
            None => {
                assert_eq!(
                    *had, PODS[1],
                    "only the departed backend's clients are freed"
                );
                assert!(remaining.contains(&connect(&mut k, *c, 41_000)));
            }
        }
    }
    // Switched off: every entry goes and flows spread again.
    cluster_ip(&mut k, &remaining, &FrontendOptions::default());
    let entries = AffinityTable::open(k.pin_dir()).unwrap().entries().unwrap();
    assert!(entries.is_empty(), "{entries:?}");
    assert!(spread(&mut k, client(0), 42_000).len() > 1);
    // Removing the frontend removes its clients' entries too.
    cluster_ip(&mut k, &remaining, &affinity(60));
    connect(&mut k, client(0), 43_000);
    k.services.remove(&frontend(VIP, 80, PROTO_TCP)).unwrap();
    assert!(entry_of(&k, id, client(0)).is_none());
}

/// A NodePort over pods on another node reached by native routing (the
/// XDP program's own case), with affinity.
fn node_port_with_remote_pods(k: &mut Kernel) -> u32 {
    NodeMap::open(k.pin_dir())
        .unwrap()
        .set_address(Some(NODE))
        .unwrap();
    let mut routes = std::collections::BTreeMap::new();
    routes.insert(
        "10.244.2.0/24".parse().unwrap(),
        Route {
            node_addr: [192, 168, 77, 12],
            mode: ROUTE_MODE_NATIVE,
            ifindex: 1,
            vni: 0,
        },
    );
    Routes::open(k.pin_dir()).unwrap().sync(&routes).unwrap();
    let key = ServiceKey {
        addr: NODE.octets(),
        port: NODE_PORT,
        protocol: PROTO_TCP,
        scope: SCOPE_EXTERNAL,
    };
    let options = affinity(DEFAULT_TIMEOUT_S);
    k.services
        .upsert_with_options(key, &backends(&PODS), "default/web:http", 0, &options)
        .unwrap()
}

/// The backend the conntrack entry of an external client's flow names.
fn tracked_backend(k: &Kernel, client: Ipv4Addr, port: u16) -> Ipv4Addr {
    let key = CtKey {
        src_addr: client.octets(),
        dst_addr: NODE.octets(),
        src_port: port,
        dst_port: NODE_PORT,
        protocol: PROTO_TCP,
        direction: CT_DIR_ORIGINAL,
        pad: [0; 2],
    };
    let entries = k.conntrack.entries().unwrap();
    let (_, entry) = entries
        .iter()
        .find(|(k, _)| *k == key)
        .expect("the flow is tracked");
    entry.nat_addr.into()
}

#[test]
fn an_outside_clients_flows_to_a_node_port_keep_one_backend_in_tc_and_xdp() {
    let mut k = Kernel::load();
    let id = node_port_with_remote_pods(&mut k);
    let outside = Ipv4Addr::new(192, 0, 2, 50);
    let mut went = BTreeSet::new();
    for i in 0..FLOWS {
        let port = 40_000 + i;
        let syn = Packet::tcp((outside, port), (NODE, NODE_PORT), TCP_SYN, b"");
        // Alternate the paths: XDP plans the flow (and, with no neighbour
        // to send to under a test run, leaves it to tc), or tc alone.
        if i % 2 == 0 {
            k.run_xdp(&syn.bytes());
        } else {
            k.run_from_network(&syn.bytes());
        }
        went.insert(tracked_backend(&k, outside, port));
    }
    assert_eq!(went.len(), 1, "went to {went:?}");
    let e = entry_of(&k, id, outside).unwrap();
    assert_eq!(Some(&Ipv4Addr::from(e.backend_addr)), went.iter().next());
}
