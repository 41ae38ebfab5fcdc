//! What ferry keeps of each Service and EndpointSlice: only what the plan
//! reads, parsed once when the object arrives. A node holds every Service
//! and slice of the cluster; as k8s-openapi objects, 100,000 Services with
//! 10 endpoints each took 740 MB (an endpoint alone is over 400 bytes of
//! mostly empty optional fields), kept as below they take a small fraction
//! of that. Nothing the plan reads is lost: a field that does not parse is
//! kept as written, so its problem is still reported with its path.
use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use k8s_openapi::api::{
    core::v1::Service,
    discovery::v1::{EndpointHints, EndpointPort, EndpointSlice},
};

use super::{
    ServiceId,
    endpoints::SERVICE_NAME_LABEL,
    problem::Problem,
    services::{self, ParsedService},
};
use crate::latency::{TRIGGER_TIME_ANNOTATION, parse_trigger_time};

/// A Service as ferry keeps it: parsed, with what parsing found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceObject {
    pub id: ServiceId,
    /// None: not proxied (headless, ExternalName, no ClusterIP yet).
    pub parsed: Option<ParsedService>,
    /// What could not be used, with field paths.
    pub problems: Box<[Problem]>,
}

impl ServiceObject {
    pub fn new(svc: &Service) -> Self {
        let mut problems = Vec::new();
        let parsed = services::parse_service(svc, &mut problems);
        Self {
            id: super::incremental::service_id(svc),
            parsed,
            problems: problems.into(),
        }
    }
}

/// An EndpointSlice as ferry keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceObject {
    pub namespace: Box<str>,
    pub name: Box<str>,
    /// Its `kubernetes.io/service-name` label ("" without one).
    pub service: Box<str>,
    pub address_type: Box<str>,
    pub ports: Box<[SlicePort]>,
    pub endpoints: Box<[SliceEndpoint]>,
    /// `endpoints.kubernetes.io/last-change-trigger-time` (None: absent,
    /// or not a time).
    pub trigger_time: Option<std::time::SystemTime>,
}

/// One of a slice's `ports`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlicePort {
    pub name: Option<Box<str>>,
    pub port: Option<i32>,
    pub protocol: Option<Box<str>>,
}

impl SlicePort {
    fn new(p: &EndpointPort) -> Self {
        Self {
            name: p.name.as_deref().map(Into::into),
            port: p.port,
            protocol: p.protocol.as_deref().map(Into::into),
        }
    }
}

/// One endpoint of a slice: 24 bytes, against over 400 for k8s-openapi's
/// `Endpoint`, and a million of them at 100,000 Services.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceEndpoint {
    /// The address, when `addresses` is exactly one IPv4 address (nearly
    /// always; otherwise `unusual` holds them as written).
    addr: Ipv4Addr,
    /// `conditions.ready`, `.serving`, `.terminating` as given (None: nil).
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    /// `nodeName`, shared between the endpoints of one node.
    pub node_name: Option<Arc<String>>,
    /// What few endpoints have: addresses that are not one IPv4 address,
    /// topology hints.
    unusual: Option<Box<Unusual>>,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Unusual {
    /// `addresses` as written, when they are not exactly one IPv4 address.
    addresses: Option<Vec<String>>,
    hints: Option<EndpointHints>,
}

impl SliceEndpoint {
    fn new(ep: &k8s_openapi::api::discovery::v1::Endpoint) -> Self {
        let one: Option<Ipv4Addr> = match ep.addresses.as_slice() {
            [one] => one.parse().ok(),
            _ => None,
        };
        let unusual = Unusual {
            addresses: one.is_none().then(|| ep.addresses.clone()),
            hints: ep.hints.clone(),
        };
        let cond = ep.conditions.as_ref();
        Self {
            addr: one.unwrap_or(Ipv4Addr::UNSPECIFIED),
            ready: cond.and_then(|c| c.ready),
            serving: cond.and_then(|c| c.serving),
            terminating: cond.and_then(|c| c.terminating),
            node_name: ep.node_name.as_deref().map(node_name),
            unusual: (unusual != Unusual::default()).then(|| Box::new(unusual)),
        }
    }

    /// Each of `addresses`, or its text when it is no IPv4 address.
    pub fn addresses(&self) -> impl Iterator<Item = Result<Ipv4Addr, &str>> {
        let written = self.unusual.as_ref().and_then(|u| u.addresses.as_ref());
        let one = written.is_none().then_some(Ok(self.addr));
        let written = written.map_or(&[][..], Vec::as_slice);
        one.into_iter()
            .chain(written.iter().map(|a| a.parse().map_err(|_| a.as_str())))
    }

    /// `hints`.
    pub fn hints(&self) -> Option<&EndpointHints> {
        self.unusual.as_ref().and_then(|u| u.hints.as_ref())
    }

    /// This endpoint with `addresses` as given (for tests that move one).
    #[cfg(test)]
    pub fn with_addresses(&self, addresses: &[String]) -> Self {
        let mut ep = k8s_openapi::api::discovery::v1::Endpoint {
            addresses: addresses.to_vec(),
            hints: self.hints().cloned(),
            node_name: self.node_name.as_deref().cloned(),
            ..Default::default()
        };
        ep.conditions = Some(k8s_openapi::api::discovery::v1::EndpointConditions {
            ready: self.ready,
            serving: self.serving,
            terminating: self.terminating,
        });
        Self::new(&ep)
    }
}

