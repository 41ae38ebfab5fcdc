//! The batch map API (`ferry_agent::maps::batch`) against real pinned maps:
//! a full conntrack map written and read back whole, a walk resumed across
//! calls, batch deletes that remove exactly the keys given, and the
//! per-entry fallback giving the same answers.
use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};

use aya::maps::{Map, MapData};
use ferry_agent::maps::batch::{BatchMap, Cursor};
use ferry_common::{CONNTRACK_MAX_ENTRIES, CT_DIR_ORIGINAL, CtEntry, CtKey, MAP_CONNTRACK};
use ferry_tests::fixture::Kernel;

/// The `i`th of many distinct flows.
fn key(i: u32) -> CtKey {
    let [a, b, c, d] = i.to_be_bytes();
    CtKey {
        src_addr: [10, a, b, c],
        dst_addr: [10, 96, 0, d],
        src_port: 1024 + (i % 50_000) as u16,
        dst_port: 80,
        protocol: 6,
        direction: CT_DIR_ORIGINAL,
        pad: [0; 2],
    }
}

fn entry(i: u32) -> CtEntry {
    CtEntry {
        expires_ns: u64::from(i) * 1_000 + 7,
        nat_addr: [10, 244, (i >> 8) as u8, i as u8],
        nat_port: 8080,
        state: 2,
        flags: 0,
        service_id: i,
        peer_nat_addr: [0; 4],
        peer_nat_port: 0,
        pad: [0; 6],
    }
}

fn conntrack(k: &Kernel) -> BatchMap<CtKey, CtEntry> {
    BatchMap::open(&k.pin_dir().join(MAP_CONNTRACK)).unwrap()
}

/// Write entries `0..n` in one batch update.
fn fill(map: &BatchMap<CtKey, CtEntry>, n: u32) -> HashMap<CtKey, CtEntry> {
    let keys: Vec<CtKey> = (0..n).map(key).collect();
    let values: Vec<CtEntry> = (0..n).map(entry).collect();
    let start = Instant::now();
    map.update(&keys, &values, 0).unwrap();
    eprintln!(
        "batch update of {n} conntrack entries: {:?}",
        start.elapsed()
    );
    keys.into_iter().zip(values).collect()
}

#[test]
fn a_full_conntrack_map_is_written_and_read_back_whole() {
    let k = Kernel::load();
    let map = conntrack(&k);
    assert_eq!(map.max_entries(), CONNTRACK_MAX_ENTRIES);
    let written = fill(&map, CONNTRACK_MAX_ENTRIES);

    let start = Instant::now();
    let read = map.lookup_all().unwrap();
    eprintln!(
        "batch lookup of {} conntrack entries: {:?}",
        read.len(),
        start.elapsed()
    );
    // aya's own walk (GET_NEXT_KEY, then LOOKUP_ELEM, per entry).
    let aya_map: aya::maps::HashMap<MapData, CtKey, CtEntry> = aya::maps::HashMap::try_from(
        Map::HashMap(MapData::from_pin(k.pin_dir().join(MAP_CONNTRACK)).unwrap()),
    )
    .unwrap();
    let start = Instant::now();
    let per_entry: Vec<(CtKey, CtEntry)> = aya_map.iter().map(Result::unwrap).collect();
    eprintln!(
        "per-entry walk of {} conntrack entries: {:?}",
        per_entry.len(),
        start.elapsed()
    );
    // An LRU map may evict a few entries to make room before it is
    // entirely full (its per-CPU free lists); what matters is that the
    // batch read returns exactly what the map holds, and what it holds was
    // written.
    let read_map: HashMap<CtKey, CtEntry> = read.iter().copied().collect();
    assert_eq!(read_map.len(), read.len(), "no entry read twice");
    let held: HashMap<CtKey, CtEntry> = per_entry.into_iter().collect();
    assert_eq!(read_map, held, "batch and per-entry reads agree");
    for (k, v) in &read_map {
        assert_eq!(written.get(k), Some(v), "an entry that was written");
    }
    let evicted = written.len() - read_map.len();
    assert!(
        evicted <= written.len() / 100,
        "{evicted} of {} entries missing",
        written.len()
    );
    eprintln!("{evicted} entries evicted by the LRU while filling");
}

