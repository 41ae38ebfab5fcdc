//! Objects, the global resourceVersion and the event history.
//!
//! Like etcd, the store has one revision counter for everything; every
//! write bumps it and records an event holding the object before and after.
//! That history is what lets a WATCH resume from any resourceVersion still
//! kept, and what lets a paginated LIST read a consistent snapshot (the
//! current objects with the newer events undone). Anything older than
//! `compacted` is gone, as after an etcd compaction.
use std::{
    collections::{BTreeMap, VecDeque},
    hash::{BuildHasher, RandomState},
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::{Map, Value, json};

mod defaults;

/// How many events the history keeps before it drops the oldest (and
/// advances `compacted`), so a long test does not grow without bound.
const MAX_HISTORY: usize = 100_000;

/// How far the resourceVersion jumps on a simulated restart: far enough
/// that no old resourceVersion can be mistaken for a new one.
const RESTART_RV_JUMP: u64 = 1000;

/// The resources the stand-in serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    Service,
    EndpointSlice,
    Node,
    ServiceCIDR,
}

impl Kind {
    pub(crate) const ALL: [Kind; 4] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Node,
        Kind::ServiceCIDR,
    ];

    /// "Service", "services" or "service" (any case) and so on.
    pub(crate) fn parse(s: &str) -> Result<Kind, ApiError> {
        Kind::ALL
            .into_iter()
            .find(|k| s.eq_ignore_ascii_case(k.kind()) || s.eq_ignore_ascii_case(k.plural()))
            .ok_or_else(|| ApiError::bad_request(format!("unknown kind {s:?}")))
    }

    pub(crate) fn kind(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
            Kind::ServiceCIDR => "ServiceCIDR",
        }
    }

    pub(crate) fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Node => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::ServiceCIDR => "networking.k8s.io/v1",
        }
    }

    /// The API group ("" for core), for Status details.
    pub(crate) fn group(self) -> &'static str {
        match self {
            Kind::Service | Kind::Node => "",
            Kind::EndpointSlice => "discovery.k8s.io",
            Kind::ServiceCIDR => "networking.k8s.io",
        }
    }

    pub(crate) fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Node => "nodes",
            Kind::ServiceCIDR => "servicecidrs",
        }
    }

    pub(crate) fn list_kind(self) -> String {
        format!("{}List", self.kind())
    }

    pub(crate) fn namespaced(self) -> bool {
        !matches!(self, Kind::Node | Kind::ServiceCIDR)
    }

    /// Whether PUT to a missing object creates it. Services allow it
    /// (their registry strategy says so); the other kinds answer 404.
    fn allow_create_on_update(self) -> bool {
        matches!(self, Kind::Service)
    }

    /// The kind named by an object's `kind` and `apiVersion`.
    fn of_object(obj: &Value) -> Result<Kind, ApiError> {
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
        let k = Kind::ALL
            .into_iter()
            .find(|k| k.kind() == kind)
            .ok_or_else(|| {
                ApiError::bad_request(format!("Object 'Kind' is missing or unknown in {obj}"))
            })?;
        let api_version = obj.get("apiVersion").and_then(Value::as_str);
        if api_version != Some(k.api_version()) {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({}) does not match the expected API version ({})",
                api_version.unwrap_or_default(),
                k.api_version()
            )));
        }
        Ok(k)
    }
}

/// An error as the API server reports it: an HTTP code, a machine reason
/// and a message; [`ApiError::status`] renders the `Status` object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: String,
    pub message: String,
    /// `details` of the Status: (name, kind) for errors about one object.
    details: Option<(String, Kind)>,
}

