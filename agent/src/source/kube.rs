//! `--source kube`: Services, EndpointSlices, Nodes and ServiceCIDRs from
//! the Kubernetes API, through kube-rs reflectors (list, then watch from the
//! list's resourceVersion, relist on 410). A reflector swaps its store only
//! once a relist is complete, and watch errors are retried with backoff
//! while the stores keep their last state: the dataplane is never flushed
//! by an API outage, it just stops following changes until the API is
//! back. An API server older than 1.33 does not serve ServiceCIDRs
//! (`networking.k8s.io/v1`): that is said once, and the agent goes on
//! without them.
use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
    networking::v1::ServiceCIDR,
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
use tokio::sync::{Notify, watch};

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

/// "group/plural" of every resource the source lists and watches (the
/// core group is ""): what the agent's ClusterRole must grant.
pub fn watched_resources() -> Vec<String> {
    fn of<K: kube::Resource<DynamicType = ()>>() -> String {
        format!("{}/{}", K::group(&()), K::plural(&()))
    }
    vec![
        of::<Service>(),
        of::<EndpointSlice>(),
        of::<Node>(),
        of::<ServiceCIDR>(),
    ]
}

/// The reflectors and a signal that any of them changed.
pub struct KubeSource {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    service_cidrs: Store<ServiceCIDR>,
    /// Turns true when the API server answered the ServiceCIDR list with
    /// 404: that store stays empty for the agent's life.
    service_cidrs_not_served: watch::Receiver<bool>,
    changed: Arc<Notify>,
    /// Every list is complete (or, for ServiceCIDRs, not served).
    ready: bool,
    /// A change was noticed then and is not applied yet.
    pending: Option<Instant>,
}

impl KubeSource {
    /// Start the watches (on the current tokio runtime).
    pub fn start(client: Client) -> Self {
        tracing::info!(
            "watching Services, EndpointSlices, Nodes and ServiceCIDRs; the first sync waits for all their lists"
        );
        let changed = Arc::new(Notify::new());
        let services = spawn_reflector(
            Api::<Service>::all(client.clone()),
            watcher::Config::default().labels(SERVICE_SELECTOR),
            "Service",
            changed.clone(),
            None,
        );
        let slices = spawn_reflector(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default(),
            "EndpointSlice",
            changed.clone(),
            None,
        );
        let nodes = spawn_reflector(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            "Node",
            changed.clone(),
            None,
        );
        let (not_served, service_cidrs_not_served) = watch::channel(false);
        let service_cidrs = spawn_reflector(
            Api::<ServiceCIDR>::all(client),
            watcher::Config::default(),
            "ServiceCIDR",
            changed.clone(),
            Some(NotServed {
                flag: not_served,
                then: "the API server does not serve networking.k8s.io/v1 ServiceCIDRs (before \
                       Kubernetes 1.33): the service CIDRs come from --service-cidr alone; \
                       restart the agent once the API server serves them",
            }),
        );
        Self {
            services,
            slices,
            nodes,
            service_cidrs,
            service_cidrs_not_served,
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
        let mut not_served = self.service_cidrs_not_served.clone();
        tokio::select! {
            _ = self.service_cidrs.wait_until_ready() => {}
            // An error here means the reflector task is gone, which only
            // happens after it flagged the resource as not served.
            _ = not_served.wait_for(|n| *n) => {}
        }
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
            service_cidrs: self
                .service_cidrs
                .state()
                .iter()
                .map(|o| (**o).clone())
                .collect(),
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

/// For a resource older API servers lack: the flag to raise, and what to
/// log once, when the first list answers 404.
struct NotServed {
    flag: watch::Sender<bool>,
    then: &'static str,
}

/// Whether the API server said it has no such resource. Only the first
/// list counts: a resource that was served does not go away with an
/// upgrade, so a later 404 is retried like any other error.
fn not_served(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404)
}

/// What to do about a watch error, for the log.
fn advice<K: kube::Resource<DynamicType = ()>>(e: &watcher::Error) -> String {
    let status = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    };
    if status == Some(403) {
        let group = K::group(&());
        let resource = if group.is_empty() {
            K::plural(&()).into_owned()
        } else {
            format!("{}.{group}", K::plural(&()))
        };
        format!(
            "grant get, list and watch on {resource} to the agent's ClusterRole (deploy/rbac.yaml); \
             retrying with backoff, the dataplane keeps its current state"
        )
    } else {
        "retrying with backoff, the dataplane keeps its current state".into()
    }
}

fn spawn_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: &'static str,
    changed: Arc<Notify>,
    optional: Option<NotServed>,
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
                Err(e) if optional.is_some() && not_served(&e) => {
                    if let Some(NotServed { flag, then }) = &optional {
                        tracing::warn!(kind, error = %e, "{then}");
                        flag.send_replace(true);
                    }
                    // No retries: asking again every few seconds on every
                    // node would only load the API server with 404s.
                    break;
                }
                Err(e) => tracing::warn!(kind, error = %e, "watch failed; {}", advice::<K>(&e)),
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
