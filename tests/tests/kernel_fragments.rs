//! IPv4 fragments of Service flows in the kernel, through
//! BPF_PROG_TEST_RUN on exact bytes: the first fragment is translated like
//! a whole packet and its ports recorded in `ferry_frags`; the later
//! fragments (no L4 header) get the same addresses, IPv4 checksum right
//! and payload untouched, in any order; a later fragment that comes before
//! any first fragment is dropped when it is for the service range; replies
//! come back the same way; everything else passes as it came.
use std::{collections::BTreeSet, net::Ipv4Addr};

use aya::maps::{HashMap, Map, MapData};
use ferry_agent::maps::{Endpoints, NodeMap, ServiceRanges};
use ferry_common::{
    CT_DIR_ORIGINAL, CT_DIR_REPLY, Endpoint, FragKey, FragPorts, MAP_FRAGMENTS, PROTO_UDP,
    SCOPE_EXTERNAL, SERVICE_RANGE_ALLOCATED, SERVICE_RANGE_UNALLOCATED, ServiceKey, ServiceRange,
    outcome,
};
use ferry_tests::{
    fixture::{Kernel, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, backend, frontend},
    packet::Packet,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const WEB_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
/// DNS's backends: four, so that a fragment sent to a backend of its own
/// draw would show.
const DNS_PODS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(10, 244, 1, 21),
    Ipv4Addr::new(10, 244, 1, 22),
    Ipv4Addr::new(10, 244, 1, 23),
    Ipv4Addr::new(10, 244, 1, 24),
];
const DNS_PORT: u16 = 5353;
/// IP payload bytes per fragment: a 2,000-byte datagram makes three.
const CHUNK: usize = 800;

/// DNS (10.96.0.20:53/UDP, four backends) and web (10.96.0.10:80/UDP, one),
/// with the service CIDR 10.96.0.0/16 as `--service-cidr` writes it.
fn kernel() -> Kernel {
    let mut k = Kernel::load();
    let dns: Vec<_> = DNS_PODS.iter().map(|p| backend(*p, DNS_PORT)).collect();
    k.services
        .upsert(frontend(DNS_VIP, 53, PROTO_UDP), &dns)
        .unwrap();
    k.services
        .upsert(frontend(WEB_VIP, 80, PROTO_UDP), &[backend(WEB_POD, 8080)])
        .unwrap();
    let mut ranges = ServiceRanges::open(k.pin_dir()).unwrap();
    let kind = |kind| ServiceRange { kind };
    ranges
        .insert(
            &"10.96.0.0/16".parse().unwrap(),
            kind(SERVICE_RANGE_UNALLOCATED),
        )
        .unwrap();
    for vip in ["10.96.0.20/32", "10.96.0.10/32"] {
        ranges
            .insert(&vip.parse().unwrap(), kind(SERVICE_RANGE_ALLOCATED))
            .unwrap();
    }
    k
}

/// A UDP datagram of `len` payload bytes in a pattern that differs per
/// datagram (`seed`), so a misplaced fragment cannot compare equal.
fn datagram(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), ident: u16, len: usize) -> Packet {
    let payload: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(ident as u8))
        .collect();
    let mut p = Packet::udp(src, dst, &payload);
    p.ident = ident;
    p
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Run `input` through the from-pod program; assert the verdict, the exact
/// output bytes and that exactly `outcome`'s counter rose by one.
fn check(k: &mut Kernel, what: &str, input: &[u8], verdict: u32, bytes: &[u8], outcome: u32) {
    let before = k.counters();
    let (got, out) = k.run(input);
    assert_eq!(got, verdict, "{what}: verdict");
    assert_eq!(
        hex(&out),
        hex(bytes),
        "{what}: output bytes (got vs expected)"
    );
    let after = k.counters();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let want = b.packets + u64::from(i as u32 == outcome);
        assert_eq!(a.packets, want, "{what}: counter {}", outcome::NAMES[i]);
    }
}

/// The backend a translated frame went to (its destination address).
fn destination(frame: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33])
}

/// Every record of `ferry_frags`.
fn fragment_records(k: &Kernel) -> Vec<(FragKey, FragPorts)> {
    let data = MapData::from_pin(k.pin_dir().join(MAP_FRAGMENTS)).unwrap();
    let map: HashMap<MapData, FragKey, FragPorts> =
        HashMap::try_from(Map::from_map_data(data).unwrap()).unwrap();
    map.iter().map(Result::unwrap).collect()
}