impl ApiError {
    pub(super) fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
            message: message.into(),
            details: None,
        }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub(super) fn not_found(kind: Kind, name: &str) -> Self {
        Self::about(
            404,
            "NotFound",
            kind,
            name,
            format!("{} {name:?} not found", kind.plural()),
        )
    }

    fn already_exists(kind: Kind, name: &str) -> Self {
        Self::about(
            409,
            "AlreadyExists",
            kind,
            name,
            format!("{} {name:?} already exists", kind.plural()),
        )
    }

    fn conflict(kind: Kind, name: &str) -> Self {
        Self::about(
            409,
            "Conflict",
            kind,
            name,
            format!(
                "Operation cannot be fulfilled on {} {name:?}: the object has been modified; \
                 please apply your changes to the latest version and try again",
                kind.plural()
            ),
        )
    }

    fn invalid(kind: Kind, name: &str, what: &str) -> Self {
        Self::about(
            422,
            "Invalid",
            kind,
            name,
            format!("{} {name:?} is invalid: {what}", kind.kind()),
        )
    }

    /// 410 for a WATCH or LIST from a resourceVersion that was compacted.
    pub(super) fn too_old(rv: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {rv} ({oldest})"),
        )
    }

    fn about(code: u16, reason: &str, kind: Kind, name: &str, message: String) -> Self {
        Self {
            details: Some((name.to_string(), kind)),
            ..Self::new(code, reason, message)
        }
    }

    /// The `Status` object a real server sends for this error.
    pub(crate) fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some((name, kind)) = &self.details {
            let mut details = json!({"name": name, "kind": kind.plural()});
            if !kind.group().is_empty() {
                details["group"] = kind.group().into();
            }
            status["details"] = details;
        }
        status
    }
}

/// What a write did, as a watch reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One write in the history.
pub(super) struct Event {
    pub(crate) rv: u64,
    pub(crate) kind: Kind,
    /// The store key (see [`key`]).
    pub(crate) key: String,
    pub(crate) typ: EventType,
    /// The object after the write; for a delete, the final object with the
    /// delete's resourceVersion.
    pub(crate) object: Value,
    /// The object before the write (None for a create).
    pub(crate) prev: Option<Value>,
}

/// The store key of an object, as etcd orders them: "namespace/name" for
/// namespaced kinds, "name" otherwise. LIST returns items in this order and
/// `continue` tokens point into it.
pub(super) fn key(kind: Kind, namespace: Option<&str>, name: &str) -> String {
    if kind.namespaced() {
        format!("{}/{name}", namespace.unwrap_or_default())
    } else {
        name.to_string()
    }
}

pub(super) struct Store {
    objects: BTreeMap<(Kind, String), Value>,
    /// The Services' cluster IPs, each with its Service's key: what is
    /// allocated, without a walk over every Service on each create.
    cluster_ips: BTreeMap<String, String>,
    /// The last resourceVersion handed out.
    rv: u64,
    /// Every write with rv > `compacted`, oldest first.
    history: VecDeque<Event>,
    /// Watches and snapshots can start at `compacted` or later only.
    compacted: u64,
    /// Bumped by a simulated restart: watch streams opened in an earlier
    /// epoch end, as their connections would.
    epoch: u64,
    random: RandomState,
    random_counter: u64,
}

impl Store {
    pub(crate) fn new() -> Self {
        Self {
            objects: BTreeMap::new(),
            cluster_ips: BTreeMap::new(),
            rv: 1,
            history: VecDeque::new(),
            compacted: 1,
            epoch: 0,
            random: RandomState::new(),
            random_counter: 0,
        }
    }

    pub(crate) fn resource_version(&self) -> u64 {
        self.rv
    }

