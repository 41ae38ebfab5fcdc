//! Reading and garbage-collecting ferry's conntrack.
//!
//! The kernel refreshes an entry's expiry on every packet of its direction
//! and treats an expired original-direction entry as a new flow. The agent
//! removes a flow's two entries once both have expired: a one-way UDP stream
//! keeps its reply entry alive through its original entry, so a late reply
//! is still translated back.
use std::{collections::HashMap as StdHashMap, path::Path};

use aya::maps::{HashMap, MapData, MapError};
pub use ferry_common::conntrack::partner_key;
use ferry_common::{CtEntry, CtKey, MAP_CONNTRACK};

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
        let snapshot = self.entries()?;
        self.collect_garbage_from(&snapshot, now_ns)
    }

    /// `collect_garbage` judging from `snapshot`, an earlier `entries()`:
    /// what it names dead is removed only if it is still dead now.
    pub fn collect_garbage_from(
        &mut self,
        snapshot: &[(CtKey, CtEntry)],
        now_ns: u64,
    ) -> Result<usize, MapError> {
        let mut removed = 0;
        for key in dead_keys(snapshot, now_ns) {
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
    use ferry_common::CT_DIR_ORIGINAL;

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
}
