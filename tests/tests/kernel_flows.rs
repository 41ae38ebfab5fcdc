//! Flow behaviour of the kernel program over many packets: load balancing,
//! stickiness, Service updates under traffic, TCP close and reuse, expiry
//! and garbage collection, and what survives an agent restart.
use std::{
    collections::HashMap,
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use ferry_agent::maps::{ServiceTable, monotonic_now_ns};
use ferry_common::{
    Backend, CT_DIR_ORIGINAL, PROTO_TCP, PROTO_UDP, SCOPE_CLUSTER_IP, ServiceKey,
    conntrack::{STATE_TCP_CLOSING, STATE_TCP_ESTABLISHED, STATE_TCP_SYN_SENT},
    outcome,
};
use ferry_tests::{
    fixture::{Kernel, TC_ACT_OK, unique_pin_dir},
    packet::{Packet, TCP_ACK, TCP_FIN, TCP_SYN},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn frontend(protocol: u8) -> ServiceKey {
    ServiceKey {
        addr: VIP.octets(),
        port: 80,
        protocol,
        scope: SCOPE_CLUSTER_IP,
    }
}

fn pods(n: u8) -> Vec<Backend> {
    (0..n)
        .map(|i| Backend {
            addr: [10, 244, 2, 10 + i],
            port: 8080,
            pad: [0; 2],
        })
        .collect()
}

/// Destination (address, port) of a translated frame.
fn destination(frame: &[u8]) -> ([u8; 4], u16) {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let l4 = 14 + ihl;
    (
        frame[30..34].try_into().unwrap(),
        u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]),
    )
}

fn syn(src_port: u16) -> Packet {
    Packet::tcp((CLIENT, src_port), (VIP, 80), TCP_SYN, b"")
}

#[test]
fn fresh_flows_spread_uniformly_over_backends() {
    let mut k = Kernel::load();
    let backends = pods(3);
    k.services.upsert(frontend(PROTO_TCP), &backends).unwrap();
    let mut hits: HashMap<[u8; 4], u32> = HashMap::new();
    for i in 0..3000u16 {
        let (verdict, out) = k.run(&syn(10000 + i).bytes());
        assert_eq!(verdict, TC_ACT_OK);
        let (addr, port) = destination(&out);
        assert_eq!(port, 8080);
        *hits.entry(addr).or_default() += 1;
    }
    assert_eq!(hits.len(), 3, "every backend is used: {hits:?}");
    for b in &backends {
        let n = hits[&b.addr];
        assert!(
            (900..=1100).contains(&n),
            "backend {:?} got {n} of 3000 flows, outside 1000 ±10%: {hits:?}",
            b.addr
        );
    }
}

#[test]
fn an_established_flow_sticks_to_its_backend_across_service_updates() {
    let mut k = Kernel::load();
    k.services.upsert(frontend(PROTO_TCP), &pods(3)).unwrap();
    let (_, out) = k.run(&syn(40000).bytes());
    let chosen = destination(&out);
    for round in 0..50 {
        // Reorder and grow the backend set: slots now point elsewhere.
        let mut set = pods(3 + (round % 5) as u8);
        set.rotate_left(round % 3);
        k.services.upsert(frontend(PROTO_TCP), &set).unwrap();
        let data = Packet::tcp((CLIENT, 40000), (VIP, 80), TCP_ACK, b"more");
        let (verdict, out) = k.run(&data.bytes());
        assert_eq!(verdict, TC_ACT_OK);
        assert_eq!(destination(&out), chosen, "round {round}: flow moved");
    }
}