    pub(crate) fn compacted(&self) -> u64 {
        self.compacted
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    pub(crate) fn restart_with_new_history(&mut self) {
        self.history.clear();
        self.rv += RESTART_RV_JUMP;
        self.compacted = self.rv;
        self.epoch += 1;
    }

    pub(crate) fn get(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.objects
            .get(&(kind, key(kind, namespace, name)))
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind, name))
    }

    /// The events after `rv`, oldest first.
    pub(crate) fn events_after(&self, rv: u64) -> impl Iterator<Item = &Event> {
        let start = self.history.partition_point(|e| e.rv <= rv);
        self.history.range(start..)
    }

    /// The objects of `kind` as they were at resourceVersion `at`, by key:
    /// the current ones with every later event undone. None if `at` is
    /// older than the history kept.
    pub(crate) fn snapshot(&self, kind: Kind, at: u64) -> Option<BTreeMap<String, Value>> {
        if at < self.compacted {
            return None;
        }
        let mut objects: BTreeMap<String, Value> = self
            .objects
            .range((kind, String::new())..)
            .take_while(|((k, _), _)| *k == kind)
            .map(|((_, key), obj)| (key.clone(), obj.clone()))
            .collect();
        let later: Vec<&Event> = self.events_after(at).filter(|e| e.kind == kind).collect();
        for e in later.into_iter().rev() {
            match &e.prev {
                Some(prev) => objects.insert(e.key.clone(), prev.clone()),
                None => objects.remove(&e.key),
            };
        }
        Some(objects)
    }

    /// One page of a LIST at resourceVersion `at`: the objects of `kind`
    /// (as they were then) whose key sorts after `after`, that `keep`
    /// accepts, at most `limit` of them, with how many more it accepts
    /// after those (all of them counted if `count_rest`, else 0 or 1: only
    /// whether any is left). The same as filtering [`Store::snapshot`], but
    /// without copying every object of the kind for each page: a LIST of
    /// 100,000 objects in pages of 500 would copy them 200 times. None if
    /// `at` is older than the history kept.
    pub(crate) fn list_page(
        &self,
        kind: Kind,
        at: u64,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&Value) -> bool,
        count_rest: bool,
    ) -> Option<(Vec<(String, Value)>, usize)> {
        if at < self.compacted {
            return None;
        }
        // Every key written since `at`, with what it held then: the object
        // before the first later write (None: it did not exist yet).
        let mut then: BTreeMap<&str, Option<&Value>> = BTreeMap::new();
        for e in self.events_after(at).filter(|e| e.kind == kind) {
            then.entry(e.key.as_str()).or_insert(e.prev.as_ref());
        }
        let start = (kind, after.unwrap_or_default().to_string());
        let untouched = self
            .objects
            .range(start..)
            .take_while(|((k, _), _)| *k == kind)
            .map(|((_, key), obj)| (key.as_str(), obj))
            .filter(|(key, _)| after.is_none_or(|a| *key > a) && !then.contains_key(key));
        let restored = then
            .iter()
            .filter(|(key, _)| after.is_none_or(|a| **key > a))
            .filter_map(|(key, obj)| obj.map(|o| (*key, o)));
        let mut matching = merge_by_key(untouched, restored).filter(|(_, obj)| keep(obj));
        let items: Vec<(String, Value)> = matching
            .by_ref()
            .take(limit)
            .map(|(key, obj)| (key.to_string(), obj.clone()))
            .collect();
        let rest = if count_rest {
            matching.count()
        } else {
            usize::from(matching.next().is_some())
        };
        Some((items, rest))
    }

    /// Create `obj`. `url_namespace` is the namespace from a POST's path;
    /// the object's own namespace must agree with it (or be empty).
    pub(crate) fn create(
        &mut self,
        mut obj: Value,
        url_namespace: Option<&str>,
    ) -> Result<Value, ApiError> {
        let kind = Kind::of_object(&obj)?;
        self.prepare_new(kind, &mut obj, url_namespace)?;
        let (ns, name) = ns_name(&obj);
        let k = key(kind, ns.as_deref(), &name);
        if self.objects.contains_key(&(kind, k.clone())) {
            return Err(ApiError::already_exists(kind, &name));
        }
        self.default_object(kind, &mut obj, None)?;
        Ok(self.commit(kind, k, EventType::Added, obj, None))
    }

    /// Replace the object named by `obj` (a PUT). `path` is the
    /// (namespace, name) of the URL, when there is one. A non-empty
    /// resourceVersion in `obj` must match the current one.
    pub(crate) fn update(
        &mut self,
        mut obj: Value,
        path: Option<(Option<&str>, &str)>,
    ) -> Result<(Value, bool), ApiError> {
        let kind = Kind::of_object(&obj)?;
        let (url_ns, url_name) = match path {
            Some((ns, name)) => (ns, Some(name)),
            None => (None, None),
        };
        let meta = metadata_mut(&mut obj)?;
        check_namespace(kind, meta, url_ns)?;
        if let Some(url_name) = url_name {
            let name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
            if name.is_empty() {
                meta.insert("name".into(), url_name.into());
            } else if name != url_name {
                return Err(ApiError::bad_request(
                    "the name of the object does not match the name on the URL",
                ));
            }
        }
        let (ns, name) = ns_name(&obj);
        let k = key(kind, ns.as_deref(), &name);
        let Some(old) = self.objects.get(&(kind, k.clone())).cloned() else {
            if !kind.allow_create_on_update() {
                return Err(ApiError::not_found(kind, &name));
            }
            if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("resourceVersion");
            }
            return self.create(obj, ns.as_deref()).map(|o| (o, true));
        };
        let wanted_rv = obj["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        if !wanted_rv.is_empty() && wanted_rv != old["metadata"]["resourceVersion"] {
            return Err(ApiError::conflict(kind, &name));
        }
        // Fields the server owns come from the stored object.
        for field in ["uid", "creationTimestamp", "resourceVersion"] {
            obj["metadata"][field] = old["metadata"][field].clone();
        }
        self.default_object(kind, &mut obj, Some(&old))?;
        if obj == old {
            // etcd skips a write that changes nothing: no new
            // resourceVersion, no event.
            return Ok((old, false));
        }
        Ok((
            self.commit(kind, k, EventType::Modified, obj, Some(old)),
            false,
        ))
    }

    /// Create or replace unconditionally (the in-process `apply`).
    pub(crate) fn apply(&mut self, obj: Value) -> Result<Value, ApiError> {
        let kind = Kind::of_object(&obj)?;
        let (ns, name) = ns_name(&obj);
        let ns = ns.or_else(|| kind.namespaced().then(|| "default".to_string()));
        if self.get(kind, ns.as_deref(), &name).is_ok() {
            let mut obj = obj;
            if kind.namespaced() {
                obj["metadata"]["namespace"] = ns.clone().into();
            }
            self.update(obj, None).map(|(o, _)| o)
        } else {
            self.create(obj, None)
        }
    }

    pub(crate) fn delete(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let k = key(kind, namespace, name);
        let old = self
            .objects
            .get(&(kind, k.clone()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        Ok(self.commit(kind, k, EventType::Deleted, old.clone(), Some(old)))
    }

    /// Apply a JSON merge patch (RFC 7386) to an object and store it.
    pub(crate) fn merge_patch(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<Value, ApiError> {
        let mut obj = self.get(kind, namespace, name)?;
        json_merge_patch(&mut obj, patch);
        self.update(obj, Some((namespace, name))).map(|(o, _)| o)
    }

    /// Give the write a new resourceVersion, store it and record the event.
    fn commit(
        &mut self,
        kind: Kind,
        k: String,
        typ: EventType,
        mut obj: Value,
        prev: Option<Value>,
    ) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = self.rv.to_string().into();
        if kind == Kind::Service {
            if let Some(ip) = prev.as_ref().and_then(|p| p["spec"]["clusterIP"].as_str())
                && self.cluster_ips.get(ip) == Some(&k)
            {
                self.cluster_ips.remove(ip);
            }
            if typ != EventType::Deleted
                && let Some(ip) = obj["spec"]["clusterIP"].as_str()
            {
                self.cluster_ips.insert(ip.to_string(), k.clone());
            }
        }
        match typ {
            EventType::Deleted => self.objects.remove(&(kind, k.clone())),
            _ => self.objects.insert((kind, k.clone()), obj.clone()),
        };
        self.history.push_back(Event {
            rv: self.rv,
            kind,
            key: k,
            typ,
            object: obj.clone(),
            prev,
        });
        if self.history.len() > MAX_HISTORY
            && let Some(dropped) = self.history.pop_front()
        {
            self.compacted = dropped.rv;
        }
        obj
    }

    /// Check a new object's metadata and fill in what the server sets on
    /// create: namespace, name (from generateName), uid, creationTimestamp.
    fn prepare_new(
        &mut self,
        kind: Kind,
        obj: &mut Value,
        url_ns: Option<&str>,
    ) -> Result<(), ApiError> {
        let uid = self.uid();
        let suffix = self.name_suffix();
        let meta = metadata_mut(obj)?;
        check_namespace(kind, meta, url_ns)?;
        if kind.namespaced() && !meta.contains_key("namespace") {
            meta.insert("namespace".into(), "default".into());
        }
        if meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
        if name.is_empty() {
            match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => {
                    let name = format!("{prefix}{suffix}");
                    meta.insert("name".into(), name.into());
                }
                _ => {
                    return Err(ApiError::invalid(
                        kind,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ));
                }
            }
        }
        meta.insert("uid".into(), uid.into());
        meta.insert("creationTimestamp".into(), rfc3339_now().into());
        Ok(())
    }

    fn next_random(&mut self) -> u64 {
        self.random_counter += 1;
        self.random.hash_one(self.random_counter)
    }

    /// A random (version 4) UUID.
    fn uid(&mut self) -> String {
        let (a, b) = (self.next_random(), self.next_random());
        let hex = format!("{a:016x}{b:016x}");
        format!(
            "{}-{}-4{}-{:x}{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[13..16],
            8 | ((b >> 60) & 3),
            &hex[17..20],
            &hex[20..32]
        )
    }

    /// Five characters as generateName's suffix (the same alphabet as the
    /// real server: no vowels, no confusable digits).
    fn name_suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut r = self.next_random();
        (0..5)
            .map(|_| {
                let c = ALPHABET[(r % ALPHABET.len() as u64) as usize] as char;
                r /= ALPHABET.len() as u64;
                c
            })
            .collect()
    }
}