impl SliceObject {
    pub fn new(slice: &EndpointSlice) -> Self {
        let meta = &slice.metadata;
        let endpoints = slice.endpoints.iter().map(SliceEndpoint::new).collect();
        Self {
            namespace: meta.namespace.as_deref().unwrap_or("default").into(),
            name: meta.name.as_deref().unwrap_or_default().into(),
            service: meta
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .map_or("", String::as_str)
                .into(),
            address_type: slice.address_type.as_str().into(),
            ports: slice.ports.iter().flatten().map(SlicePort::new).collect(),
            endpoints,
            trigger_time: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(TRIGGER_TIME_ANNOTATION))
                .and_then(|t| parse_trigger_time(t)),
        }
    }

    /// The Service it belongs to.
    pub fn service_id(&self) -> ServiceId {
        (self.namespace.to_string(), self.service.to_string())
    }
}

/// k8s-openapi's hint type has no `Hash`: its JSON is hashed.
impl Hash for SliceObject {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.namespace.hash(state);
        self.name.hash(state);
        self.service.hash(state);
        self.address_type.hash(state);
        self.ports.hash(state);
        self.endpoints.len().hash(state);
        for ep in &self.endpoints {
            ep.addresses().count().hash(state);
            for a in ep.addresses() {
                a.hash(state);
            }
            (ep.ready, ep.serving, ep.terminating).hash(state);
            ep.node_name.hash(state);
            ep.hints().is_some().hash(state);
            if let Some(hints) = ep.hints() {
                serde_json::to_vec(hints).unwrap_or_default().hash(state);
            }
        }
        self.trigger_time.hash(state);
    }
}

/// Node names are few and every endpoint names one: each is kept once.
/// The set only grows with the cluster's node names; should it ever hold
/// more than a cluster could have, it starts over (names stay correct, only
/// less shared).
fn node_name(name: &str) -> Arc<String> {
    const MAX_NAMES: usize = 100_000;
    static NAMES: Mutex<Option<HashMap<String, Arc<String>>>> = Mutex::new(None);
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    let names = names.get_or_insert_with(HashMap::new);
    if let Some(kept) = names.get(name) {
        return kept.clone();
    }
    if names.len() >= MAX_NAMES {
        names.clear();
    }
    let kept = Arc::new(name.to_string());
    names.insert(name.to_string(), kept.clone());
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_small() {
        assert_eq!(std::mem::size_of::<SliceEndpoint>(), 24);
    }

    fn endpoint(addresses: &[&str]) -> SliceEndpoint {
        SliceEndpoint::new(&k8s_openapi::api::discovery::v1::Endpoint {
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        })
    }

    #[test]
    fn addresses_keep_what_does_not_parse() {
        let one = endpoint(&["10.0.0.1"]);
        assert!(one.unusual.is_none());
        assert_eq!(
            one.addresses().collect::<Vec<_>>(),
            [Ok(Ipv4Addr::new(10, 0, 0, 1))]
        );
        let odd = endpoint(&["10.0.0.1", "fd00::1"]);
        assert_eq!(
            odd.addresses().collect::<Vec<_>>(),
            [Ok(Ipv4Addr::new(10, 0, 0, 1)), Err("fd00::1")]
        );
        assert_eq!(
            endpoint(&["nope"]).addresses().collect::<Vec<_>>(),
            [Err("nope")]
        );
        assert_eq!(endpoint(&[]).addresses().count(), 0);
    }

    #[test]
    fn a_kept_slice_has_what_the_plan_reads() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-1", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "web"},
                "annotations": {
                    "endpoints.kubernetes.io/last-change-trigger-time": "2026-11-30T10:00:00Z",
                },
                "managedFields": [{"manager": "kube-controller-manager"}],
            },
            "addressType": "IPv4",
            "endpoints": [
                {
                    "addresses": ["10.244.1.5"], "nodeName": "n1", "zone": "a",
                    "conditions": {"ready": false, "serving": true, "terminating": true},
                    "hints": {"forZones": [{"name": "a"}]},
                    "targetRef": {"kind": "Pod", "name": "web-abc", "namespace": "default"},
                },
                {"addresses": ["10.244.2.5"]},
            ],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }))
        .unwrap();
        let kept = SliceObject::new(&slice);
        assert_eq!(
            (
                &*kept.namespace,
                &*kept.name,
                &*kept.service,
                &*kept.address_type
            ),
            ("default", "web-1", "web", "IPv4")
        );
        assert_eq!(kept.service_id(), ("default".into(), "web".into()));
        assert_eq!(
            &*kept.ports,
            [SlicePort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
            }]
        );
        assert_eq!(
            kept.trigger_time,
            parse_trigger_time("2026-11-30T10:00:00Z")
        );
        assert!(kept.trigger_time.is_some());
        let first = &kept.endpoints[0];
        assert_eq!(
            first.addresses().collect::<Vec<_>>(),
            [Ok(Ipv4Addr::new(10, 244, 1, 5))]
        );
        assert_eq!(
            (first.ready, first.serving, first.terminating),
            (Some(false), Some(true), Some(true))
        );
        assert_eq!(first.node_name.as_deref().map(String::as_str), Some("n1"));
        assert_eq!(first.hints(), slice.endpoints[0].hints.as_ref());
        let second = &kept.endpoints[1];
        assert_eq!((second.ready, second.node_name.as_deref()), (None, None));
    }

    #[test]
    fn endpoints_on_one_node_share_its_name() {
        let a = node_name("n-shared");
        let b = node_name("n-shared");
        assert!(Arc::ptr_eq(&a, &b));
    }
}
