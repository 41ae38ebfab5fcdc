//! What the service-CIDR end-to-end tests share, whichever source the
//! ranges come from: a way off the node that is watched, and the checks
//! that an address is dropped on the node, leaves it, or is refused.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use ferry_harness::{Node, Pod};

use crate::{
    capture::Capture,
    client::{tcp_connect_error, udp_whoami},
};

/// `inspect counters`: the packets counted under `outcome`.
pub fn counted(node: &Node, outcome: &str) -> u64 {
    let out = node.inspect("counters").unwrap();
    out.lines()
        .find_map(|l| {
            let mut cols = l.split_whitespace();
            (cols.next() == Some(outcome)).then(|| cols.next().unwrap().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no {outcome} in:\n{out}"))
}

/// Whether any captured IPv4 or ARP frame is about `addr` (its IPv4
/// destination, or the address an ARP request asks for).
pub fn mentions(frames: &[Vec<u8>], addr: Ipv4Addr) -> bool {
    let a = addr.octets();
    frames.iter().any(|f| match f.get(12..14) {
        Some([0x08, 0x00]) => f.get(30..34) == Some(&a[..]),
        Some([0x08, 0x06]) => f.get(38..42) == Some(&a[..]),
        _ => false,
    })
}

/// The interface `route_off_node` sends everything out of.
pub const OFF_NODE: &str = "up0";

/// A default route out of a veth (`OFF_NODE`) whose frames a test can
/// capture: the node namespaces of one-node tests have no uplink, so
/// without it "leaves the node" would be "unreachable" instead.
pub fn route_off_node(node: &Node) {
    let ns = &node.netns;
    ns.exec(&[
        "ip", "link", "add", OFF_NODE, "type", "veth", "peer", "name", "up1",
    ])
    .unwrap();
    ns.exec(&["ip", "link", "set", "up1", "up"]).unwrap();
    ns.exec(&["ip", "link", "set", OFF_NODE, "up"]).unwrap();
    ns.exec(&["ip", "route", "add", "default", "dev", OFF_NODE])
        .unwrap();
}

/// TCP from `client` to `addr:80`, captured on the way off the node (after
/// `route_off_node`): whether it left. Nothing answers either way, so the
/// connect times out (2 s).
pub fn leaves_the_node(node: &Node, client: &Pod, addr: Ipv4Addr) -> bool {
    let capture = Capture::start(&node.netns.path(), OFF_NODE).unwrap();
    let err = tcp_connect_error(client, addr, 80).unwrap();
    // Unanswered either way; an unanswered ARP on the way out may end it
    // as unreachable first. Never refused, never connected.
    assert!(
        matches!(
            err,
            Some(std::io::ErrorKind::TimedOut | std::io::ErrorKind::HostUnreachable)
        ),
        "TCP to {addr}: {err:?}"
    );
    mentions(&capture.finish(), addr)
}

/// TCP to `addr:tcp` and UDP to `addr:udp` are both refused, within a
/// second (not timed out).
pub fn assert_refused_at_once(client: &Pod, addr: Ipv4Addr, (tcp, udp): (u16, u16), what: &str) {
    let start = Instant::now();
    let err = tcp_connect_error(client, addr, tcp).unwrap();
    assert_eq!(
        err,
        Some(std::io::ErrorKind::ConnectionRefused),
        "TCP to {what}"
    );
    let udp_err = udp_whoami(client, addr, udp).unwrap_err();
    assert!(
        format!("{udp_err:#}").contains("refused"),
        "UDP to {what}: {udp_err:#}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "refused, not timed out"
    );
}
