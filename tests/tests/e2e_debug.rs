//! `ferry-agent debug on|off` against a running node (issue 14, item 4):
//! with debug off the programs print nothing; switched on, each packet a
//! hook settles shows up in the agent's log as a line naming its hook,
//! outcome and frontend; switched off again, the lines stop.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use ferry_harness::Node;
use ferry_tests::{
    client::{tcp_whoami, wait_until_answers},
    spoofing::{Cast, cast},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 81);
/// How the agent marks the programs' lines (tracing's target).
const DATAPATH: &str = "ferry::datapath";

fn datapath_lines(node: &Node) -> Vec<String> {
    node.agent_log()
        .lines()
        .filter(|l| l.contains(DATAPATH))
        .map(str::to_string)
        .collect()
}

#[test]
fn debug_lines_appear_only_while_switched_on() {
    let Cast {
        victim,
        attacker: _attacker,
        server: _server,
        node,
        cluster: _cluster,
    } = cast(VIP);
    wait_until_answers(&victim, VIP, 80, || node.agent_log());
    assert!(
        node.debug("status").unwrap().contains("off"),
        "off at start"
    );

    // Off: traffic, and no line.
    tcp_whoami(&victim, VIP, 80).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        datapath_lines(&node),
        Vec::<String>::new(),
        "no debug line while off"
    );

    // On: the next connection's packets are printed, translated for web.
    assert!(node.debug("on").unwrap().contains("on"));
    assert!(node.debug("status").unwrap().contains("debug lines on"));
    tcp_whoami(&victim, VIP, 80).unwrap();
    let start = Instant::now();
    let translated = loop {
        let lines = datapath_lines(&node);
        if let Some(line) = lines
            .iter()
            .find(|l| l.contains("from_pod") && l.contains("outcome=translated"))
        {
            break line.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no translated packet printed while on:\n{}",
            node.agent_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("{translated}");
    assert!(
        !translated.contains("service_id=0"),
        "the line names the frontend: {translated}"
    );
    // The server's answers come back through its own pod hook.
    assert!(
        datapath_lines(&node)
            .iter()
            .any(|l| l.contains("from_pod") && l.contains("outcome=reverse_translated")),
        "the replies are printed too:\n{}",
        datapath_lines(&node).join("\n")
    );

    // Off again: lines stop (give lines written before the switch time to
    // be printed first).
    assert!(node.debug("off").unwrap().contains("off"));
    std::thread::sleep(Duration::from_millis(500));
    let before = datapath_lines(&node).len();
    tcp_whoami(&victim, VIP, 80).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(datapath_lines(&node).len(), before, "no new line once off");
}