/// Send `request`'s first fragment; assert it went to one of DNS's
/// backends, translated exactly, and return that backend with the
/// translated datagram's fragments.
fn first_fragment_to_dns(k: &mut Kernel, request: &Packet) -> (Ipv4Addr, Vec<Vec<u8>>) {
    let frags = request.fragments(CHUNK);
    let (verdict, out) = k.run(&frags[0]);
    assert_eq!(verdict, TC_ACT_OK, "first fragment: verdict");
    let chosen = destination(&out);
    assert!(
        DNS_PODS.contains(&chosen),
        "first fragment went to {chosen}"
    );
    let translated = request.clone().with_dst(chosen, DNS_PORT).fragments(CHUNK);
    assert_eq!(
        hex(&out),
        hex(&translated[0]),
        "first fragment: DNAT with the UDP checksum updated for the whole datagram"
    );
    (chosen, translated)
}

#[test]
fn fragments_of_a_datagram_all_reach_the_first_fragments_backend() {
    let mut k = kernel();
    let request = datagram((CLIENT, 40000), (DNS_VIP, 53), 0x1001, 2000);
    let frags = request.fragments(CHUNK);
    assert_eq!(frags.len(), 3, "first, middle, last");

    let before = k.counters()[outcome::TRANSLATED as usize].packets;
    let (_, translated) = first_fragment_to_dns(&mut k, &request);
    assert_eq!(
        k.counters()[outcome::TRANSLATED as usize].packets,
        before + 1
    );
    // Recorded under the datagram as it arrived, with the ports before
    // translation.
    let records = fragment_records(&k);
    assert_eq!(records.len(), 1, "{records:?}");
    let (key, ports) = records[0];
    assert_eq!(
        (key.src_addr, key.dst_addr, key.ip_id, key.protocol),
        (CLIENT.octets(), DNS_VIP.octets(), 0x1001, PROTO_UDP)
    );
    assert_eq!(
        (ports.src_port, ports.dst_port, ports.direction),
        (40000, 53, CT_DIR_ORIGINAL)
    );

    for (i, name) in [(1, "middle"), (2, "last")] {
        check(
            &mut k,
            &format!("{name} fragment"),
            &frags[i],
            TC_ACT_OK,
            &translated[i],
            outcome::TRANSLATED,
        );
    }
    assert_eq!(
        k.conntrack.entries().unwrap().len(),
        2,
        "one flow, whatever the number of fragments"
    );
}

#[test]
fn fragments_out_of_order_reach_the_same_backend() {
    let mut k = kernel();
    // Several datagrams, so a later fragment translated by a draw of its
    // own would land elsewhere at least once.
    for n in 0..4u16 {
        let request = datagram((CLIENT, 41000 + n), (DNS_VIP, 53), 0x2000 + n, 2000);
        let frags = request.fragments(CHUNK);
        let (_, translated) = first_fragment_to_dns(&mut k, &request);
        for (i, name) in [
            (2, "last, before the middle"),
            (1, "middle, after the last"),
        ] {
            check(
                &mut k,
                &format!("datagram {n}: {name}"),
                &frags[i],
                TC_ACT_OK,
                &translated[i],
                outcome::TRANSLATED,
            );
        }
    }
}

#[test]
fn a_later_fragment_before_its_first_is_dropped_and_counted() {
    let mut k = kernel();
    let request = datagram((CLIENT, 40000), (DNS_VIP, 53), 0x3001, 2000);
    let frags = request.fragments(CHUNK);
    check(
        &mut k,
        "last fragment before any first fragment",
        &frags[2],
        TC_ACT_SHOT,
        &frags[2],
        outcome::DROP_FRAGMENT_UNTRACKED,
    );
    // An unallocated address of the service CIDR: no backend either.
    let stray = datagram(
        (CLIENT, 40000),
        (Ipv4Addr::new(10, 96, 0, 99), 53),
        0x3002,
        2000,
    );
    let stray = stray.fragments(CHUNK);
    check(
        &mut k,
        "later fragment to an unallocated service address",
        &stray[1],
        TC_ACT_SHOT,
        &stray[1],
        outcome::DROP_FRAGMENT_UNTRACKED,
    );
    assert!(fragment_records(&k).is_empty(), "nothing recorded");
    assert!(k.conntrack.entries().unwrap().is_empty(), "nothing tracked");

    // The first fragment still opens the flow, and what comes after it
    // follows (the dropped fragment is lost, as with Cilium: the receiver's
    // reassembly times out and the sender's retry goes through whole).
    let (_, translated) = first_fragment_to_dns(&mut k, &request);
    check(
        &mut k,
        "middle fragment after the first",
        &frags[1],
        TC_ACT_OK,
        &translated[1],
        outcome::TRANSLATED,
    );
}

