//! The service maps written in batches (issue 15, item 4): thousands of
//! frontends in one `apply`, each in slots of its own; a backend set
//! replaced through the standby run while the run the old value points at
//! stays intact; removals that leave no name or filter bit behind and whose
//! slots are handed out again; a restarted agent that picks up where the
//! maps are; and a full array where the frontends that do not fit fail
//! alone.
use std::net::Ipv4Addr;

use ferry_agent::{
    loader::MapSizes,
    maps::{ServiceTable, batch::BatchMap, mapped::MappedArray, services::DesiredFrontend},
};
use ferry_common::{
    Backend, MAP_BACKENDS, MAP_SERVICE_NAMES, MAP_SERVICES, PROTO_TCP, ServiceKey, ServiceName,
    ServiceValue,
};
use ferry_tests::fixture::{Kernel, backend, frontend};

fn key(i: u32) -> ServiceKey {
    frontend(Ipv4Addr::from(0x0a60_0000 + i), 80, PROTO_TCP)
}

fn want(i: u32, n: u32) -> DesiredFrontend {
    DesiredFrontend {
        backends: (0..n)
            .map(|j| backend(Ipv4Addr::from(0x0a80_0000 + i * 16 + j), 8080))
            .collect(),
        name: format!("default/svc-{i}:http").into(),
        flags: 0,
        options: Default::default(),
    }
}

/// What the slot array holds from `value`'s base, `value`'s count long,
/// read through a mapping of its own (as the datapath would read it).
fn slots_of(k: &Kernel, value: &ServiceValue) -> Vec<Backend> {
    MappedArray::<Backend>::open(&k.pin_dir().join(MAP_BACKENDS))
        .unwrap()
        .read(value.backend_base, u32::from(value.backend_count))
}

/// No slot is in two frontends' active sets, and none lies past the array.
fn assert_disjoint(k: &Kernel, capacity: u32) {
    let mut owner = vec![false; capacity as usize];
    for (_, v) in BatchMap::<ServiceKey, ServiceValue>::open(&k.pin_dir().join(MAP_SERVICES))
        .unwrap()
        .lookup_all()
        .unwrap()
    {
        for slot in 0..v.backend_count {
            let i = v.slot_index(slot).unwrap() as usize;
            assert!(i < owner.len(), "slot {i} past the array");
            assert!(!owner[i], "slot {i} in two frontends' sets");
            owner[i] = true;
        }
    }
}

fn count<K: aya::Pod, V: aya::Pod>(k: &Kernel, map: &str) -> usize {
    BatchMap::<K, V>::open(&k.pin_dir().join(map))
        .unwrap()
        .lookup_all()
        .unwrap()
        .len()
}

fn apply(
    table: &mut ServiceTable,
    upserts: &[(ServiceKey, DesiredFrontend)],
    removes: &[ServiceKey],
) {
    let upserts: Vec<(ServiceKey, &DesiredFrontend)> =
        upserts.iter().map(|(k, f)| (*k, f)).collect();
    let failed = table.apply(&upserts, removes).expect("maps readable");
    assert!(failed.is_empty(), "{failed:?}");
}

