//! healthCheckNodePort servers, with kube-proxy's semantics: for a
//! LoadBalancer Service with externalTrafficPolicy Local, the load balancer
//! probes every node on this port; 200 while the node has a ready local
//! endpoint, 503 otherwise, and a JSON body naming the Service and the
//! local endpoint count.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use tokio::{io::AsyncWriteExt, net::TcpListener, task::JoinHandle};

use crate::plan::HealthCheck;

type Shared = Arc<Mutex<BTreeMap<u16, HealthCheck>>>;

#[derive(Default)]
pub struct HealthChecks {
    state: Shared,
    servers: BTreeMap<u16, JoinHandle<()>>,
}

/// The HTTP response for `check` (None: the port is no longer served).
pub fn response(check: Option<&HealthCheck>) -> String {
    let (status, body) = match check {
        Some(c) => (
            if c.local_endpoints > 0 {
                "200 OK"
            } else {
                "503 Service Unavailable"
            },
            serde_json::json!({
                "service": {"namespace": c.namespace, "name": c.name},
                "localEndpoints": c.local_endpoints,
                "serviceProxyHealthy": true,
            })
            .to_string(),
        ),
        None => ("404 Not Found", String::from("{}")),
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

impl HealthChecks {
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
            let state = self.state.clone();
            let port = *port;
            self.servers.insert(port, tokio::spawn(serve(port, state)));
        }
    }
}

async fn serve(port: u16, state: Shared) {
    let listener = match TcpListener::bind(("0.0.0.0", port)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(port, error = %e, "cannot listen on the healthCheckNodePort; the load balancer will see this node as down");
            return;
        }
    };
    tracing::info!(port, "serving healthCheckNodePort");
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            // Read the request head; its content does not matter.
            let _ = crate::metrics::read_request_head(&mut stream).await;
            let reply = response(state.lock().expect("health state").get(&port));
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(n: usize) -> HealthCheck {
        HealthCheck {
            namespace: "default".into(),
            name: "web".into(),
            local_endpoints: n,
        }
    }

    #[test]
    fn ok_with_local_endpoints_unavailable_without() {
        let ok = response(Some(&check(2)));
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        let body = ok.split("\r\n\r\n").nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["service"]["namespace"], "default");
        assert_eq!(json["service"]["name"], "web");
        assert_eq!(json["localEndpoints"], 2);
        let down = response(Some(&check(0)));
        assert!(
            down.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{down}"
        );
        assert!(down.contains("\"localEndpoints\":0"));
    }
}
