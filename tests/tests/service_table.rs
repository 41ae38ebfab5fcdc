//! The service maps written in batches (issue 15, item 4): thousands of
//! frontends in one `apply`, a backend set replaced through the other bank
//! with its leftovers cleared, removals that leave no slot, name or filter
//! bit behind, a restarted agent that picks up where the maps are, and a
//! full map where the frontends that do not fit fail alone.
use std::net::Ipv4Addr;

use ferry_agent::{
    loader::MapSizes,
    maps::{ServiceTable, batch::BatchMap, services::DesiredFrontend},
};
use ferry_common::{
    Backend, BackendKey, MAP_BACKENDS, MAP_SERVICE_NAMES, MAP_SERVICES, PROTO_TCP, ServiceKey,
    ServiceName, ServiceValue,
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

fn backend_entries(k: &Kernel) -> Vec<(BackendKey, Backend)> {
    BatchMap::<BackendKey, Backend>::open(&k.pin_dir().join(MAP_BACKENDS))
        .unwrap()
        .lookup_all()
        .unwrap()
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
    let all: Vec<(ServiceKey, DesiredFrontend)> =
        (0..3000).map(|i| (key(i), want(i, 10))).collect();
    apply(&mut k.services, &all, &[]);
    let listed = k.services.list().unwrap();
    assert_eq!(listed.len(), 3000);
    for r in &listed {
        let i = u32::from_be_bytes(r.frontend.addr) - 0x0a60_0000;
        assert_eq!(r.backends, *want(i, 10).backends, "frontend {i}");
        assert_eq!(r.name, format!("default/svc-{i}:http"));
        assert!(k.services.frontend_filter().covers(&r.frontend).unwrap());
    }
    assert_eq!(backend_entries(&k).len(), 30_000);

    // Shrink 100 sets, twice: each write goes to the bank not in use, and
    // the slots beyond the new set in that bank are cleared.
    let shrunk: Vec<_> = (0..100).map(|i| (key(i), want(i + 5000, 3))).collect();
    apply(&mut k.services, &shrunk, &[]);
    let shrunk_again: Vec<_> = (0..100).map(|i| (key(i), want(i + 6000, 2))).collect();
    apply(&mut k.services, &shrunk_again, &[]);
    let records = k.services.list().unwrap();
    for r in records.iter().take(100) {
        let i = u32::from_be_bytes(r.frontend.addr) - 0x0a60_0000;
        assert_eq!(r.backends, *want(i + 6000, 2).backends);
    }
    // Each shrunk frontend: 2 active + 3 in the bank it left.
    assert_eq!(backend_entries(&k).len(), 2900 * 10 + 100 * (2 + 3));

    // Remove 1000: no slot, name or value of theirs is left.
    let gone: Vec<ServiceKey> = (0..1000).map(key).collect();
    apply(&mut k.services, &[], &gone);
    assert_eq!(k.services.list().unwrap().len(), 2000);
    assert_eq!(backend_entries(&k).len(), 2000 * 10);
    assert_eq!(count::<u32, ServiceName>(&k, MAP_SERVICE_NAMES), 2000);
    // Every removed address had its own filter bit... unless another
    // frontend shares the slot; none of the remaining ones is lost.
    for i in 1000..3000 {
        assert!(k.services.frontend_filter().covers(&key(i)).unwrap());
    }
}

#[test]
fn a_restarted_table_writes_the_bank_not_in_use_and_clears_its_leftovers() {
    let mut k = Kernel::load();
    apply(&mut k.services, &[(key(1), want(1, 8))], &[]);
    apply(&mut k.services, &[(key(1), want(2, 4))], &[]);
    let before = k.services.get(&key(1)).unwrap().expect("written");
    // A new agent: nothing known but what the maps hold.
    let mut restarted = ServiceTable::open(k.pin_dir()).unwrap();
    apply(&mut restarted, &[(key(1), want(3, 2))], &[]);
    let after = restarted.get(&key(1)).unwrap().expect("written");
    assert_eq!(after.service_id, before.service_id);
    assert_ne!(after.bank, before.bank, "the bank in use was left alone");
    assert_eq!(restarted.list().unwrap()[0].backends, *want(3, 2).backends);
    // 2 active + the 4 of the set before, nothing of the first set's 8.
    assert_eq!(backend_entries(&k).len(), 6);
    apply(&mut restarted, &[], &[key(1)]);
    assert!(backend_entries(&k).is_empty());
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
    assert_eq!(backend_entries(&k).len(), 100);
}
