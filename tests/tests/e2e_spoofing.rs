//! Anti-spoofing end to end (issue 13, item 3): a pod with CAP_NET_RAW
//! writes frames straight onto its veth claiming another pod's address.
//! The victim's connection through a ClusterIP goes on, nothing the forged
//! frames ask for arrives, the drops are counted, and the same frames
//! with the sender's own address do arrive.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpStream},
    time::{Duration, Instant},
};

use ferry_harness::{Binaries, Cluster, Pod, in_netns, manifest};
use ferry_tests::{
    capture::{Capture, send_frame},
    packet::{Packet, TCP_SYN},
};

const CIDR: &str = "10.244.1.0/24";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 60);

fn mac(pod: &Pod, interface: usize) -> [u8; 6] {
    let text = pod.result["interfaces"][interface]["mac"]
        .as_str()
        .expect("CNI result lists the interface's MAC");
    let bytes: Vec<u8> = text
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

/// A frame as `pod` would put it on its eth0 towards the node: from its
/// own MAC to its veth's host side (the CNI result lists the host side
/// first, the pod's interface second).
fn on_the_wire(pod: &Pod, packet: Packet) -> Vec<u8> {
    packet.with_macs(mac(pod, 0), mac(pod, 1)).bytes()
}

fn counter(out: &str, outcome: &str) -> u64 {
    out.lines()
        .find_map(|l| {
            let mut cols = l.split_whitespace();
            (cols.next() == Some(outcome)).then(|| cols.next().unwrap().parse().unwrap())
        })
        .unwrap_or(0)
}

/// Did a UDP datagram from `from` to `to_port` cross `capture`?
fn saw_udp(frames: &[Vec<u8>], from: (Ipv4Addr, u16), to_port: u16) -> bool {
    frames.iter().any(|f| {
        f.len() > 42
            && f[12..14] == [0x08, 0x00]
            && f[23] == 17
            && f[26..30] == from.0.octets()
            && u16::from_be_bytes([f[34], f[35]]) == from.1
            && u16::from_be_bytes([f[36], f[37]]) == to_port
    })
}

#[test]
fn a_pod_cannot_speak_for_another_pod() {
    ferry_tests::fixture::require_root();
    let c = Cluster::new(Binaries::locate().expect("binaries")).expect("cluster");
    c.write_manifest(&manifest::node("n1", CIDR)).unwrap();
    let node = c.node("n1").unwrap();
    let victim = node.add_pod("victim").unwrap();
    let attacker = node.add_pod("attacker").unwrap();
    let mut server = node.add_pod("server").unwrap();
    server.serve(8080).unwrap();
    c.write_manifest(&manifest::join(&[
        manifest::node("n1", CIDR),
        manifest::service("web", VIP, &[("http", 80, "TCP", 8080)]),
        manifest::endpoint_slice("web", "n1", &[server.ip], &[("http", 8080, "TCP")]),
    ]))
    .unwrap();
    let start = Instant::now();
    let mut conn = loop {
        let attempt = in_netns(&victim.netns.path(), move || {
            TcpStream::connect_timeout(&(VIP, 80).into(), Duration::from_millis(500))
        })
        .unwrap();
        if let Ok(conn) = attempt {
            break conn;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the ClusterIP never answered:\n{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let ask = |conn: &mut TcpStream| -> std::io::Result<String> {
        conn.write_all(b"?")?;
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    };
    assert_eq!(ask(&mut conn).unwrap(), "server");
    let victim_port = conn.local_addr().unwrap().port();

    let at_victim = Capture::start(&victim.netns.path(), "eth0").unwrap();
    let at_attacker = Capture::start(&attacker.netns.path(), "eth0").unwrap();
    // The attack of issue 13: a SYN with the victim's address and port, to
    // the victim's backend (it cleared the victim's reply entry).
    let forged_syn = Packet::tcp((victim.ip, victim_port), (server.ip, 8080), TCP_SYN, b"");
    // A request the server would answer to the victim.
    let forged_ask = Packet::udp((victim.ip, 7001), (server.ip, 8080), b"?");
    // The same request from the attacker's own address: the raw path works.
    let own_ask = Packet::udp((attacker.ip, 7002), (server.ip, 8080), b"?");
    for packet in [forged_syn, forged_ask, own_ask] {
        send_frame(
            &attacker.netns.path(),
            "eth0",
            on_the_wire(&attacker, packet),
        )
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));

    assert_eq!(
        ask(&mut conn).expect("the victim's connection still answers"),
        "server"
    );
    let at_attacker = at_attacker.finish();
    let at_victim = at_victim.finish();
    assert!(
        saw_udp(&at_attacker, (server.ip, 8080), 7002),
        "the attacker's own request was answered"
    );
    assert!(
        !saw_udp(&at_victim, (server.ip, 8080), 7001),
        "no answer to the forged request reached the victim"
    );
    let counters = node.inspect("counters").unwrap();
    assert_eq!(
        counter(&counters, "drop_spoofed_source"),
        2,
        "both forged frames counted:\n{counters}"
    );
    let endpoints = node.inspect("endpoints").unwrap();
    assert!(
        endpoints
            .lines()
            .any(|l| l.starts_with(&attacker.ip.to_string())
                && l.trim_end().ends_with(&attacker.ip.to_string())),
        "inspect endpoints shows what each veth may send as:\n{endpoints}"
    );
}