#[test]
fn a_service_update_under_traffic_never_exposes_a_partial_backend_set() {
    let mut k = Kernel::load();
    let small = pods(2);
    let large = pods(7)[2..].to_vec(); // disjoint from `small`
    k.services.upsert(frontend(PROTO_UDP), &small).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let pin_dir = k.pin_dir().to_path_buf();
    let writer = {
        let stop = stop.clone();
        let (small, large) = (small.clone(), large.clone());
        std::thread::spawn(move || {
            let mut table = ServiceTable::open(&pin_dir).unwrap();
            let mut flips = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let set = if flips.is_multiple_of(2) {
                    &large
                } else {
                    &small
                };
                table.upsert(frontend(PROTO_UDP), set).unwrap();
                flips += 1;
            }
            flips
        })
    };
    let valid: Vec<[u8; 4]> = small.iter().chain(&large).map(|b| b.addr).collect();
    for i in 0..4000u16 {
        let p = Packet::udp((CLIENT, 20000 + i), (VIP, 80), b"x");
        let (verdict, out) = k.run(&p.bytes());
        assert_eq!(verdict, TC_ACT_OK, "packet {i} was not forwarded");
        let (addr, _) = destination(&out);
        assert!(valid.contains(&addr), "packet {i} went to {addr:?}");
    }
    stop.store(true, Ordering::Relaxed);
    let flips = writer.join().unwrap();
    assert!(flips > 10, "the writer ran concurrently ({flips} updates)");
    let c = k.counters();
    assert_eq!(c[outcome::DROP_NO_BACKEND_SLOT as usize].packets, 0);
    assert_eq!(c[outcome::TRANSLATED as usize].packets, 4000);
}

#[test]
fn tcp_close_then_port_reuse_starts_a_new_flow() {
    let mut k = Kernel::load();
    k.services.upsert(frontend(PROTO_TCP), &pods(1)).unwrap();
    let pod = (Ipv4Addr::from(pods(1)[0].addr), 8080);
    let c = (CLIENT, 40000);
    let state = |k: &Kernel| {
        let mut states: Vec<u8> = k
            .conntrack
            .entries()
            .unwrap()
            .iter()
            .map(|(_, e)| e.state)
            .collect();
        states.dedup();
        states
    };
    k.run(&Packet::tcp(c, (VIP, 80), TCP_SYN, b"").bytes());
    assert_eq!(state(&k), vec![STATE_TCP_SYN_SENT]);
    k.run(&Packet::tcp(pod, c, TCP_SYN | TCP_ACK, b"").bytes());
    assert_eq!(state(&k), vec![STATE_TCP_ESTABLISHED]);
    k.run(&Packet::tcp(c, (VIP, 80), TCP_FIN | TCP_ACK, b"").bytes());
    assert_eq!(state(&k), vec![STATE_TCP_ESTABLISHED], "half-closed");
    let (_, out) = k.run(&Packet::tcp(pod, c, TCP_FIN | TCP_ACK, b"").bytes());
    assert_eq!(&out[26..30], &VIP.octets(), "FIN reverse-NATed");
    assert_eq!(state(&k), vec![STATE_TCP_CLOSING]);
    // The client reuses the port for a direct connection to the backend:
    // the backend's SYN-ACK is not part of the closed Service flow.
    let direct_syn_ack = Packet::tcp(pod, c, TCP_SYN | TCP_ACK, b"").bytes();
    let (verdict, out) = k.run(&direct_syn_ack);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, direct_syn_ack, "passed untranslated");
    let direct_data = Packet::tcp(pod, c, TCP_ACK, b"data of the direct connection").bytes();
    let (_, out) = k.run(&direct_data);
    assert_eq!(
        out, direct_data,
        "the rest of the direct connection passes too"
    );
    // The client reuses the port: a fresh SYN opens a new flow.
    let (verdict, out) = k.run(&Packet::tcp(c, (VIP, 80), TCP_SYN, b"").bytes());
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(destination(&out), (pod.0.octets(), 8080));
    assert_eq!(state(&k), vec![STATE_TCP_SYN_SENT]);
}

