//! `--source kube`: Services, EndpointSlices and Nodes from the Kubernetes
//! API, through kube-rs reflectors (list, then watch from the list's
//! resourceVersion, relist on 410). A reflector swaps its store only once a
//! relist is complete, and watch errors are retried with backoff while the
//! stores keep their last state: the dataplane is never flushed by an API
//! outage, it just stops following changes until the API is back.
use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use tokio::sync::Notify;

use super::{Snapshot, Source};
use crate::plan::Objects;

/// Services kube-proxy leaves alone, and so does ferry: another proxy
/// serves them (service-proxy-name), or they are headless.
pub const SERVICE_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot read the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no Kubernetes API configuration: not in a cluster (no service account) and no --kubeconfig given: {0}"
    )]
    Infer(kube::config::InferConfigError),
    #[error("building the API client failed: {0}")]
    Client(kube::Error),
}

/// A client from `kubeconfig`, or from the in-cluster service account.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubeError> {
    let config = match kubeconfig {
        Some(path) => {
            let err = |source| KubeError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kc = Kubeconfig::read_from(path).map_err(err)?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(err)?
        }
        None => Config::infer().await.map_err(KubeError::Infer)?,
    };
    Client::try_from(config).map_err(KubeError::Client)
}

/// The three reflectors and a signal that any of them changed.
pub struct KubeSource {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    changed: Arc<Notify>,
    /// All three lists are complete.
    ready: bool,
    /// A change was noticed then and is not applied yet.
    pending: Option<Instant>,
}

impl KubeSource {
    /// Start the watches (on the current tokio runtime).
    pub fn start(client: Client) -> Self {
        tracing::info!(
            "watching Services, EndpointSlices and Nodes; the first sync waits for all three lists"
        );
        let changed = Arc::new(Notify::new());
        let services = spawn_reflector(
            Api::<Service>::all(client.clone()),
            watcher::Config::default().labels(SERVICE_SELECTOR),
            "Service",
            changed.clone(),
        );
        let slices = spawn_reflector(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default(),
            "EndpointSlice",
            changed.clone(),
        );
        let nodes = spawn_reflector(
            Api::<Node>::all(client),
            watcher::Config::default(),
            "Node",
            changed.clone(),
        );
        Self {
            services,
            slices,
            nodes,
            changed,
            ready: false,
            pending: None,
        }
    }

    /// Resolves once every store holds a complete first list.
    async fn wait_ready(&self) {
        let _ = self.services.wait_until_ready().await;
        let _ = self.slices.wait_until_ready().await;
        let _ = self.nodes.wait_until_ready().await;
    }

    /// The objects as the stores hold them now.
    fn objects(&self) -> Objects {
        Objects {
            services: self
                .services
                .state()
                .iter()
                .map(|o| (**o).clone())
                .collect(),
            slices: self.slices.state().iter().map(|o| (**o).clone()).collect(),
            nodes: self.nodes.state().iter().map(|o| (**o).clone()).collect(),
        }
    }

    /// Resolves when a store changed since the last call.
    async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Forget a pending change signal (the caller is about to read the
    /// stores anyway).
    fn drain_changes(&self) {
        let _ = futures::FutureExt::now_or_never(self.changed.notified());
    }
}

impl Source for KubeSource {
    fn name(&self) -> String {
        "kube".into()
    }

    async fn next(&mut self) -> Snapshot {
        if !self.ready {
            self.wait_ready().await;
            self.ready = true;
            self.drain_changes();
        } else {
            if self.pending.is_none() {
                self.changed().await;
                self.pending = Some(Instant::now());
            }
            // Changes arrive in bursts (a rollout touches many slices):
            // let them pile up, then apply once.
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.drain_changes();
        }
        Snapshot {
            objects: self.objects(),
            problems: Vec::new(),
            seen: self.pending.take().unwrap_or_else(Instant::now),
        }
    }
}

fn spawn_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: &'static str,
    changed: Arc<Notify>,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init) => {}
                Ok(watcher::Event::InitApply(_)) => {}
                Ok(_) => changed.notify_one(),
                Err(e) => tracing::warn!(
                    kind,
                    error = %e,
                    "watch failed; retrying with backoff, the dataplane keeps its current state"
                ),
            }
        }
    });
    reader
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_selector_leaves_out_exactly_the_labels_the_file_source_skips() {
        let labels: Vec<String> = super::super::NOT_PROXIED_LABELS
            .iter()
            .map(|l| format!("!{l}"))
            .collect();
        assert_eq!(super::SERVICE_SELECTOR, labels.join(","));
    }
}