#[test]
fn a_backends_fragmented_reply_is_translated_back() {
    let mut k = kernel();
    let request = datagram((CLIENT, 40000), (DNS_VIP, 53), 0x4001, 2000);
    let (chosen, translated) = first_fragment_to_dns(&mut k, &request);
    let _ = translated;
    // The backend echoes 8,000 bytes back: six fragments, out of order
    // after the first.
    let reply = datagram((chosen, DNS_PORT), (CLIENT, 40000), 0x9001, 8000);
    let frags = reply.fragments(1480);
    assert_eq!(frags.len(), 6);
    let back = reply.clone().with_src(DNS_VIP, 53).fragments(1480);
    check(
        &mut k,
        "reply's first fragment",
        &frags[0],
        TC_ACT_OK,
        &back[0],
        outcome::REVERSE_TRANSLATED,
    );
    let records = fragment_records(&k);
    let reply_record = records
        .iter()
        .find(|(key, _)| key.src_addr == chosen.octets())
        .expect("the reply's first fragment is recorded");
    assert_eq!(
        (
            reply_record.1.src_port,
            reply_record.1.dst_port,
            reply_record.1.direction
        ),
        (DNS_PORT, 40000, CT_DIR_REPLY)
    );
    for i in [5, 3, 1, 2, 4] {
        check(
            &mut k,
            &format!("reply fragment {i}"),
            &frags[i],
            TC_ACT_OK,
            &back[i],
            outcome::REVERSE_TRANSLATED,
        );
    }
}

#[test]
fn fragments_of_other_traffic_pass_untouched() {
    let mut k = kernel();
    // Pod to pod by address, and to an address outside the service range:
    // no Service, nothing to follow.
    for (n, dst) in [WEB_POD, Ipv4Addr::new(10, 97, 0, 10)]
        .into_iter()
        .enumerate()
    {
        let frags =
            datagram((CLIENT, 40000), (dst, 8080), 0x5000 + n as u16, 2000).fragments(CHUNK);
        for (i, f) in frags.iter().enumerate() {
            check(
                &mut k,
                &format!("fragment {i} to {dst}"),
                f,
                TC_ACT_OK,
                f,
                outcome::PASSED_FRAGMENT,
            );
        }
    }
    assert!(fragment_records(&k).is_empty(), "nothing recorded");
    assert!(k.conntrack.entries().unwrap().is_empty(), "nothing tracked");
}

#[test]
fn each_datagram_of_a_client_is_followed_by_its_own_ip_id() {
    let mut k = kernel();
    // The same client, two datagrams in flight at once to two Services:
    // their fragments interleaved, each must follow its own first.
    let to_dns = datagram((CLIENT, 40000), (DNS_VIP, 53), 0x6001, 2000);
    let to_web = datagram((CLIENT, 40000), (WEB_VIP, 80), 0x6002, 2000);
    let dns_frags = to_dns.fragments(CHUNK);
    let web_frags = to_web.fragments(CHUNK);
    let (_, dns_out) = first_fragment_to_dns(&mut k, &to_dns);
    let web_out = to_web.clone().with_dst(WEB_POD, 8080).fragments(CHUNK);
    check(
        &mut k,
        "web: first fragment",
        &web_frags[0],
        TC_ACT_OK,
        &web_out[0],
        outcome::TRANSLATED,
    );
    for i in [2, 1] {
        check(
            &mut k,
            &format!("dns: fragment {i}"),
            &dns_frags[i],
            TC_ACT_OK,
            &dns_out[i],
            outcome::TRANSLATED,
        );
        check(
            &mut k,
            &format!("web: fragment {i}"),
            &web_frags[i],
            TC_ACT_OK,
            &web_out[i],
            outcome::TRANSLATED,
        );
    }
    // A third datagram from the same source port to DNS with another IP
    // ID: its own record, the same flow.
    let again = datagram((CLIENT, 40000), (DNS_VIP, 53), 0x6003, 2000);
    let (backend_again, again_out) = first_fragment_to_dns(&mut k, &again);
    assert_eq!(
        destination(&dns_out[0]),
        backend_again,
        "the flow's backend"
    );
    check(
        &mut k,
        "dns again: last fragment",
        &again.fragments(CHUNK)[2],
        TC_ACT_OK,
        &again_out[2],
        outcome::TRANSLATED,
    );
    let ids: BTreeSet<u16> = fragment_records(&k)
        .iter()
        .map(|(key, _)| key.ip_id)
        .collect();
    assert_eq!(ids, BTreeSet::from([0x6001, 0x6002, 0x6003]));
}