#[test]
fn a_direct_udp_flow_reusing_a_service_flows_tuple_is_not_translated() {
    let mut k = Kernel::load();
    k.services.upsert(frontend(PROTO_UDP), &pods(1)).unwrap();
    let pod = (Ipv4Addr::from(pods(1)[0].addr), 8080);
    k.run(&Packet::udp((CLIENT, 5000), (VIP, 80), b"via the service").bytes());
    // The same client port now talks to the backend directly.
    let direct = Packet::udp((CLIENT, 5000), pod, b"direct").bytes();
    let (_, out) = k.run(&direct);
    assert_eq!(out, direct);
    let answer = Packet::udp(pod, (CLIENT, 5000), b"direct answer").bytes();
    let (_, out) = k.run(&answer);
    assert_eq!(out, answer, "the answer keeps the backend's address");
}

#[test]
fn an_expired_flow_is_replaced_and_garbage_collected() {
    let mut k = Kernel::load();
    k.services.upsert(frontend(PROTO_UDP), &pods(3)).unwrap();
    for port in [1000, 1001] {
        k.run(&Packet::udp((CLIENT, port), (VIP, 80), b"x").bytes());
    }
    let now = monotonic_now_ns();
    // Age flow 1000 into the past, both directions.
    for (key, mut entry) in k.conntrack.entries().unwrap() {
        let client_port = if key.direction == CT_DIR_ORIGINAL {
            key.src_port
        } else {
            key.dst_port
        };
        if client_port == 1000 {
            entry.expires_ns = now - 1;
            k.conntrack.insert(key, entry).unwrap();
        }
    }
    // An expired original entry means a new flow: a current backend is chosen.
    let (_, out) = k.run(&Packet::udp((CLIENT, 1000), (VIP, 80), b"x").bytes());
    let (addr, _) = destination(&out);
    assert!(pods(3).iter().any(|b| b.addr == addr), "went to {addr:?}");
    // Age flow 1001 and collect: only it goes, the renewed 1000 stays.
    for (key, mut entry) in k.conntrack.entries().unwrap() {
        let client_port = if key.direction == CT_DIR_ORIGINAL {
            key.src_port
        } else {
            key.dst_port
        };
        if client_port == 1001 {
            entry.expires_ns = now - 1;
            k.conntrack.insert(key, entry).unwrap();
        }
    }
    let removed = k.conntrack.collect_garbage(monotonic_now_ns()).unwrap();
    // Flow 1001's two entries. Flow 1000's old reply entry (keyed by the old
    // backend) went when the kernel replaced the flow.
    assert_eq!(removed, 2);
    let left = k.conntrack.entries().unwrap();
    assert_eq!(left.len(), 2, "{left:?}");
    let now = monotonic_now_ns();
    for (key, entry) in &left {
        assert!(key.src_port == 1000 || key.dst_port == 1000, "{key:?}");
        assert!(entry.expires_ns > now, "renewed");
        let partner = ferry_agent::maps::conntrack::partner_key(key, entry);
        assert!(left.iter().any(|(k, _)| *k == partner), "pair intact");
    }
}

#[test]
fn garbage_collection_never_removes_a_flow_reborn_since_its_snapshot() {
    let mut k = Kernel::load();
    k.services.upsert(frontend(PROTO_TCP), &pods(1)).unwrap();
    let now = monotonic_now_ns();
    // A closed flow, long expired, as the collector's snapshot sees it.
    k.run(&syn(2000).bytes());
    for (key, mut entry) in k.conntrack.entries().unwrap() {
        entry.expires_ns = now - 1;
        k.conntrack.insert(key, entry).unwrap();
    }
    let snapshot = k.conntrack.entries().unwrap();
    assert_eq!(snapshot.len(), 2);
    // Meanwhile the client reuses the port: a new connection, same tuple.
    let (verdict, _) = k.run(&syn(2000).bytes());
    assert_eq!(verdict, TC_ACT_OK);
    let removed = k
        .conntrack
        .collect_garbage_from(&snapshot, monotonic_now_ns())
        .unwrap();
    assert_eq!(removed, 0, "the new connection's entries stay");
    assert_eq!(k.conntrack.entries().unwrap().len(), 2);
    // Its reply is still translated back.
    let syn_ack = Packet::tcp(
        (Ipv4Addr::from(pods(1)[0].addr), 8080),
        (CLIENT, 2000),
        TCP_SYN | TCP_ACK,
        b"",
    );
    let (_, out) = k.run(&syn_ack.bytes());
    assert_eq!(out, syn_ack.clone().with_src(VIP, 80).bytes());
}

