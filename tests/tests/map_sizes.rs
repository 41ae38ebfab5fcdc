//! Map sizes from the agent's options (issue 15, item 2): the maps the
//! loader creates have the capacities asked for; a map already pinned keeps
//! its capacity and its entries (an agent restarted with other options
//! loses no tracked connection); the per-frontend stats, counts only, are
//! recreated at the new size; and at the defaults, with ten Services, the
//! maps hold under 32 MiB of kernel memory.
use std::net::Ipv4Addr;

use ferry_agent::{
    loader::{Dataplane, MapSizes},
    maps::{Conntrack, ServiceTable, memory},
};
use ferry_common::{
    CT_DIR_ORIGINAL, CtEntry, CtKey, MAP_AFFINITY, MAP_BACKENDS, MAP_CONNTRACK, MAP_SERVICE_STATS,
    MAP_SERVICES, MAP_SOCK_REVERSE, PROTO_TCP,
};
use ferry_tests::fixture::{PinDirGuard, backend, frontend, require_root, unique_pin_dir};

fn capacity(pins: &PinDirGuard, name: &str) -> u32 {
    memory::pinned(&pins.0)
        .into_iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("{name} is not pinned"))
        .max_entries
}

const SMALL: MapSizes = MapSizes {
    frontends: 100,
    backends: 1000,
    conntrack: 2048,
    affinity: 512,
    sock_reverse: 256,
};

#[test]
fn maps_are_created_at_the_sizes_asked_for() {
    require_root();
    let pins = PinDirGuard(unique_pin_dir("sizes"));
    let dataplane = Dataplane::load_sized(&pins.0, &SMALL).expect("load");
    for (name, want) in [
        (MAP_SERVICES, 100),
        (MAP_SERVICE_STATS, 101),
        (MAP_BACKENDS, 1000),
        (MAP_CONNTRACK, 2048),
        (MAP_AFFINITY, 512),
        (MAP_SOCK_REVERSE, 256),
    ] {
        assert_eq!(capacity(&pins, name), want, "{name}");
    }
    drop(dataplane);
}

#[test]
fn a_pinned_map_keeps_its_size_and_entries_and_the_stats_follow_the_options() {
    require_root();
    let pins = PinDirGuard(unique_pin_dir("resize"));
    let key = CtKey {
        src_addr: [10, 244, 1, 5],
        dst_addr: [10, 96, 0, 10],
        src_port: 40000,
        dst_port: 80,
        protocol: PROTO_TCP,
        direction: CT_DIR_ORIGINAL,
        pad: [0; 2],
    };
    let entry = CtEntry {
        expires_ns: u64::MAX,
        nat_addr: [10, 244, 1, 11],
        nat_port: 8080,
        state: 2,
        flags: 0,
        service_id: 1,
        peer_nat_addr: [0; 4],
        peer_nat_port: 0,
        pad: [0; 6],
    };
    {
        let _dataplane = Dataplane::load_sized(&pins.0, &SMALL).expect("first load");
        Conntrack::open(&pins.0)
            .unwrap()
            .insert(key, entry)
            .unwrap();
    }
    // Restarted with the defaults: conntrack stays as pinned, entry and
    // all; the stats array is recreated at the new number of frontends.
    let _dataplane = Dataplane::load_sized(&pins.0, &MapSizes::default()).expect("second load");
    assert_eq!(capacity(&pins, MAP_CONNTRACK), 2048);
    assert_eq!(
        Conntrack::open(&pins.0).unwrap().get(&key).unwrap(),
        Some(entry),
        "the tracked connection survived"
    );
    assert_eq!(
        capacity(&pins, MAP_SERVICE_STATS),
        MapSizes::default().frontends + 1
    );
}

#[test]
fn ten_services_at_the_defaults_hold_under_32_mib() {
    require_root();
    let pins = PinDirGuard(unique_pin_dir("memory"));
    let _dataplane = Dataplane::load_sized(&pins.0, &MapSizes::default()).expect("load");
    let mut services = ServiceTable::open(&pins.0).unwrap();
    for i in 0..10u8 {
        let backends: Vec<_> = (0..10u8)
            .map(|b| backend(Ipv4Addr::new(10, 244, 1, 10 + b), 8080))
            .collect();
        services
            .upsert(
                frontend(Ipv4Addr::new(10, 96, 0, i), 80, PROTO_TCP),
                &backends,
            )
            .unwrap();
    }
    let maps = memory::pinned(&pins.0);
    let total: u64 = maps.iter().map(|m| m.memory_bytes).sum();
    let table: Vec<String> = maps
        .iter()
        .map(|m| format!("{} {} {}", m.name, m.max_entries, m.memory_bytes))
        .collect();
    eprintln!("{}\ntotal {total}", table.join("\n"));
    assert!(
        maps.iter()
            .all(|m| m.memory_bytes > 0 || m.map_type == "LpmTrie"),
        "the kernel reports each map's memory:\n{}",
        table.join("\n")
    );
    assert!(
        total < 32 << 20,
        "{:.1} MiB of maps at the defaults:\n{}",
        total as f64 / 1048576.0,
        table.join("\n")
    );
}

#[test]
fn sizes_out_of_range_are_refused_clearly() {
    let zero = MapSizes {
        conntrack: 0,
        ..MapSizes::default()
    };
    assert!(
        zero.check()
            .unwrap_err()
            .contains("--max-conntrack-entries")
    );
    let huge = MapSizes {
        frontends: u32::MAX,
        ..MapSizes::default()
    };
    assert!(huge.check().unwrap_err().contains("--max-frontends"));
    assert!(MapSizes::default().check().is_ok());
}
