//! What both test files build their objects from.
use serde_json::{Value, json};

/// The label selector kube-proxy (and ferry) watch Services with.
pub const KUBE_PROXY_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// A Service object with one port and the given labels.
pub fn service(ns: &str, name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"ports": [{"port": 80}]},
    })
}