#[test]
fn a_restarted_agent_adopts_pinned_maps_and_keeps_flows() {
    let pin_dir = unique_pin_dir("restart");
    let mut first = Kernel::load_at(pin_dir.clone());
    first
        .services
        .upsert(frontend(PROTO_TCP), &pods(3))
        .unwrap();
    let (_, out) = first.run(&syn(40000).bytes());
    let chosen = destination(&out);
    // The pins outlive the process's handles: "restart" by loading again
    // before the first instance lets go of the directory.
    let mut second = Kernel::load_at(pin_dir.clone());
    let records = second.services.list().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].backends, pods(3));
    let data = Packet::tcp((CLIENT, 40000), (VIP, 80), TCP_ACK, b"still here");
    let (verdict, out) = second.run(&data.bytes());
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(
        destination(&out),
        chosen,
        "the established flow kept its backend"
    );
    // New updates through the second instance keep the service id.
    let id = records[0].value.service_id;
    assert_eq!(
        second
            .services
            .upsert(frontend(PROTO_TCP), &pods(2))
            .unwrap(),
        id
    );
    drop(first);
    assert!(!pin_dir.exists(), "cleaned up");
}

#[test]
fn a_pinned_map_with_another_layout_is_refused_with_a_clear_error() {
    ferry_tests::fixture::require_root();
    let pin_dir = unique_pin_dir("incompatible");
    let _guard = ferry_tests::fixture::PinDirGuard(pin_dir.clone());
    std::fs::create_dir_all(&pin_dir).unwrap();
    let path = pin_dir.join(ferry_common::MAP_SERVICES);
    let status = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&path)
        .args(["type", "hash", "key", "4", "value", "4", "entries", "16"])
        .args(["name", "ferry_services"])
        .status()
        .expect("bpftool is installed by `cargo xtask setup`");
    assert!(status.success());
    let err = match ferry_agent::loader::Dataplane::load(&pin_dir) {
        Ok(_) => panic!("an incompatible pinned map was adopted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("does not match this ferry build"), "{err}");
    assert!(err.contains("rm "), "the error says what to do: {err}");
}

#[test]
fn pinned_counters_of_another_layout_are_replaced_not_refused() {
    ferry_tests::fixture::require_root();
    let pin_dir = unique_pin_dir("old-counters");
    let _guard = ferry_tests::fixture::PinDirGuard(pin_dir.clone());
    std::fs::create_dir_all(&pin_dir).unwrap();
    // The previous release's counters: one slot per outcome it had (15).
    let path = pin_dir.join(ferry_common::MAP_COUNTERS);
    let status = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&path)
        .args([
            "type",
            "percpu_array",
            "key",
            "4",
            "value",
            "16",
            "entries",
            "15",
        ])
        .args(["name", "ferry_counters"])
        .status()
        .expect("bpftool is installed by `cargo xtask setup`");
    assert!(status.success());
    // An upgrade must not stop at statistics: the map is replaced.
    let dataplane = ferry_agent::loader::Dataplane::load(&pin_dir)
        .unwrap_or_else(|e| panic!("upgrade refused over the counters: {e}"));
    drop(dataplane);
    let data = aya::maps::MapData::from_pin(&path).unwrap();
    assert_eq!(
        data.info().unwrap().max_entries(),
        ferry_common::outcome::COUNTER_SLOTS
    );
}

