//! When a change to the objects began, for the network-programming latency:
//! as kube-proxy measures it, from the EndpointSlice's
//! `endpoints.kubernetes.io/last-change-trigger-time` annotation (set by the
//! EndpointSlice controller when a pod or Service change started the
//! update), so the metric covers the whole path from the change to the
//! maps, not only ferry's part.
use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

use k8s_openapi::jiff::Timestamp;

use crate::plan::SliceObject;

pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The trigger-time annotations seen so far, by slice.
#[derive(Debug, Default)]
pub struct TriggerTimes {
    /// None until the first call: what exists at startup is no change.
    seen: Option<BTreeMap<SliceKey, Box<str>>>,
}

/// A slice's (namespace, name).
type SliceKey = (Box<str>, Box<str>);

fn trigger(slice: &SliceObject) -> Option<(&str, SystemTime)> {
    let value = slice.trigger_time.as_deref()?;
    let at = value.parse::<Timestamp>().ok()?;
    Some((value, SystemTime::from(at)))
}

impl TriggerTimes {
    /// The trigger times of slices whose annotation changed since the last
    /// call (a new slice's included); none at the first call. `all`: the
    /// slices are all there are (the others are forgotten); otherwise
    /// they are those that changed.
    pub fn new_triggers(&mut self, slices: &[Arc<SliceObject>], all: bool) -> Vec<SystemTime> {
        let first = self.seen.is_none();
        let seen = self.seen.get_or_insert_with(BTreeMap::new);
        let before = if all {
            std::mem::take(seen)
        } else {
            BTreeMap::new()
        };
        let mut fresh = Vec::new();
        for slice in slices {
            let Some((value, at)) = trigger(slice) else {
                continue;
            };
            let key = (slice.namespace.clone(), slice.name.clone());
            let was = if all {
                before.get(&key)
            } else {
                seen.get(&key)
            };
            if !first && was.map(|w| &**w) != Some(value) {
                fresh.push(at);
            }
            seen.insert(key, value.into());
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
