//! When a change to the objects began, for the network-programming latency:
//! as kube-proxy measures it, from the EndpointSlice's
//! `endpoints.kubernetes.io/last-change-trigger-time` annotation (set by the
//! EndpointSlice controller when a pod or Service change started the
//! update), so the metric covers the whole path from the change to the
//! maps, not only ferry's part.
use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::Arc,
    time::SystemTime,
};

use k8s_openapi::jiff::Timestamp;

use crate::plan::SliceObject;

pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The trigger time each slice had when last seen.
#[derive(Debug, Default)]
pub struct TriggerTimes {
    /// None until the first call: what exists at startup is no change.
    /// By a 64-bit hash of the slice's namespace and name rather than the
    /// names themselves: every slice of the cluster has an entry (100,000
    /// of them would hold 14 MB of names), and two slices of even a
    /// million sharing a hash is a chance of about 3 in 10^8, which would
    /// cost one latency sample, not a write.
    seen: Option<HashMap<u64, SystemTime>>,
}

/// The annotation's time; None without one, or when it does not parse.
pub fn parse_trigger_time(value: &str) -> Option<SystemTime> {
    value.parse::<Timestamp>().ok().map(SystemTime::from)
}

fn slice_key(slice: &SliceObject) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&*slice.namespace, &*slice.name).hash(&mut h);
    h.finish()
}

impl TriggerTimes {
    /// The trigger times of slices whose annotation changed since the last
    /// call (a new slice's included); none at the first call. `all`: the
    /// slices are all there are (the others are forgotten); otherwise
    /// they are those that changed.
    pub fn new_triggers(&mut self, slices: &[Arc<SliceObject>], all: bool) -> Vec<SystemTime> {
        let first = self.seen.is_none();
        let seen = self.seen.get_or_insert_with(HashMap::new);
        let before = if all {
            std::mem::take(seen)
        } else {
            HashMap::new()
        };
        let mut fresh = Vec::new();
        for slice in slices {
            let Some(at) = slice.trigger_time else {
                continue;
            };
            let key = slice_key(slice);
            let was = if all {
                before.get(&key)
            } else {
                seen.get(&key)
            };
            if !first && was != Some(&at) {
                fresh.push(at);
            }
            seen.insert(key, at);
        }
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(name: &str, at: Option<&str>) -> Arc<SliceObject> {
        let mut s = k8s_openapi::api::discovery::v1::EndpointSlice {
            address_type: "IPv4".into(),
            ..Default::default()
        };
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("default".into());
        s.metadata.annotations =
            at.map(|a| [(TRIGGER_TIME_ANNOTATION.to_string(), a.to_string())].into());
        Arc::new(SliceObject::new(&s))
    }

    #[test]
    fn only_changed_trigger_times_after_startup_count() {
        let mut t = TriggerTimes::default();
        let a = slice("a", Some("2026-11-30T05:00:00Z"));
        assert!(
            t.new_triggers(std::slice::from_ref(&a), true).is_empty(),
            "startup"
        );
        assert!(
            t.new_triggers(std::slice::from_ref(&a), true).is_empty(),
            "unchanged"
        );
        let a2 = slice("a", Some("2026-11-30T05:00:01.5Z"));
        let b = slice("b", Some("2026-11-30T05:00:02Z"));
        let plain = slice("c", None);
        let got = t.new_triggers(&[a2, b, plain], true);
        let expected: Vec<SystemTime> = ["2026-11-30T05:00:01.5Z", "2026-11-30T05:00:02Z"]
            .iter()
            .map(|s| SystemTime::from(s.parse::<Timestamp>().unwrap()))
            .collect();
        assert_eq!(got, expected);
    }
}