#[test]
fn bpftool_prints_the_services_map_with_field_names() {
    let mut k = Kernel::load();
    k.services.upsert(frontend(PROTO_TCP), &pods(2)).unwrap();
    let path = k.pin_dir().join(ferry_common::MAP_SERVICES);
    let out = std::process::Command::new("bpftool")
        .args(["--json", "map", "dump", "pinned"])
        .arg(&path)
        .output()
        .expect("bpftool is installed by `cargo xtask setup`");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    println!("bpftool map dump pinned {}:\n{text}", path.display());
    let dump: serde_json::Value = serde_json::from_str(&text).unwrap();
    // With BTF, bpftool adds a "formatted" view with the field names.
    let entry = &dump[0]["formatted"];
    assert_eq!(entry["key"]["addr"], serde_json::json!([10, 96, 0, 10]));
    assert_eq!(entry["key"]["port"], 80);
    assert_eq!(entry["key"]["protocol"], 6);
    assert_eq!(entry["key"]["scope"], 0);
    assert_eq!(entry["value"]["backend_count"], 2);
    assert!(entry["value"]["service_id"].as_u64().unwrap() >= 1);
}

#[test]
fn removing_a_departed_backends_udp_flows_sends_the_fixed_port_client_to_a_current_one() {
    use ferry_agent::reconcile::targets::{FlowTable, StaleFlows};
    let mut k = Kernel::load();
    let both = pods(2);
    k.services.upsert(frontend(PROTO_UDP), &both).unwrap();
    k.services.upsert(frontend(PROTO_TCP), &both).unwrap();
    // A resolver on a fixed port, and a TCP connection from the same
    // client, each on some backend.
    let query = Packet::udp((CLIENT, 5353), (VIP, 80), b"?");
    let (_, out) = k.run(&query.bytes());
    let (old, _) = destination(&out);
    let tcp = Packet::tcp((CLIENT, 40000), (VIP, 80), TCP_SYN, b"");
    let (_, out) = k.run(&tcp.bytes());
    let tcp_backend = destination(&out);
    // The UDP flow's backend leaves; the agent writes the new set, then
    // removes that backend's UDP flows (as the reconciler does).
    let kept: Vec<Backend> = both.iter().copied().filter(|b| b.addr != old).collect();
    k.services.upsert(frontend(PROTO_UDP), &kept).unwrap();
    k.services.upsert(frontend(PROTO_TCP), &kept).unwrap();
    let departed = *both.iter().find(|b| b.addr == old).unwrap();
    let stale = [StaleFlows {
        addr: VIP.octets(),
        port: 80,
        protocol: PROTO_UDP,
        backend: departed,
    }];
    assert_eq!(k.conntrack.remove_flows(&stale).unwrap(), 1, "one UDP flow");
    // The client's next datagram, same port, reaches the remaining backend,
    // translated exactly.
    let (verdict, out) = k.run(&query.bytes());
    assert_eq!(verdict, TC_ACT_OK);
    let new = Ipv4Addr::from(kept[0].addr);
    assert_eq!(out, query.clone().with_dst(new, 8080).bytes());
    // Its reply comes back from the ClusterIP; the TCP flow is untouched.
    let reply = Packet::udp((new, 8080), (CLIENT, 5353), b"!");
    let (_, out) = k.run(&reply.bytes());
    assert_eq!(out, reply.clone().with_src(VIP, 80).bytes());
    let data = Packet::tcp((CLIENT, 40000), (VIP, 80), TCP_ACK, b"more");
    let (_, out) = k.run(&data.bytes());
    assert_eq!(destination(&out), tcp_backend, "TCP flows are left alone");
}

