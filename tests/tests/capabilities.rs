//! The agent needs exactly the capabilities deploy/daemonset.yaml grants it
//! (BPF, NET_ADMIN, PERFMON; agent/tests/deploy_manifests.rs checks the
//! manifest names exactly these): with them it loads, attaches tc and XDP to
//! the uplink, creates the VXLAN device and syncs; without PERFMON the
//! verifier refuses the programs. With them it also reserves its port
//! ranges in net.ipv4.ip_local_reserved_ports, and attaches its cgroup
//! socket programs (`--socket-lb host-only`, to a cgroup the test made):
//! BPF links on a cgroup need no CAP_SYS_ADMIN, loading sock_addr programs
//! needs NET_ADMIN.
use std::{process::Command, time::Duration};

use ferry_harness::{Binaries, Cgroup, Netns};

const CAPS: &str = "+bpf,+net_admin,+perfmon";

/// (synced, the agent's log, the namespace's reserved ports afterwards)
fn run_agent_with(caps: &str, routing: &str, tag: &str) -> (bool, String, String) {
    let bins = Binaries::locate().expect("binaries");
    let ns = Netns::create(&format!("fry-caps-{}-{tag}", std::process::id())).unwrap();
    ns.exec(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ])
    .unwrap();
    ns.exec(&["ip", "link", "set", "eth0", "up"]).unwrap();
    let dir = std::env::temp_dir().join(format!("ferry-caps-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("objects.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Node\nmetadata: {name: n}\nspec: {podCIDR: 10.244.1.0/24}\nstatus: {addresses: [{type: InternalIP, address: 192.168.1.1}]}\n",
    )
    .unwrap();
    let pins = format!("/sys/fs/bpf/ferry-test-caps-{}-{tag}", std::process::id());
    let cgroup = Cgroup::top(&format!("ferry-caps-{}-{tag}", std::process::id())).unwrap();
    let bounding = format!("-all,{caps}");
    let log_path = dir.join("agent.log");
    let mut agent = ns
        .command("setpriv")
        .args(["--bounding-set", &bounding, "--inh-caps", &bounding])
        .args(["--ambient-caps", &bounding, "--"])
        .arg(&bins.agent)
        .args(["run", "--node", "n", "--pin-dir", &pins, "--uplink", "eth0"])
        .args(["--routing", routing, "--metrics-address", "off"])
        .args(if routing == "native" {
            &["--xdp", "generic"][..]
        } else {
            &[][..]
        })
        .arg(format!("--source=file:{}", manifest.display()))
        .arg(format!("--cni-conf-dir={}", dir.join("net.d").display()))
        .arg(format!("--cgroup-root={}", cgroup.path.display()))
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    // Until the first sync, the agent exits, or a generous limit: loading
    // the programs through the verifier takes well under a second, but
    // much longer on a loaded 2-core machine.
    let conflist = dir.join("net.d/10-ferry.conflist");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let synced = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains(" synced ") && conflist.exists() {
            break true;
        }
        if agent.try_wait().unwrap().is_some() || std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // nsenter execs setpriv, which execs the agent: the child is the agent.
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let _ = agent.wait();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let reserved = ns
        .exec(&["cat", "/proc/sys/net/ipv4/ip_local_reserved_ports"])
        .unwrap();
    let _ = std::fs::remove_dir_all(&pins);
    let _ = std::fs::remove_dir_all(&dir);
    std::thread::sleep(Duration::from_millis(10));
    (synced, log, reserved)
}

#[test]
fn the_agent_runs_with_exactly_bpf_net_admin_and_perfmon() {
    ferry_tests::fixture::require_root();
    assert!(
        Command::new("setpriv").arg("--version").output().is_ok(),
        "setpriv (util-linux) is needed"
    );
    for routing in ["native", "vxlan"] {
        let (synced, log, reserved) = run_agent_with(CAPS, routing, routing);
        assert!(synced, "{routing} with {CAPS}:\n{log}");
        assert!(log.contains("socket LB attached"), "{log}");
        // The NodePort range and the source-NAT ports, kept off the node's
        // own automatic port choice.
        assert_eq!(reserved.trim(), "30000-32767,61000-65535", "{log}");
    }
    let (synced, log, _) = run_agent_with("+bpf,+net_admin", "native", "noperfmon");
    assert!(!synced, "loaded without PERFMON:\n{log}");
    assert!(log.contains("pointer -= pointer prohibited"), "{log}");
}
