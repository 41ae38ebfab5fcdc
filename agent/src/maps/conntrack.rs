//! Reading and garbage-collecting ferry's conntrack.
//!
//! The kernel refreshes an entry's expiry on every packet of its direction
//! and treats an expired original-direction entry as a new flow. The agent
//! removes a flow's two entries once both have expired: a one-way UDP stream
//! keeps its reply entry alive through its original entry, so a late reply
//! is still translated back.
use std::{
    collections::{BTreeMap, HashMap as StdHashMap, HashSet},
    net::Ipv4Addr,
    path::Path,
};

use aya::maps::{HashMap, MapData, MapError};
pub use ferry_common::conntrack::partner_key;
use ferry_common::{
    CT_DIR_ORIGINAL, CT_DIR_REPLY, CtEntry, CtKey, MAP_CONNTRACK,
    conntrack::{FLAG_SOURCE_NAT, snat_tuple_reusable},
};

use super::{
    OpenError,
    batch::{BatchError, BatchMap, Cursor},
    is_not_found, open_pinned,
};

pub struct Conntrack {
    /// Per-entry access: the lookups and removals that must judge one
    /// entry as it is at that moment.
    map: HashMap<MapData, CtKey, CtEntry>,
    /// The same map (its own fd), read and written in batches.
    batch: BatchMap<CtKey, CtEntry>,
    /// Where the agent's incremental garbage collection is.
    walk: GcWalk,
}

/// A conntrack read or write that failed.
#[derive(Debug, thiserror::Error)]
pub enum CtError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("{0}")]
    Map(#[from] MapError),
}

/// A garbage collection pass in progress: where it is in the map and what
/// it has counted so far.
#[derive(Default)]
struct GcWalk {
    cursor: Cursor,
    tally: SummaryPass,
    removed: usize,
}

/// Should `(key, entry)` be removed at `now_ns`, given its partner's entry?
pub fn is_dead(entry: &CtEntry, partner: Option<&CtEntry>, now_ns: u64) -> bool {
    entry.expires_ns <= now_ns && partner.is_none_or(|p| p.expires_ns <= now_ns)
}

/// The keys among `entries` to remove at `now_ns`.
pub fn dead_keys(entries: &[(CtKey, CtEntry)], now_ns: u64) -> Vec<CtKey> {
    let by_key: StdHashMap<CtKey, CtEntry> = entries.iter().copied().collect();
    entries
        .iter()
        .filter(|(key, entry)| {
            // A partner counts only if it names this entry back: an entry
            // left over from a replaced flow is judged alone.
            let partner_k = partner_key(key, entry);
            let partner = by_key
                .get(&partner_k)
                .filter(|p| partner_key(&partner_k, p) == *key);
            is_dead(entry, partner, now_ns)
        })
        .map(|(key, _)| *key)
        .collect()
}

/// What a garbage collection walk saw of the flows it left in place: the
/// conntrack gauges of `/metrics`, so a scrape never walks the map itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConntrackSummary {
    /// Live flows (counted once, by their original-direction entry) by IP
    /// protocol number.
    pub flows: BTreeMap<u8, u64>,
    /// Source-NAT ports held, by backend (address, port): flows that took a
    /// port of the node's range to that backend and whose tuple a new
    /// connection may not take yet.
    pub snat_ports: BTreeMap<(Ipv4Addr, u16), u64>,
}

/// Count what `entries` hold once `dead` (`dead_keys` at `now_ns`) is gone.
/// A flow counts by its original-direction entry, so a flow is one however
/// many of its entries are present, and a source-NAT claim (direction 2)
/// is none. A source-NATed flow holds its port until `snat_tuple_reusable`
/// says a new connection may take it, judged as the datapath judges it: by
/// the reply entry, the key that holds the tuple (the original entry when
/// the reply entry is gone).
pub fn summarize(entries: &[(CtKey, CtEntry)], dead: &[CtKey], now_ns: u64) -> ConntrackSummary {
    let mut pass = SummaryPass::default();
    pass.add(entries, dead, now_ns);
    pass.finish()
}