#[test]
fn inspect_into_a_reader_that_went_away_exits_cleanly() {
    // `ferry-agent inspect services | head -2` used to panic (exit 101) on
    // the broken pipe. The reader here is gone before the first write.
    let mut k = Kernel::load();
    k.services.upsert(frontend(PROTO_TCP), &pods(2)).unwrap();
    let bins = ferry_harness::Binaries::locate().expect("binaries");
    for what in ["services", "counters"] {
        let mut child = std::process::Command::new(&bins.agent)
            .args(["inspect", what, "--pin-dir"])
            .arg(k.pin_dir())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "inspect {what}: {:?} {stderr}",
            out.status
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_pin_directory_another_user_owns_or_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    ferry_tests::fixture::require_root();
    let dir = unique_pin_dir("foreign");
    let guard = ferry_tests::fixture::PinDirGuard(dir.clone());
    std::fs::create_dir_all(&dir).unwrap();
    // Made first by an unprivileged user (nobody).
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let err = ferry_agent::loader::Dataplane::load(&dir)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("owned by uid 65534"), "{err}");
    assert!(
        std::fs::read_dir(&dir).unwrap().next().is_none(),
        "nothing pinned"
    );
    // Root's, but writable by everyone.
    std::os::unix::fs::chown(&dir, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = ferry_agent::loader::Dataplane::load(&dir)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("mode 777"), "{err}");
    // Made private: loads.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let loaded = ferry_agent::loader::Dataplane::load(&dir);
    assert!(loaded.is_ok(), "{:?}", loaded.err().map(|e| e.to_string()));
    drop(loaded);
    drop(guard);
}

#[test]
fn a_removed_frontend_clears_its_filter_bit_and_its_address_is_passed() {
    let mut k = Kernel::load();
    let key = frontend(PROTO_TCP);
    k.services.upsert(key, &pods(2)).unwrap();
    assert!(k.services.frontend_filter().covers(&key));
    let (_, out) = k.run(&syn(40000).bytes());
    assert_ne!(destination(&out).0, VIP.octets(), "translated");
    k.services.remove(&key).unwrap();
    assert!(!k.services.frontend_filter().covers(&key));
    let before = k.counters()[outcome::PASSED as usize].packets;
    let (verdict, out) = k.run(&syn(40001).bytes());
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(out, syn(40001).bytes(), "no frontend: untouched");
    assert_eq!(k.counters()[outcome::PASSED as usize].packets, before + 1);
}

#[test]
fn frontends_pinned_before_the_filter_existed_are_translated_after_an_upgrade() {
    use aya::programs::{TestRun, TestRunOptions};
    let mut k = Kernel::load();
    k.services.upsert(frontend(PROTO_TCP), &pods(2)).unwrap();
    // An agent of the release before the filter left every other map
    // pinned; this build creates the filter empty and must fill it before
    // its programs see a packet.
    std::fs::remove_file(k.pin_dir().join(ferry_common::MAP_FRONTEND_FILTER)).unwrap();
    let mut upgraded = ferry_agent::loader::Dataplane::load(k.pin_dir()).unwrap();
    let table = ServiceTable::open(k.pin_dir()).unwrap();
    assert!(table.frontend_filter().covers(&frontend(PROTO_TCP)));
    let input = syn(40000).bytes();
    let sender = ferry_tests::fixture::ipv4_source(&input).unwrap();
    k.pod_sources
        .insert(
            ferry_tests::fixture::TEST_RUN_IFINDEX,
            ferry_common::PodSource {
                addr: sender.octets(),
            },
            0,
        )
        .unwrap();
    let mut out = vec![0u8; input.len() + 256];
    let result = upgraded
        .program(ferry_agent::loader::PROG_FROM_POD)
        .test_run(TestRunOptions {
            data_in: Some(&input),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        })
        .unwrap();
    out.truncate(result.data_size_out as usize);
    assert_eq!(result.return_value, TC_ACT_OK);
    assert_ne!(
        destination(&out).0,
        VIP.octets(),
        "translated by the new program"
    );
}
