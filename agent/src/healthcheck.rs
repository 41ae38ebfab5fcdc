//! healthCheckNodePort servers, with kube-proxy's semantics: for a
//! LoadBalancer Service with externalTrafficPolicy Local, the load balancer
//! probes every node on this port; 200 while the node has a ready local
//! endpoint, 503 otherwise, and a JSON body naming the Service and the
//! local endpoint count.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use hyper::{StatusCode, header::HeaderName};
use tokio::{net::TcpListener, task::JoinHandle};

use crate::{
    http_server::{Handler, Limits, Reply, Server},
    plan::HealthCheck,
};

type Shared = Arc<Mutex<BTreeMap<u16, HealthCheck>>>;

/// Open connections over all the healthCheckNodePorts: a load balancer
/// probes each port every few seconds from a few addresses.
const MAX_CONNECTIONS: usize = 256;

pub struct HealthChecks {
    state: Shared,
    servers: BTreeMap<u16, JoinHandle<()>>,
    /// One connection cap for every port.
    http: Arc<Server>,
}

impl Default for HealthChecks {
    fn default() -> Self {
        Self::with_limits(Limits {
            max_connections: MAX_CONNECTIONS,
            ..Limits::default()
        })
    }
}

/// The HTTP response for `check` (None: the port is no longer served).
pub fn response(check: Option<&HealthCheck>) -> Reply {
    let (status, body) = match check {
        Some(c) => (
            if c.local_endpoints > 0 {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            serde_json::json!({
                "service": {"namespace": c.namespace, "name": c.name},
                "localEndpoints": c.local_endpoints,
                "serviceProxyHealthy": true,
            })
            .to_string(),
        ),
        None => (StatusCode::NOT_FOUND, String::from("{}")),
    };
    Reply::new(status, "application/json", body)
        .with_header(HeaderName::from_static("x-content-type-options"), "nosniff")
}

/// One port's answers: any path, as kube-proxy's.
struct Port {
    port: u16,
    state: Shared,
}

impl Handler for Port {
    async fn reply(&self, _path: &str) -> Reply {
        response(self.state.lock().expect("health state").get(&self.port))
    }
}

impl HealthChecks {
    pub fn with_limits(limits: Limits) -> Self {
        Self {
            state: Shared::default(),
            servers: BTreeMap::new(),
            http: Server::new(limits),
        }
    }

    /// Serve exactly `desired`: new ports start listening, gone ones stop,
    /// counts change in place.
    pub fn sync(&mut self, desired: &BTreeMap<u16, HealthCheck>) {
        *self.state.lock().expect("health state") = desired.clone();
        self.servers.retain(|port, task| {
            // A server that ended (its port could not be bound) is started
            // again below: the next sync retries it.
            let keep = desired.contains_key(port) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for port in desired.keys() {
            if self.servers.contains_key(port) {
                continue;
            }
            let (port, state, http) = (*port, self.state.clone(), self.http.clone());
            self.servers
                .insert(port, tokio::spawn(bind_and_serve(http, port, state)));
        }
    }
}

async fn bind_and_serve(http: Arc<Server>, port: u16, state: Shared) {
    let listener = match TcpListener::bind(("0.0.0.0", port)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(port, error = %e, "cannot listen on the healthCheckNodePort; the load balancer will see this node as down");
            return;
        }
    };
    tracing::info!(port, "serving healthCheckNodePort");
    serve(http, listener, port, state).await
}

/// Answer for `port`'s health check on `listener`.
async fn serve(http: Arc<Server>, listener: TcpListener, port: u16, state: Shared) {
    http.serve(listener, Port { port, state }).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_server::tests::exchange;

    fn check(n: usize) -> HealthCheck {
        HealthCheck {
            namespace: "default".into(),
            name: "web".into(),
            local_endpoints: n,
        }
    }

    /// The responses on the wire, as kube-proxy's.
    #[tokio::test]
    async fn ok_with_local_endpoints_unavailable_without() {
        let state = Shared::default();
        state.lock().unwrap().insert(32000, check(2));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let http = Server::new(Limits::default());
        tokio::spawn(serve(http, listener, 32000, state.clone()));
        let get = "GET / HTTP/1.1\r\nHost: node:32000\r\n\r\n";

        let ok = exchange(addr, get).await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("\r\nContent-Type: application/json\r\n"),
            "{ok}"
        );
        assert!(
            ok.contains("\r\nX-Content-Type-Options: nosniff\r\n"),
            "{ok}"
        );
        assert!(ok.contains("\r\nConnection: close\r\n"), "{ok}");
        let body = ok.split("\r\n\r\n").nth(1).unwrap();
        assert!(
            ok.contains(&format!("\r\nContent-Length: {}\r\n", body.len())),
            "{ok}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["service"]["namespace"], "default");
        assert_eq!(json["service"]["name"], "web");
        assert_eq!(json["localEndpoints"], 2);
        assert_eq!(json["serviceProxyHealthy"], true);

        state.lock().unwrap().insert(32000, check(0));
        // Any path, as kube-proxy answers.
        let down = exchange(addr, "GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n").await;
        assert!(
            down.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{down}"
        );
        assert!(down.contains("\"localEndpoints\":0"));

        state.lock().unwrap().clear();
        let gone = exchange(addr, get).await;
        assert!(gone.starts_with("HTTP/1.1 404 Not Found\r\n"), "{gone}");
        assert!(gone.ends_with("\r\n\r\n{}"), "{gone}");
    }
}