/// `summarize` over a map read in slices (a garbage collection pass): each
/// slice is added as it is read, judged at its own time, and the flows
/// are counted when the pass ends. A source-NATed flow's two entries are
/// usually in different slices (they hash to different buckets), so the
/// pass keeps what it needs to pair them: per source-NATed original, its
/// backend and whether it holds its port; per source-NATed reply, the key
/// it names and the same verdict. That is two small records per
/// source-NATed flow, not a copy of the map.
#[derive(Debug, Default)]
pub struct SummaryPass {
    flows: BTreeMap<u8, u64>,
    /// (the reply key it names, its own key, backend, holds its port by
    /// its own entry).
    snat_originals: Vec<(CtKey, CtKey, (Ipv4Addr, u16), bool)>,
    /// reply key -> (the original key it names, holds its port).
    snat_replies: StdHashMap<CtKey, (CtKey, bool)>,
}

impl SummaryPass {
    /// Add `entries` (one slice), with `dead` (the keys of it that are
    /// being removed) left out, judged at `now_ns`.
    pub fn add(&mut self, entries: &[(CtKey, CtEntry)], dead: &[CtKey], now_ns: u64) {
        let dead: HashSet<&CtKey> = dead.iter().collect();
        let holds = |key: &CtKey, e: &CtEntry| {
            !snat_tuple_reusable(e.state, e.flags, e.expires_ns, now_ns, key.protocol)
        };
        for (key, entry) in entries {
            if entry.flags & FLAG_SOURCE_NAT == 0 && key.direction != CT_DIR_ORIGINAL {
                continue;
            }
            if key.direction == CT_DIR_REPLY {
                // The entry that holds a source-NATed tuple (the datapath
                // judges reuse by it).
                let names = partner_key(key, entry);
                self.snat_replies.insert(*key, (names, holds(key, entry)));
                continue;
            }
            // A source-NAT claim (direction 2) is no flow.
            if key.direction != CT_DIR_ORIGINAL || dead.contains(key) {
                continue;
            }
            *self.flows.entry(key.protocol).or_default() += 1;
            if entry.flags & FLAG_SOURCE_NAT != 0 {
                let backend = (Ipv4Addr::from(entry.nat_addr), entry.nat_port);
                let reply = partner_key(key, entry);
                self.snat_originals
                    .push((reply, *key, backend, holds(key, entry)));
            }
        }
    }

    /// The summary of everything added. A source-NATed flow holds its port
    /// as its reply entry says when that entry names the original back,
    /// else as the original entry says.
    pub fn finish(self) -> ConntrackSummary {
        let mut snat_ports = BTreeMap::new();
        for (reply, original, backend, held_by_original) in self.snat_originals {
            let held = self
                .snat_replies
                .get(&reply)
                .filter(|(names, _)| *names == original)
                .map_or(held_by_original, |(_, held)| *held);
            if held {
                *snat_ports.entry(backend).or_default() += 1;
            }
        }
        ConntrackSummary {
            flows: self.flows,
            snat_ports,
        }
    }
}

/// What one garbage collection step did and saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Entries removed by this step.
    pub removed: usize,
    /// Entries this step read.
    pub walked: usize,
    /// The flows left, as the pass saw them: Some when this step finished
    /// a pass over the whole map.
    pub summary: Option<ConntrackSummary>,
}

/// The flows among `entries` that `stale` names: (original key, its reply
/// key when that names it back).
pub fn flows_to(
    entries: &[(CtKey, CtEntry)],
    stale: &[crate::reconcile::targets::StaleFlows],
) -> Vec<(CtKey, Option<CtKey>)> {
    let by_key: StdHashMap<CtKey, CtEntry> = entries.iter().copied().collect();
    entries
        .iter()
        .filter(|(key, entry)| {
            key.direction == ferry_common::CT_DIR_ORIGINAL
                && stale.iter().any(|s| {
                    (key.dst_addr, key.dst_port, key.protocol) == (s.addr, s.port, s.protocol)
                        && (entry.nat_addr, entry.nat_port) == (s.backend.addr, s.backend.port)
                })
        })
        .map(|(key, entry)| {
            let reply = partner_key(key, entry);
            let names_back = by_key
                .get(&reply)
                .is_some_and(|r| partner_key(&reply, r) == *key);
            (*key, names_back.then_some(reply))
        })
        .collect()
}

impl Conntrack {
    pub fn open(pin_dir: &Path) -> Result<Self, OpenError> {
        let map = open_pinned(pin_dir, MAP_CONNTRACK)?;
        let batch = BatchMap::open(&pin_dir.join(MAP_CONNTRACK))?;
        Ok(Self {
            map,
            batch,
            walk: GcWalk::default(),
        })
    }