#[test]
fn thousands_of_frontends_in_one_apply_then_replaced_and_removed_without_leftovers() {
    let mut k = Kernel::load();
    let capacity = MapSizes::default().backends;
    let all: Vec<(ServiceKey, DesiredFrontend)> =
        (0..3000).map(|i| (key(i), want(i, 10))).collect();
    apply(&mut k.services, &all, &[]);
    let listed = k.services.list().unwrap();
    assert_eq!(listed.len(), 3000);
    for r in &listed {
        let i = u32::from_be_bytes(r.frontend.addr) - 0x0a60_0000;
        assert_eq!(r.backends, *want(i, 10).backends, "frontend {i}");
        assert_eq!(r.name, format!("default/svc-{i}:http"));
        assert!(k.services.frontend_filter().covers(&r.frontend));
    }
    assert_disjoint(&k, capacity);
    assert_eq!(k.services.slots_in_use(), 30_000);

    // Shrink 100 sets, twice. The first write takes a run of 3 (there is
    // no standby yet); the second goes into the standby, the run of 10
    // the first set had. Each time, the run the old value points at is
    // left exactly as it was, for packets that read the old value.
    let before: Vec<ServiceValue> = (0..100)
        .map(|i| k.services.get(&key(i)).unwrap().unwrap())
        .collect();
    let shrunk: Vec<_> = (0..100).map(|i| (key(i), want(i + 5000, 3))).collect();
    apply(&mut k.services, &shrunk, &[]);
    for (i, old) in before.iter().enumerate() {
        assert_eq!(slots_of(&k, old), *want(i as u32, 10).backends);
    }
    let middle: Vec<ServiceValue> = (0..100)
        .map(|i| k.services.get(&key(i)).unwrap().unwrap())
        .collect();
    let shrunk_again: Vec<_> = (0..100).map(|i| (key(i), want(i + 6000, 2))).collect();
    apply(&mut k.services, &shrunk_again, &[]);
    for i in 0..100 {
        let now = k.services.get(&key(i)).unwrap().unwrap();
        assert_eq!(now.service_id, before[i as usize].service_id);
        assert_eq!(
            now.backend_base, before[i as usize].backend_base,
            "standby reused"
        );
        assert_eq!(
            slots_of(&k, &middle[i as usize]),
            *want(i + 5000, 3).backends
        );
    }
    let records = k.services.list().unwrap();
    for r in records.iter().take(100) {
        let i = u32::from_be_bytes(r.frontend.addr) - 0x0a60_0000;
        assert_eq!(r.backends, *want(i + 6000, 2).backends);
    }
    assert_disjoint(&k, capacity);
    // Each shrunk frontend holds its run of 10 (active) and of 3 (standby).
    assert_eq!(k.services.slots_in_use(), 2900 * 10 + 100 * (10 + 3));

    // Remove 1000: no name or value of theirs is left, and their slots
    // are free from the next sync on.
    let gone: Vec<ServiceKey> = (0..1000).map(key).collect();
    apply(&mut k.services, &[], &gone);
    assert_eq!(k.services.list().unwrap().len(), 2000);
    assert_eq!(count::<u32, ServiceName>(&k, MAP_SERVICE_NAMES), 2000);
    apply(&mut k.services, &[], &[]);
    assert_eq!(k.services.slots_in_use(), 2000 * 10);
    // Every removed address had its own filter bit... unless another
    // frontend shares the slot; none of the remaining ones is lost.
    for i in 1000..3000 {
        assert!(k.services.frontend_filter().covers(&key(i)));
    }
    // New frontends take the freed slots, beside the ones still there.
    let again: Vec<_> = (0..1000).map(|i| (key(i), want(i + 7000, 10))).collect();
    apply(&mut k.services, &again, &[]);
    assert_eq!(k.services.slots_in_use(), 3000 * 10);
    assert_disjoint(&k, capacity);
    for r in k.services.list().unwrap() {
        let i = u32::from_be_bytes(r.frontend.addr) - 0x0a60_0000;
        let i = if i < 1000 { i + 7000 } else { i };
        assert_eq!(r.backends, *want(i, 10).backends, "frontend {i}");
    }
}