#[test]
fn a_cursor_walk_resumes_across_calls_and_matches_the_per_entry_walk() {
    let k = Kernel::load();
    let map = conntrack(&k);
    let written = fill(&map, 20_000);

    let walk = |step: usize| {
        let mut cursor = Cursor::new();
        let mut out = Vec::new();
        let mut calls = 0;
        while !cursor.is_done() {
            let got = map.lookup_next(&mut cursor, step, &mut out).unwrap();
            // A bucket is copied whole, so a call may overshoot a little,
            // never by more than a bucket.
            assert!(got <= step + 16, "{got} entries for a step of {step}");
            calls += 1;
        }
        (out, calls)
    };
    for step in [1, 7, 1000, 4096, 50_000] {
        let (out, calls) = walk(step);
        let seen: HashMap<CtKey, CtEntry> = out.iter().copied().collect();
        assert_eq!(seen.len(), out.len(), "step {step}: an entry twice");
        assert_eq!(seen, written, "step {step}");
        assert!(calls >= 20_000 / (step + 16), "step {step}: {calls} calls");
    }

    // A walk that resumes after entries were removed behind and ahead of
    // it: the ones left ahead are still all seen, none twice.
    let mut cursor = Cursor::new();
    let mut first = Vec::new();
    map.lookup_next(&mut cursor, 5_000, &mut first).unwrap();
    let behind: Vec<CtKey> = first.iter().map(|(k, _)| *k).take(100).collect();
    let first_keys: HashSet<CtKey> = first.iter().map(|(k, _)| *k).collect();
    let ahead: Vec<CtKey> = written
        .keys()
        .filter(|k| !first_keys.contains(k))
        .take(100)
        .copied()
        .collect();
    assert_eq!(map.delete(&behind).unwrap(), 100);
    assert_eq!(map.delete(&ahead).unwrap(), 100);
    let mut rest = Vec::new();
    while !cursor.is_done() {
        map.lookup_next(&mut cursor, 3_000, &mut rest).unwrap();
    }
    let rest_keys: HashSet<CtKey> = rest.iter().map(|(k, _)| *k).collect();
    assert_eq!(rest_keys.len(), rest.len());
    assert!(rest_keys.is_disjoint(&first_keys), "nothing read twice");
    let expected: HashSet<CtKey> = written
        .keys()
        .filter(|k| !first_keys.contains(k) && !ahead.contains(k))
        .copied()
        .collect();
    assert_eq!(rest_keys, expected);

    // The per-entry fallback walks the same map to the same result.
    map.force_per_entry();
    let fallback: HashSet<CtKey> = map
        .lookup_all()
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let batch: HashSet<CtKey> = conntrack(&k)
        .lookup_all()
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(fallback, batch);
    assert_eq!(fallback.len(), 20_000 - 200);
}

#[test]
fn a_batch_delete_removes_exactly_the_keys_given() {
    let k = Kernel::load();
    let map = conntrack(&k);
    let written = fill(&map, 10_000);
    // Every third key, with keys that were never there in between (the
    // kernel stops at each: the rest must still go).
    let mut doomed: Vec<CtKey> = (0..10_000).step_by(3).map(key).collect();
    let absent = [key(20_000), key(20_001), key(30_000)];
    doomed.insert(0, absent[0]);
    doomed.insert(500, absent[1]);
    doomed.push(absent[2]);
    let removed = map.delete(&doomed).unwrap();
    assert_eq!(removed, doomed.len() - absent.len());

    let left: HashMap<CtKey, CtEntry> = map.lookup_all().unwrap().into_iter().collect();
    let expected: HashMap<CtKey, CtEntry> = written
        .into_iter()
        .filter(|(k, _)| !doomed.contains(k))
        .collect();
    assert_eq!(left, expected);

    // Per entry, the same.
    map.force_per_entry();
    let more: Vec<CtKey> = (1..10_000).step_by(3).map(key).collect();
    assert_eq!(map.delete(&more).unwrap(), more.len());
    assert_eq!(map.delete(&more).unwrap(), 0, "already gone");
    assert_eq!(map.lookup_all().unwrap().len(), expected.len() - more.len());
}

#[test]
fn a_typed_view_of_the_wrong_size_is_refused() {
    let k = Kernel::load();
    let err = BatchMap::<u32, CtEntry>::open(&k.pin_dir().join(MAP_CONNTRACK))
        .err()
        .expect("a u32 key on the conntrack map");
    assert!(err.to_string().contains("restart the agent"), "{err}");
}

#[test]
fn entries_are_counted_in_batches_or_key_by_key_where_a_map_has_no_batch() {
    let k = Kernel::load();
    let path = k.pin_dir().join(MAP_CONNTRACK);
    assert_eq!(ferry_agent::maps::batch::count_entries(&path).unwrap(), 0);
    let map = conntrack(&k);
    // More than one batch's worth.
    fill(&map, 10_000);
    assert_eq!(
        ferry_agent::maps::batch::count_entries(&path).unwrap(),
        10_000
    );
    // An LPM trie has no batch lookup: counted key by key.
    let mut ranges = ferry_agent::maps::ServiceRanges::open(k.pin_dir()).unwrap();
    for i in 0..3u8 {
        let net = format!("10.{i}.0.0/16").parse().unwrap();
        let range = ferry_common::ServiceRange {
            kind: ferry_common::SERVICE_RANGE_UNALLOCATED,
        };
        ranges.insert(&net, range).unwrap();
    }
    let trie = k.pin_dir().join(ferry_common::MAP_SERVICE_RANGES);
    assert_eq!(ferry_agent::maps::batch::count_entries(&trie).unwrap(), 3);
}
