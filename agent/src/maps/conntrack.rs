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

use super::{OpenError, is_not_found, open_pinned};

pub struct Conntrack(HashMap<MapData, CtKey, CtEntry>);

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
    let dead: HashSet<&CtKey> = dead.iter().collect();
    // Only source-NATed flows look their reply up: a small map, not a
    // second copy of the whole table.
    let snat_replies: StdHashMap<&CtKey, &CtEntry> = entries
        .iter()
        .filter(|(k, e)| k.direction == CT_DIR_REPLY && e.flags & FLAG_SOURCE_NAT != 0)
        .map(|(k, e)| (k, e))
        .collect();
    let mut summary = ConntrackSummary::default();
    for (key, entry) in entries {
        if key.direction != CT_DIR_ORIGINAL || dead.contains(key) {
            continue;
        }
        *summary.flows.entry(key.protocol).or_default() += 1;
        if entry.flags & FLAG_SOURCE_NAT == 0 {
            continue;
        }
        let reply_key = partner_key(key, entry);
        let holder = snat_replies
            .get(&reply_key)
            .filter(|r| partner_key(&reply_key, r) == *key)
            .copied()
            .unwrap_or(entry);
        let (state, flags, expires) = (holder.state, holder.flags, holder.expires_ns);
        if !snat_tuple_reusable(state, flags, expires, now_ns, key.protocol) {
            let backend = (Ipv4Addr::from(entry.nat_addr), entry.nat_port);
            *summary.snat_ports.entry(backend).or_default() += 1;
        }
    }
    summary
}

/// What one garbage collection did and saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Entries removed.
    pub removed: usize,
    /// The flows left, as the walk saw them.
    pub summary: ConntrackSummary,
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
        open_pinned(pin_dir, MAP_CONNTRACK).map(Self)
    }

    /// Every entry. Entries that vanish while iterating are skipped.
    pub fn entries(&self) -> Result<Vec<(CtKey, CtEntry)>, MapError> {
        let mut out = Vec::new();
        for item in self.0.iter() {
            match item {
                Ok(kv) => out.push(kv),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// One entry, if present (a lookup from user space leaves the LRU
    /// order alone).
    pub fn get(&self, key: &CtKey) -> Result<Option<CtEntry>, MapError> {
        super::found(self.0.get(key, 0))
    }

    pub fn insert(&mut self, key: CtKey, entry: CtEntry) -> Result<(), MapError> {
        self.0.insert(key, entry, 0)
    }

    /// Remove one entry; one already gone is fine.
    pub fn remove(&mut self, key: &CtKey) -> Result<(), MapError> {
        match self.0.remove(key) {
            Err(e) if !is_not_found(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Remove the flows whose entries have all expired at `now_ns`.
    /// Returns how many entries were removed.
    pub fn collect_garbage(&mut self, now_ns: u64) -> Result<usize, MapError> {
        self.collect_garbage_and_count(now_ns).map(|r| r.removed)
    }

    /// `collect_garbage`, also counting what the same walk leaves in place
    /// (the metrics' conntrack gauges: one walk, not one more per scrape).
    pub fn collect_garbage_and_count(&mut self, now_ns: u64) -> Result<GcReport, MapError> {
        let snapshot = self.entries()?;
        let dead = dead_keys(&snapshot, now_ns);
        let summary = summarize(&snapshot, &dead, now_ns);
        let removed = self.remove_dead(dead, now_ns)?;
        Ok(GcReport { removed, summary })
    }

    /// `collect_garbage` judging from `snapshot`, an earlier `entries()`:
    /// what it names dead is removed only if it is still dead now.
    pub fn collect_garbage_from(
        &mut self,
        snapshot: &[(CtKey, CtEntry)],
        now_ns: u64,
    ) -> Result<usize, MapError> {
        self.remove_dead(dead_keys(snapshot, now_ns), now_ns)
    }

    /// Remove the keys of `dead` (judged from a snapshot) that are still
    /// dead at `now_ns`.
    fn remove_dead(&mut self, dead: Vec<CtKey>, now_ns: u64) -> Result<usize, MapError> {
        let mut removed = 0;
        for key in dead {
            // The snapshot is old by now: a packet may have refreshed the
            // flow, or a new connection reused its tuple and wrote fresh
            // entries under the same keys. Judge the entries as they are
            // now, so a live flow is never removed.
            let current = match self.0.get(&key, 0) {
                Ok(entry) => entry,
                Err(e) if is_not_found(&e) => continue,
                Err(e) => return Err(e),
            };
            let partner_k = partner_key(&key, &current);
            let partner = match self.0.get(&partner_k, 0) {
                Ok(p) if partner_key(&partner_k, &p) == key => Some(p),
                Ok(_) => None,
                Err(e) if is_not_found(&e) => None,
                Err(e) => return Err(e),
            };
            if !is_dead(&current, partner.as_ref(), now_ns) {
                continue;
            }
            match self.0.remove(&key) {
                Ok(()) => removed += 1,
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }
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
}