/// A client outside the cluster (TEST-NET-1), this node, a backend pod on
/// another node (no route of ferry's: sent by fib lookup, see
/// kernel_external.rs) and one on this node.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 11);
const NODE_PORT: u16 = 30053;
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
const LOCAL_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 7);

fn node_port() -> ServiceKey {
    ServiceKey {
        addr: NODE.octets(),
        port: NODE_PORT,
        protocol: PROTO_UDP,
        scope: SCOPE_EXTERNAL,
    }
}

/// A frame ferry sent by fib lookup: handed to the kernel as rewritten
/// (TC_ACT_OK) when the test run's skb has no route, or redirected with
/// the next hop's MACs (compared from the IPv4 header on).
fn assert_sent_by_fib(what: &str, (verdict, out): (u32, Vec<u8>), expected: &[u8]) {
    match verdict {
        TC_ACT_OK => assert_eq!(hex(&out), hex(expected), "{what}: bytes"),
        TC_ACT_REDIRECT => assert_eq!(hex(&out[14..]), hex(&expected[14..]), "{what}: bytes"),
        other => panic!("{what}: verdict {other}"),
    }
}

#[test]
fn nodeport_fragments_are_source_natted_to_another_node_and_back() {
    let mut k = kernel();
    NodeMap::open(k.pin_dir())
        .unwrap()
        .set_address(Some(NODE))
        .unwrap();
    k.services
        .upsert_frontend(node_port(), &[backend(REMOTE_POD, DNS_PORT)], "", 0)
        .unwrap();
    let request = datagram((OUTSIDE, 40000), (NODE, NODE_PORT), 0x7001, 2000);
    let frags = request.fragments(CHUNK);
    let before = k.counters()[outcome::TRANSLATED as usize].packets;
    let first = k.run_from_network(&frags[0]);
    let snat_port = u16::from_be_bytes([first.1[34], first.1[35]]);
    let sent = request
        .clone()
        .with_dst(REMOTE_POD, DNS_PORT)
        .with_src(NODE, snat_port)
        .fragments(CHUNK);
    assert_sent_by_fib("first fragment", first, &sent[0]);
    for i in [2, 1] {
        assert_sent_by_fib(
            &format!("fragment {i}"),
            k.run_from_network(&frags[i]),
            &sent[i],
        );
    }
    assert_eq!(
        k.counters()[outcome::TRANSLATED as usize].packets,
        before + 3
    );

    // The backend's 8,000-byte answer comes back to the node's port.
    let answer = datagram((REMOTE_POD, DNS_PORT), (NODE, snat_port), 0x7002, 8000);
    let back = answer
        .clone()
        .with_src(NODE, NODE_PORT)
        .with_dst(OUTSIDE, 40000)
        .fragments(1480);
    let before = k.counters()[outcome::REVERSE_TRANSLATED as usize].packets;
    for (i, f) in answer.fragments(1480).iter().enumerate() {
        assert_sent_by_fib(
            &format!("answer fragment {i}"),
            k.run_from_network(f),
            &back[i],
        );
    }
    assert_eq!(
        k.counters()[outcome::REVERSE_TRANSLATED as usize].packets,
        before + 6
    );
}

#[test]
fn xdp_leaves_every_fragment_to_tc() {
    let mut k = kernel();
    Endpoints::open(k.pin_dir())
        .unwrap()
        .insert(
            LOCAL_POD,
            Endpoint {
                ifindex: 7,
                flags: 0,
                pod_mac: [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x07],
                host_mac: [0xee; 6],
            },
        )
        .unwrap();
    k.services
        .upsert_frontend(node_port(), &[backend(LOCAL_POD, DNS_PORT)], "", 0)
        .unwrap();
    const XDP_PASS: u32 = 2;
    // A first fragment is handed on untouched and unrecorded (tc must see
    // it to record its ports)...
    let request = datagram((OUTSIDE, 40000), (NODE, NODE_PORT), 0x8001, 2000);
    for (i, f) in request.fragments(CHUNK).iter().enumerate() {
        let (action, out) = k.run_xdp(f);
        assert_eq!(action, XDP_PASS, "fragment {i}");
        assert_eq!(hex(&out), hex(f), "fragment {i}: untouched");
    }
    assert!(k.conntrack.entries().unwrap().is_empty(), "nothing tracked");
    // ...where a whole datagram to a local backend is recorded by XDP (the
    // control: the same packet, not fragmented).
    let whole = datagram((OUTSIDE, 40001), (NODE, NODE_PORT), 0x8002, 200);
    let (action, _) = k.run_xdp(&whole.bytes());
    assert_eq!(action, XDP_PASS);
    assert_eq!(
        k.conntrack.entries().unwrap().len(),
        2,
        "a whole datagram is"
    );
}