#[test]
fn a_restarted_table_writes_slots_no_value_points_at() {
    let mut k = Kernel::load();
    apply(&mut k.services, &[(key(1), want(1, 8))], &[]);
    apply(&mut k.services, &[(key(1), want(2, 4))], &[]);
    let before = k.services.get(&key(1)).unwrap().expect("written");
    // A new agent: nothing known but what the maps hold.
    let mut restarted = ServiceTable::open(k.pin_dir()).unwrap();
    apply(&mut restarted, &[(key(1), want(3, 2))], &[]);
    let after = restarted.get(&key(1)).unwrap().expect("written");
    assert_eq!(after.service_id, before.service_id);
    assert_eq!(
        slots_of(&k, &before),
        *want(2, 4).backends,
        "the set in use was left alone"
    );
    assert_eq!(restarted.list().unwrap()[0].backends, *want(3, 2).backends);
    // The run of 4 the old value pointed at, and the new one of 2.
    assert_eq!(restarted.slots_in_use(), 4 + 2);
    apply(&mut restarted, &[], &[key(1)]);
    apply(&mut restarted, &[], &[]);
    assert_eq!(restarted.slots_in_use(), 0);
    assert_eq!(count::<ServiceKey, ServiceValue>(&k, MAP_SERVICES), 0);
}

#[test]
fn frontends_that_do_not_fit_fail_alone_and_the_rest_are_written() {
    let sizes = MapSizes {
        backends: 100,
        ..MapSizes::default()
    };
    let mut k = Kernel::load_sized(&sizes);
    // 15 frontends of 10: the backends map holds 10 of them.
    let all: Vec<(ServiceKey, DesiredFrontend)> = (0..15).map(|i| (key(i), want(i, 10))).collect();
    let upserts: Vec<(ServiceKey, &DesiredFrontend)> = all.iter().map(|(k, f)| (*k, f)).collect();
    let failed = k.services.apply(&upserts, &[]).expect("maps readable");
    assert_eq!(failed.len(), 5, "{failed:?}");
    let message = failed[0].1.to_string();
    assert!(message.contains("--max-backends"), "{message}");
    let listed = k.services.list().unwrap();
    assert_eq!(listed.len(), 10, "what fits is written");
    for r in &listed {
        assert_eq!(r.backends.len(), 10, "a written frontend is whole");
    }
    // The failed ones are not half there: removing others makes room and
    // they go in.
    let failed_keys: Vec<ServiceKey> = failed.iter().map(|(k, _)| *k).collect();
    let written: Vec<ServiceKey> = listed.iter().take(5).map(|r| r.frontend).collect();
    apply(&mut k.services, &[], &written);
    let retry: Vec<_> = all
        .iter()
        .filter(|(k, _)| failed_keys.contains(k))
        .cloned()
        .collect();
    apply(&mut k.services, &retry, &[]);
    assert_eq!(k.services.list().unwrap().len(), 10);
    assert_eq!(k.services.slots_in_use(), 100);
    assert_disjoint(&k, 100);
}

#[test]
fn a_set_that_shrank_gives_its_large_run_back() {
    let mut k = Kernel::load();
    apply(&mut k.services, &[(key(1), want(1, 100))], &[]);
    apply(&mut k.services, &[(key(1), want(2, 2))], &[]);
    // Active: a run of 2; standby: the 100 the first set had.
    assert_eq!(k.services.slots_in_use(), 102);
    // The next set would fit the standby 50 times over: it takes a run of
    // its own size, and the 100 are free from the sync after.
    apply(&mut k.services, &[(key(1), want(3, 2))], &[]);
    apply(&mut k.services, &[], &[]);
    assert_eq!(k.services.slots_in_use(), 2 + 2);
    assert_eq!(k.services.list().unwrap()[0].backends, *want(3, 2).backends);
    // An emptied set keeps nothing new, and its runs stay until it leaves.
    apply(&mut k.services, &[(key(1), want(4, 0))], &[]);
    assert!(k.services.list().unwrap()[0].backends.is_empty());
    apply(&mut k.services, &[(key(1), want(5, 3))], &[]);
    assert_eq!(k.services.list().unwrap()[0].backends, *want(5, 3).backends);
    assert_disjoint(&k, MapSizes::default().backends);
    apply(&mut k.services, &[], &[key(1)]);
    apply(&mut k.services, &[], &[]);
    assert_eq!(k.services.slots_in_use(), 0);
}