/// Two iterators of (key, object), each sorted by key and with no key in
/// both, as one sorted by key.
fn merge_by_key<'a>(
    a: impl Iterator<Item = (&'a str, &'a Value)>,
    b: impl Iterator<Item = (&'a str, &'a Value)>,
) -> impl Iterator<Item = (&'a str, &'a Value)> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some((ka, _)), Some((kb, _))) if kb < ka => b.next(),
        (Some(_), _) => a.next(),
        (None, _) => b.next(),
    })
}

/// (namespace, name) of an object.
pub(super) fn ns_name(obj: &Value) -> (Option<String>, String) {
    let meta = &obj["metadata"];
    (
        meta["namespace"].as_str().map(str::to_string),
        meta["name"].as_str().unwrap_or_default().to_string(),
    )
}

fn metadata_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    if obj.get("metadata").is_none() {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))
}

/// A namespaced object's namespace must match the URL's; a cluster-scoped
/// object has none (the server clears it).
fn check_namespace(
    kind: Kind,
    meta: &mut Map<String, Value>,
    url_ns: Option<&str>,
) -> Result<(), ApiError> {
    if !kind.namespaced() {
        meta.remove("namespace");
        return Ok(());
    }
    let body_ns = meta
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match url_ns {
        Some(url_ns) if body_ns.is_empty() => {
            meta.insert("namespace".into(), url_ns.into());
        }
        Some(url_ns) if body_ns != url_ns => {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        _ if body_ns.is_empty() => {
            meta.remove("namespace");
        }
        _ => {}
    }
    Ok(())
}

/// RFC 7386: objects merge key by key, null removes, anything else replaces.
fn json_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(t) = target else { return };
    for (k, v) in patch {
        if v.is_null() {
            t.remove(k);
        } else {
            json_merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Now as "2006-01-02T15:04:05Z", the way Kubernetes writes timestamps.
fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a (year, month, day) date (Howard Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
    }

    #[test]
    fn snapshot_undoes_later_events() {
        let mut s = Store::new();
        let svc = |name: &str, v: &str| {
            json!({"kind": "Service", "apiVersion": "v1",
                   "metadata": {"name": name, "namespace": "ns", "labels": {"v": v}}})
        };
        s.create(svc("a", "1"), None).unwrap();
        let at = s.resource_version();
        s.apply(svc("a", "2")).unwrap();
        s.create(svc("b", "1"), None).unwrap();
        s.delete(Kind::Service, Some("ns"), "a").unwrap();
        let snap = s.snapshot(Kind::Service, at).unwrap();
        assert_eq!(snap.keys().collect::<Vec<_>>(), ["ns/a"]);
        assert_eq!(snap["ns/a"]["metadata"]["labels"]["v"], "1");
        assert_eq!(snap["ns/a"]["metadata"]["resourceVersion"], at.to_string());
        // A page reads the same state, in key order.
        let (page, rest) = s
            .list_page(Kind::Service, at, None, 10, |_| true, true)
            .unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].1, snap["ns/a"]);
        assert_eq!(rest, 0);
        s.restart_with_new_history();
        assert!(s.snapshot(Kind::Service, at).is_none());
        assert!(
            s.list_page(Kind::Service, at, None, 10, |_| true, true)
                .is_none()
        );
        assert_eq!(
            s.snapshot(Kind::Service, s.resource_version())
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn pages_read_the_snapshot_in_key_order() {
        let mut s = Store::new();
        let svc = |name: String, v: u32| {
            json!({"kind": "Service", "apiVersion": "v1",
                   "metadata": {"name": name, "namespace": "ns", "labels": {"v": v.to_string()}}})
        };
        for i in 0..30 {
            s.create(svc(format!("s{i:02}"), i % 3), None).unwrap();
        }
        // Another kind sorts around it and must not leak in.
        s.create(
            json!({"kind": "Node", "apiVersion": "v1", "metadata": {"name": "n"}}),
            None,
        )
        .unwrap();
        let at = s.resource_version();
        for i in (0..30).step_by(4) {
            s.apply(svc(format!("s{i:02}"), 7)).unwrap();
        }
        for i in (1..30).step_by(5) {
            s.delete(Kind::Service, Some("ns"), &format!("s{i:02}"))
                .unwrap();
        }
        for i in 0..6 {
            s.create(svc(format!("s{i:02}x"), 0), None).unwrap();
        }
        for (at, keep) in [
            (at, (|_: &Value| true) as fn(&Value) -> bool),
            (at, |o: &Value| o["metadata"]["labels"]["v"] != "1"),
            (s.resource_version(), |o: &Value| {
                o["metadata"]["labels"]["v"] != "1"
            }),
        ] {
            let want: Vec<(String, Value)> = s
                .snapshot(Kind::Service, at)
                .unwrap()
                .into_iter()
                .filter(|(_, o)| keep(o))
                .collect();
            let mut got = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let (page, rest) = s
                    .list_page(Kind::Service, at, after.as_deref(), 4, keep, true)
                    .unwrap();
                got.extend(page.iter().cloned());
                assert_eq!(rest, want.len() - got.len());
                if rest == 0 {
                    break;
                }
                after = Some(page.last().unwrap().0.clone());
            }
            assert_eq!(got, want);
        }
    }
}
