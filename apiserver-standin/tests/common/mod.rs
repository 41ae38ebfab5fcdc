//! What both test files build their objects from.
use ferry_apiserver_standin::ApiServer;
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

/// Create the two Services kube-proxy's selector leaves out: `name` in
/// "default", labelled for another proxy, and "kube-system/headless".
pub fn create_unproxied(server: &ApiServer, name: &str) {
    server
        .create(service(
            "default",
            name,
            json!({"service.kubernetes.io/service-proxy-name": "x"}),
        ))
        .unwrap();
    server
        .create(service(
            "kube-system",
            "headless",
            json!({"service.kubernetes.io/headless": ""}),
        ))
        .unwrap();
}