    /// The map's capacity.
    pub fn max_entries(&self) -> u32 {
        self.batch.max_entries()
    }

    /// Every entry, read in batches (thousands of entries a system call).
    pub fn entries(&self) -> Result<Vec<(CtKey, CtEntry)>, CtError> {
        Ok(self.batch.lookup_all()?)
    }

    /// One entry, if present (a lookup from user space leaves the LRU
    /// order alone).
    pub fn get(&self, key: &CtKey) -> Result<Option<CtEntry>, MapError> {
        super::found(self.map.get(key, 0))
    }

    pub fn insert(&mut self, key: CtKey, entry: CtEntry) -> Result<(), MapError> {
        self.map.insert(key, entry, 0)
    }

    /// Write many entries in batches (tests and benchmarks fill the map
    /// this way).
    pub fn insert_many(&mut self, entries: &[(CtKey, CtEntry)]) -> Result<(), CtError> {
        let (keys, values): (Vec<CtKey>, Vec<CtEntry>) = entries.iter().copied().unzip();
        Ok(self.batch.update(&keys, &values, 0)?)
    }

    /// Remove one entry; one already gone is fine.
    pub fn remove(&mut self, key: &CtKey) -> Result<(), MapError> {
        match self.map.remove(key) {
            Err(e) if !is_not_found(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Remove `keys` whatever their state, in batches; keys already gone
    /// are fine. Returns how many were removed.
    pub fn remove_many(&mut self, keys: &[CtKey]) -> Result<usize, CtError> {
        Ok(self.batch.delete(keys)?)
    }

    /// Remove the flows whose entries have all expired at `now_ns`, in one
    /// pass over the whole map. Returns how many entries were removed.
    pub fn collect_garbage(&mut self, now_ns: u64) -> Result<usize, CtError> {
        self.collect_garbage_and_count(now_ns).map(|r| r.removed)
    }

    /// `collect_garbage`, also counting what the same pass leaves in place
    /// (the metrics' conntrack gauges: one walk, not one more per scrape).
    pub fn collect_garbage_and_count(&mut self, now_ns: u64) -> Result<GcReport, CtError> {
        let mut walk = GcWalk::default();
        loop {
            let step = self.gc_step(&mut walk, now_ns, usize::MAX)?;
            if step.summary.is_some() {
                return Ok(step);
            }
        }
    }

    /// One step of the agent's incremental garbage collection: read the
    /// next `slice` entries of the map (batch lookups, resuming where the
    /// last step stopped), and remove the dead flows among them. The
    /// agent sizes `slice` so that a pass over a full map takes one
    /// `--gc-interval-secs` at a steady rate (`gc_slice`), instead of one
    /// walk of the whole map every interval. `summary` is Some at the end
    /// of each pass: the counts of that whole pass.
    pub fn collect_garbage_slice(
        &mut self,
        now_ns: u64,
        slice: usize,
    ) -> Result<GcReport, CtError> {
        let mut walk = std::mem::take(&mut self.walk);
        let step = self.gc_step(&mut walk, now_ns, slice);
        // A failed step starts the pass again next time (its tally is
        // incomplete); a finished one starts the next pass.
        if step.as_ref().is_ok_and(|s| s.summary.is_none()) {
            self.walk = walk;
        }
        step
    }

    fn gc_step(
        &mut self,
        walk: &mut GcWalk,
        now_ns: u64,
        slice: usize,
    ) -> Result<GcReport, CtError> {
        let mut entries = Vec::new();
        self.batch
            .lookup_next(&mut walk.cursor, slice, &mut entries)?;
        // Judged from the slice: an entry whose partner is in the slice and
        // alive is kept without a look at the map. The rest is judged again
        // entry by entry as it is removed (`remove_dead`), partner looked
        // up wherever it is.
        let candidates = dead_keys(&entries, now_ns);
        let removed = self.remove_dead(candidates, now_ns)?;
        walk.tally.add(&entries, &removed, now_ns);
        walk.removed += removed.len();
        let summary = walk
            .cursor
            .is_done()
            .then(|| std::mem::take(&mut walk.tally).finish());
        Ok(GcReport {
            removed: removed.len(),
            walked: entries.len(),
            summary,
        })
    }

    /// `collect_garbage` judging from `snapshot`, an earlier `entries()`:
    /// what it names dead is removed only if it is still dead now.
    pub fn collect_garbage_from(
        &mut self,
        snapshot: &[(CtKey, CtEntry)],
        now_ns: u64,
    ) -> Result<usize, MapError> {
        self.remove_dead(dead_keys(snapshot, now_ns), now_ns)
            .map(|removed| removed.len())
    }

    /// Remove the keys of `dead` (judged from a snapshot) that are still
    /// dead at `now_ns`; returns the keys removed.
    ///
    /// Entry by entry on purpose, not a batch delete: the check and the
    /// removal must be as close together as they can be. Between them a
    /// packet may refresh the flow, or a new connection reuse its tuple
    /// (under load a client port comes round every few seconds), and a
    /// batch delete would widen that gap from one lookup (about a
    /// microsecond) to the whole batch. The batch reads are where the
    /// walk's cost was; only the dead entries pay these calls.
    fn remove_dead(&mut self, dead: Vec<CtKey>, now_ns: u64) -> Result<Vec<CtKey>, MapError> {
        let mut removed = Vec::new();
        for key in dead {
            // The snapshot is old by now: a packet may have refreshed the
            // flow, or a new connection reused its tuple and wrote fresh
            // entries under the same keys. Judge the entries as they are
            // now, so a live flow is never removed.
            let current = match self.map.get(&key, 0) {
                Ok(entry) => entry,
                Err(e) if is_not_found(&e) => continue,
                Err(e) => return Err(e),
            };
            let partner_k = partner_key(&key, &current);
            let partner = match self.map.get(&partner_k, 0) {
                Ok(p) if partner_key(&partner_k, &p) == key => Some(p),
                Ok(_) => None,
                Err(e) if is_not_found(&e) => None,
                Err(e) => return Err(e),
            };
            if !is_dead(&current, partner.as_ref(), now_ns) {
                continue;
            }
            match self.map.remove(&key) {
                Ok(()) => removed.push(key),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }
}

/// Entries per garbage collection step so that `slices` steps cover a
/// full map of `max_entries`: a pass at a steady rate, not a burst.
pub fn gc_slice(max_entries: u32, slices: u32) -> usize {
    (max_entries as usize)
        .div_ceil(slices.max(1) as usize)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(expires_ns: u64) -> CtEntry {
        CtEntry {
            expires_ns,
            nat_addr: [10, 0, 0, 2],
            nat_port: 8080,
            state: 2,
            flags: 0,
            service_id: 1,
            peer_nat_addr: [0; 4],
            peer_nat_port: 0,
            pad: [0; 6],
        }
    }

    #[test]
    fn partner_of_partner_is_self() {
        let key = CtKey {
            src_addr: [10, 0, 0, 1],
            dst_addr: [10, 96, 0, 10],
            src_port: 40000,
            dst_port: 80,
            protocol: 6,
            direction: CT_DIR_ORIGINAL,
            pad: [0; 2],
        };
        let forward = entry(0);
        let reply_key = partner_key(&key, &forward);
        assert_eq!(reply_key.src_addr, [10, 0, 0, 2]);
        assert_eq!(reply_key.dst_port, 40000);
        let reply = CtEntry {
            nat_addr: key.dst_addr,
            nat_port: key.dst_port,
            ..forward
        };
        assert_eq!(partner_key(&reply_key, &reply), key);
    }

    fn flow(client_port: u16, backend_last: u8) -> [(CtKey, CtEntry); 2] {
        let key = CtKey {
            src_addr: [10, 0, 0, 1],
            dst_addr: [10, 96, 0, 10],
            src_port: client_port,
            dst_port: 80,
            protocol: 17,
            direction: CT_DIR_ORIGINAL,
            pad: [0; 2],
        };
        let original = CtEntry {
            nat_addr: [10, 0, 0, backend_last],
            ..entry(100)
        };
        let reply = CtEntry {
            nat_addr: key.dst_addr,
            nat_port: key.dst_port,
            ..entry(20)
        };
        [(key, original), (partner_key(&key, &original), reply)]
    }

    #[test]
    fn gc_keeps_a_live_pair_and_drops_an_orphan() {
        let [o, r] = flow(1000, 2);
        // The same client flow once went to backend .3; its reply entry
        // was left behind when the flow was replaced.
        let [_, stale_reply] = flow(1000, 3);
        let entries = vec![o, r, stale_reply];
        assert_eq!(dead_keys(&entries, 50), vec![stale_reply.0]);
        assert_eq!(dead_keys(&entries, 100).len(), 3);
    }

    #[test]
    fn a_flow_lives_while_either_direction_does() {
        assert!(!is_dead(&entry(100), None, 50));
        assert!(is_dead(&entry(100), None, 100));
        assert!(!is_dead(&entry(10), Some(&entry(100)), 50));
        assert!(is_dead(&entry(10), Some(&entry(20)), 50));
    }

    #[test]
    fn the_flows_to_a_departed_backend_are_found_with_their_replies() {
        let mut entries: Vec<(CtKey, CtEntry)> = flow(40000, 2).into();
        entries.extend(flow(40001, 3));
        let gone = |last: u8, port: u16| crate::reconcile::targets::StaleFlows {
            addr: [10, 96, 0, 10],
            port,
            protocol: 17,
            backend: ferry_common::Backend {
                addr: [10, 0, 0, last],
                port: 8080,
                pad: [0; 2],
            },
        };
        let found = flows_to(&entries, &[gone(2, 80)]);
        assert_eq!(found, vec![(entries[0].0, Some(entries[1].0))]);
        // Another frontend port, or a backend still serving: nothing.
        assert!(flows_to(&entries, &[gone(2, 53), gone(9, 80)]).is_empty());
    }

    const S: u64 = 1_000_000_000;

    /// A source-NATed flow from an external client to the NodePort
    /// 192.168.0.1:30080, sent to backend 10.244.2.`backend`:8080 from the
    /// node's port `snat_port`; each direction's last packet at the given
    /// time (its expiry follows from the state).
    fn snat_flow(
        client_port: u16,
        backend: u8,
        snat_port: u16,
        (state, flags): (u8, u8),
        original_last: u64,
        reply_last: u64,
    ) -> [(CtKey, CtEntry); 2] {
        use ferry_common::conntrack::timeout_ns;
        let flags = flags | FLAG_SOURCE_NAT;
        let key = CtKey {
            src_addr: [203, 0, 113, 7],
            dst_addr: [192, 168, 0, 1],
            src_port: client_port,
            dst_port: 30080,
            protocol: 6,
            direction: CT_DIR_ORIGINAL,
            pad: [0; 2],
        };
        let original = CtEntry {
            expires_ns: original_last + timeout_ns(state, flags),
            nat_addr: [10, 244, 2, backend],
            nat_port: 8080,
            state,
            flags,
            service_id: 3,
            peer_nat_addr: [192, 168, 0, 1],
            peer_nat_port: snat_port,
            pad: [0; 6],
        };
        let reply_key = partner_key(&key, &original);
        let reply = CtEntry {
            expires_ns: reply_last + timeout_ns(state, flags),
            nat_addr: key.dst_addr,
            nat_port: key.dst_port,
            peer_nat_addr: key.src_addr,
            peer_nat_port: key.src_port,
            ..original
        };
        assert_eq!(partner_key(&reply_key, &reply), key, "a consistent pair");
        [(key, original), (reply_key, reply)]
    }

    #[test]
    fn the_summary_counts_live_flows_once_by_protocol() {
        use ferry_common::conntrack::STATE_TCP_ESTABLISHED;
        let mut entries: Vec<(CtKey, CtEntry)> = Vec::new();
        // Two UDP flows (`flow` expires at 100 and 20): alive at 50.
        entries.extend(flow(1000, 2));
        entries.extend(flow(1001, 2));
        // A TCP flow, both entries present, and one whose reply entry is
        // gone (evicted): both are one flow each.
        let established = (STATE_TCP_ESTABLISHED, 0);
        let [o, r] = snat_flow(2000, 5, 61_000, established, 40 * S, 40 * S);
        let unnat = |(k, e): (CtKey, CtEntry)| {
            let e = CtEntry {
                flags: 0,
                peer_nat_addr: [0; 4],
                peer_nat_port: 0,
                ..e
            };
            (k, e)
        };
        let (o, r) = (unnat(o), unnat(r));
        entries.extend([o, r]);
        let [lonely, _] = snat_flow(2001, 5, 61_001, established, 40 * S, 40 * S);
        entries.push(unnat(lonely));
        // A source-NAT claim is no flow.
        let mut claim = r;
        claim.0.direction = ferry_common::CT_DIR_CLAIM;
        entries.push(claim);

        let now = 50;
        let summary = summarize(&entries, &dead_keys(&entries, now), now);
        assert_eq!(summary.flows, BTreeMap::from([(6, 2), (17, 2)]));
        assert!(summary.snat_ports.is_empty(), "{summary:?}");

        // At 100 the UDP flows have expired: the walk removes them, and
        // the summary is what it leaves.
        let now = 100;
        let summary = summarize(&entries, &dead_keys(&entries, now), now);
        assert_eq!(summary.flows, BTreeMap::from([(6, 2)]));
    }

    #[test]
    fn snat_ports_are_counted_per_backend_while_a_new_connection_may_not_take_them() {
        use ferry_common::conntrack::{FLAG_CLOSED, STATE_TCP_CLOSING, STATE_TCP_ESTABLISHED};
        let now = 100 * S;
        let established = (STATE_TCP_ESTABLISHED, 0);
        let closed = (STATE_TCP_CLOSING, FLAG_CLOSED);
        let mut entries: Vec<(CtKey, CtEntry)> = Vec::new();
        // Backend .5: two open connections.
        entries.extend(snat_flow(3000, 5, 61_000, established, now - S, now - S));
        entries.extend(snat_flow(3001, 5, 61_001, established, now - S, now - S));
        // Backend .6: one open connection, and one closed 5 s ago whose
        // port has rested (free for a new connection, though its entries
        // live on for another 5 s).
        entries.extend(snat_flow(3002, 6, 61_000, established, now - S, now - S));
        entries.extend(snat_flow(3003, 6, 61_002, closed, now - 5 * S, now - 5 * S));
        // Backend .7: closed, and its original entry is old, but the reply
        // entry (the one that holds the tuple) saw the last ACK 0.5 s ago:
        // still resting, still held.
        entries.extend(snat_flow(3004, 7, 61_000, closed, now - 5 * S, now - S / 2));

        let summary = summarize(&entries, &dead_keys(&entries, now), now);
        let backend = |last: u8| (Ipv4Addr::new(10, 244, 2, last), 8080);
        assert_eq!(
            summary.snat_ports,
            BTreeMap::from([(backend(5), 2), (backend(6), 1), (backend(7), 1)])
        );
        // Every one of them is a live flow.
        assert_eq!(summary.flows, BTreeMap::from([(6, 5)]));
    }

    #[test]
    fn a_pass_in_slices_counts_what_one_walk_counts() {
        use ferry_common::conntrack::{FLAG_CLOSED, STATE_TCP_CLOSING, STATE_TCP_ESTABLISHED};
        let now = 100 * S;
        let established = (STATE_TCP_ESTABLISHED, 0);
        let closed = (STATE_TCP_CLOSING, FLAG_CLOSED);
        let mut entries: Vec<(CtKey, CtEntry)> = Vec::new();
        entries.extend(snat_flow(3000, 5, 61_000, established, now - S, now - S));
        entries.extend(snat_flow(3003, 6, 61_002, closed, now - 5 * S, now - 5 * S));
        entries.extend(snat_flow(3004, 7, 61_000, closed, now - 5 * S, now - S / 2));
        entries.extend(flow(1000, 2));
        let [lonely, _] = snat_flow(3005, 8, 61_003, established, now - S, now - S);
        entries.push(lonely);
        let whole = summarize(&entries, &dead_keys(&entries, now), now);
        // The UDP flow has expired by now: four TCP flows.
        assert_eq!(whole.flows, BTreeMap::from([(6, 4)]), "{whole:?}");
        // Every split, the reply before or after its original.
        for at in 0..=entries.len() {
            for reversed in [false, true] {
                let (a, b) = entries.split_at(at);
                let (first, second) = if reversed { (b, a) } else { (a, b) };
                let mut pass = SummaryPass::default();
                for part in [first, second] {
                    pass.add(part, &dead_keys(part, now), now);
                }
                assert_eq!(pass.finish(), whole, "split at {at}, reversed {reversed}");
            }
        }
    }

    #[test]
    fn a_slice_covers_a_full_map_in_the_given_steps() {
        assert_eq!(gc_slice(524_288, 10), 52_429);
        assert!(gc_slice(524_288, 10) * 10 >= 524_288);
        assert_eq!(gc_slice(100, 0), 100);
        assert_eq!(gc_slice(0, 10), 1);
    }
}
