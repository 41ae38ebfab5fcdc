//! `--source kube`: Services, EndpointSlices, Nodes and ServiceCIDRs from
//! the Kubernetes API, through kube-rs watchers (list, then watch from the
//! list's resourceVersion, relist on 410). Services and EndpointSlices are
//! kept as `plan::objects` keeps them (there are as many as the cluster
//! has), Nodes and ServiceCIDRs in kube-rs reflector stores. Every store
//! is swapped only once a relist is complete, and watch errors are retried with backoff
//! while the stores keep their last state: the dataplane is never flushed
//! by an API outage, it just stops following changes until the API is
//! back. An API server older than 1.33 does not serve ServiceCIDRs
//! (`networking.k8s.io/v1`): that is said once, and the agent goes on
//! without them. The client dials `--k8s-api-server` when given (the API
//! server's own address, so no ClusterIP, hence no kube-proxy, is needed),
//! with the credentials of the kubeconfig or of the pod's service account.
use std::{sync::Arc, time::Instant};

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

use std::collections::{BTreeSet, HashMap, HashSet};

use super::{Snapshot, Source};
use crate::{
    config::{ApiServerUrl, KubeApi},
    plan::{Changed, Objects, ServiceId, ServiceObject, SliceObject, incremental::service_id},
};

/// kubectl's copy of the object as last applied (client-side apply).
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

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
    #[error(
        "--k8s-api-server without --kubeconfig uses the pod's service account (token, ca.crt and namespace in \
         /var/run/secrets/kubernetes.io/serviceaccount), which cannot be read: {0}; in a pod, check that the \
         service account token is mounted (automountServiceAccountToken); outside one, add --kubeconfig"
    )]
    InCluster(kube::config::InClusterError),
    #[error("building the API client for {server} failed: {source}")]
    Client { server: String, source: kube::Error },
}

/// An API client, and where it dials (for the log and for advice on errors).
pub struct ApiClient {
    pub client: Client,
    /// "https://10.0.0.1:6443/ (--k8s-api-server)", "https://10.96.0.1:443/
    /// (the kubeconfig's server)", ...
    pub server: String,
}

/// The client configuration: from the kubeconfig, or the pod's service
/// account (in-cluster), with `--k8s-api-server` (when given) in place of
/// the server URL. Nothing is dialled here.
pub async fn config(api: &KubeApi) -> Result<Config, KubeError> {
    let config = match (&api.kubeconfig, &api.api_server) {
        (Some(path), _) => {
            let err = |source| KubeError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kc = Kubeconfig::read_from(path).map_err(err)?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(err)?
        }
        // The service account's token, CA and namespace, as
        // `Config::incluster` reads them, but without needing
        // KUBERNETES_SERVICE_HOST: the URL is replaced below anyway.
        (None, Some(_)) => Config::incluster_dns().map_err(KubeError::InCluster)?,
        (None, None) => Config::infer().await.map_err(KubeError::Infer)?,
    };
    Ok(with_api_server(config, api.api_server.as_ref()))
}

/// `config` dialling `api_server` instead of its own server URL. Every
/// credential stays (token or token file, client certificate, CA, and a
/// kubeconfig's `tls-server-name`): the certificate is verified as
/// always, against the new host unless a TLS server name was set.
pub fn with_api_server(mut config: Config, api_server: Option<&ApiServerUrl>) -> Config {
    if let Some(url) = api_server {
        config.cluster_url = url.uri().clone();
    }
    config
}

/// A client per [`config`].
pub async fn client(api: &KubeApi) -> Result<ApiClient, KubeError> {
    let config = config(api).await?;
    let origin = match (&api.api_server, &api.kubeconfig) {
        (Some(_), _) => "--k8s-api-server",
        (None, Some(_)) => "the kubeconfig's server",
        (None, None) => "in-cluster: the `kubernetes` Service, or ~/.kube/config",
    };
    let server = format!("{} ({origin})", config.cluster_url);
    if api.api_server.as_ref().is_some_and(|u| u.is_plain_http()) {
        tracing::warn!(
            %server,
            "plain http: any token is sent unencrypted; use https outside tests"
        );
    }
    tracing::info!(%server, "Kubernetes API server");
    let client = Client::try_from(config).map_err(|source| KubeError::Client {
        server: server.clone(),
        source,
    })?;
    Ok(ApiClient { client, server })
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

/// What changed since the last snapshot, as the watch events said.
#[derive(Debug, Default)]
struct Pending {
    /// When the first of these changes was noticed.
    since: Option<Instant>,
    /// A store was listed again (after a 410, or an outage): objects may
    /// have gone without a delete event, so everything is planned again.
    everything: bool,
    services: BTreeSet<ServiceId>,
    nodes: bool,
    service_cidrs: bool,
}

impl Pending {
    fn mark(&mut self, change: impl FnOnce(&mut Self)) {
        self.since.get_or_insert_with(Instant::now);
        change(self);
    }
}

/// A (namespace, name).
type Key = (String, String);

/// The Services as ferry keeps them (`ServiceObject`), from the watch
/// events. As kube-rs's reflector store, a list replaces the whole set only
/// once it is complete.
#[derive(Debug, Default)]
struct Services {
    kept: HashSet<KeptService>,
    /// Filled while a list runs.
    relist: Option<HashSet<KeptService>>,
}

/// A kept Service, found by its id without a second copy of the id as the
/// key (100,000 of them: 8 MB).
#[derive(Debug)]
struct KeptService(Arc<ServiceObject>);

impl PartialEq for KeptService {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for KeptService {}

impl std::hash::Hash for KeptService {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.id.hash(state)
    }
}

impl std::borrow::Borrow<ServiceId> for KeptService {
    fn borrow(&self) -> &ServiceId {
        &self.0.id
    }
}

/// The EndpointSlices as ferry keeps them (`SliceObject`), and each
/// Service's, so that a change reads only its Service's slices.
#[derive(Debug, Default)]
struct Slices {
    kept: HashMap<Key, Arc<SliceObject>>,
    /// The same slices by Service (nearly always one each: a `Vec`, not a
    /// set, which would cost a 300-byte node per Service).
    by_service: HashMap<ServiceId, Vec<Arc<SliceObject>>>,
    /// Filled while a list runs.
    relist: Option<HashMap<Key, Arc<SliceObject>>>,
}

impl Slices {
    /// Keep `slice` under `key` (None: deleted). The Services it belonged
    /// to before and after.
    fn set(&mut self, key: Key, slice: Option<Arc<SliceObject>>) -> Vec<ServiceId> {
        let mut touched = Vec::new();
        let old = match &slice {
            Some(s) => self.kept.insert(key, s.clone()),
            None => self.kept.remove(&key),
        };
        if let Some(old) = old {
            let id = old.service_id();
            if let Some(slices) = self.by_service.get_mut(&id) {
                slices.retain(|s| !Arc::ptr_eq(s, &old));
                if slices.is_empty() {
                    self.by_service.remove(&id);
                }
            }
            touched.push(id);
        }
        if let Some(slice) = slice {
            let id = slice.service_id();
            self.by_service.entry(id.clone()).or_default().push(slice);
            touched.push(id);
        }
        touched
    }

    /// A list is complete: what it listed is all there is.
    fn relisted(&mut self) {
        let listed = self.relist.take().unwrap_or_default();
        self.kept.clear();
        self.by_service.clear();
        for (key, slice) in listed {
            self.set(key, Some(slice));
        }
    }
}

/// What the watches share with the source.
#[derive(Debug)]
struct Tracker {
    pending: std::sync::Mutex<Pending>,
    services: std::sync::Mutex<Services>,
    slices: std::sync::Mutex<Slices>,
    changed: Notify,
    /// The kinds whose first list is done (Service, EndpointSlice, Node,
    /// ServiceCIDR): only a later list is a relist.
    listed: watch::Sender<[bool; 4]>,
}

impl Default for Tracker {
    fn default() -> Self {
        Self {
            pending: Default::default(),
            services: Default::default(),
            slices: Default::default(),
            changed: Notify::new(),
            listed: watch::Sender::new([false; 4]),
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("not poisoned")
}

fn key_of(meta: &kube::api::ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

impl Tracker {
    /// A list of `kind` is complete: a relist, unless it is the first
    /// (which the first snapshot, of everything, waits for).
    fn listed(&self, kind: usize) {
        let mut first = false;
        self.listed
            .send_modify(|l| first = !std::mem::replace(&mut l[kind], true));
        if !first {
            self.mark(|p| p.everything = true);
        }
    }

    fn mark(&self, change: impl FnOnce(&mut Pending)) {
        lock(&self.pending).mark(change);
        self.changed.notify_one();
    }

    fn on_service(&self, event: watcher::Event<Service>) {
        let kept = |svc: &Service| Arc::new(ServiceObject::new(svc));
        match event {
            watcher::Event::Apply(svc) => {
                let svc = kept(&svc);
                let id = svc.id.clone();
                lock(&self.services).kept.replace(KeptService(svc));
                self.mark(|p| {
                    p.services.insert(id);
                });
            }
            watcher::Event::Delete(svc) => {
                let id = service_id(&svc);
                lock(&self.services).kept.remove(&id);
                self.mark(|p| {
                    p.services.insert(id);
                });
            }
            watcher::Event::Init => lock(&self.services).relist = Some(HashSet::new()),
            watcher::Event::InitApply(svc) => {
                let svc = kept(&svc);
                let mut services = lock(&self.services);
                // An object the relist did not change stays the one kept:
                // the old set and the new one share it until the swap,
                // rather than holding every Service twice.
                let svc = match services.kept.get(&svc.id) {
                    Some(k) if *k.0 == *svc => k.0.clone(),
                    _ => svc,
                };
                services
                    .relist
                    .get_or_insert_with(HashSet::new)
                    .replace(KeptService(svc));
            }
            watcher::Event::InitDone => {
                {
                    let mut services = lock(&self.services);
                    services.kept = services.relist.take().unwrap_or_default();
                }
                self.listed(0);
            }
        }
    }

    fn on_slice(&self, event: watcher::Event<EndpointSlice>) {
        let kept = |s: &EndpointSlice| Arc::new(SliceObject::new(s));
        match event {
            watcher::Event::Apply(s) => {
                let slice = kept(&s);
                let touched = lock(&self.slices).set(key_of(&s.metadata), Some(slice));
                self.mark(|p| p.services.extend(touched));
            }
            watcher::Event::Delete(s) => {
                let touched = lock(&self.slices).set(key_of(&s.metadata), None);
                self.mark(|p| p.services.extend(touched));
            }
            watcher::Event::Init => lock(&self.slices).relist = Some(HashMap::new()),
            watcher::Event::InitApply(s) => {
                let slice = kept(&s);
                let key = key_of(&s.metadata);
                let mut slices = lock(&self.slices);
                // Unchanged: shared with the set kept until the swap.
                let slice = match slices.kept.get(&key) {
                    Some(k) if **k == *slice => k.clone(),
                    _ => slice,
                };
                slices
                    .relist
                    .get_or_insert_with(HashMap::new)
                    .insert(key, slice);
            }
            watcher::Event::InitDone => {
                lock(&self.slices).relisted();
                self.listed(1);
            }
        }
    }

    fn on_node(&self, event: &watcher::Event<Node>) {
        match event {
            watcher::Event::Apply(_) | watcher::Event::Delete(_) => self.mark(|p| p.nodes = true),
            watcher::Event::InitDone => self.listed(2),
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
    }

    fn on_service_cidr(&self, event: &watcher::Event<ServiceCIDR>) {
        match event {
            watcher::Event::Apply(_) | watcher::Event::Delete(_) => {
                self.mark(|p| p.service_cidrs = true)
            }
            watcher::Event::InitDone => self.listed(3),
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
    }
}

/// The watches, and what changed since the last snapshot.
pub struct KubeSource {
    nodes: Store<Node>,
    service_cidrs: Store<ServiceCIDR>,
    /// Turns true when the API server answered the ServiceCIDR list with
    /// 404: that store stays empty for the agent's life.
    service_cidrs_not_served: watch::Receiver<bool>,
    tracker: Arc<Tracker>,
    /// Every list is complete (or, for ServiceCIDRs, not served).
    ready: bool,
}

impl KubeSource {
    /// Start the watches (on the current tokio runtime).
    pub fn start(api: ApiClient) -> Self {
        let ApiClient { client, server } = api;
        let server: Arc<str> = server.into();
        tracing::info!(
            "watching Services, EndpointSlices, Nodes and ServiceCIDRs; the first sync waits for all their lists"
        );
        let tracker = Arc::new(Tracker::default());
        // Services and slices are kept as ferry keeps them, not as
        // k8s-openapi objects: there are as many as the cluster has.
        let t = tracker.clone();
        spawn_watch(
            watcher(
                Api::<Service>::all(client.clone()),
                watcher::Config::default().labels(SERVICE_SELECTOR),
            ),
            "Service",
            move |e| t.on_service(e),
            server.clone(),
            None,
        );
        let t = tracker.clone();
        spawn_watch(
            watcher(
                Api::<EndpointSlice>::all(client.clone()),
                watcher::Config::default(),
            ),
            "EndpointSlice",
            move |e| t.on_slice(e),
            server.clone(),
            None,
        );
        let t = tracker.clone();
        let nodes = spawn_reflector(
            Api::<Node>::all(client.clone()),
            "Node",
            move |e| t.on_node(e),
            server.clone(),
            None,
        );
        let (not_served, service_cidrs_not_served) = watch::channel(false);
        let t = tracker.clone();
        let service_cidrs = spawn_reflector(
            Api::<ServiceCIDR>::all(client),
            "ServiceCIDR",
            move |e| t.on_service_cidr(e),
            server,
            Some(NotServed {
                flag: not_served,
                then: "the API server does not serve networking.k8s.io/v1 ServiceCIDRs (before \
                       Kubernetes 1.33): the service CIDRs come from --service-cidr alone; \
                       restart the agent once the API server serves them",
            }),
        );
        Self {
            nodes,
            service_cidrs,
            service_cidrs_not_served,
            tracker,
            ready: false,
        }
    }

    /// Resolves once every store holds a complete first list.
    async fn wait_ready(&self) {
        let mut listed = self.tracker.listed.subscribe();
        let _ = listed.wait_for(|l| l[0] && l[1]).await;
        let _ = self.nodes.wait_until_ready().await;
        let mut not_served = self.service_cidrs_not_served.clone();
        tokio::select! {
            _ = self.service_cidrs.wait_until_ready() => {}
            // An error here means the reflector task is gone, which only
            // happens after it flagged the resource as not served.
            _ = not_served.wait_for(|n| *n) => {}
        }
    }

    fn nodes(&self) -> Vec<Node> {
        self.nodes.state().iter().map(|o| (**o).clone()).collect()
    }

    fn service_cidrs(&self) -> Vec<ServiceCIDR> {
        let cidrs = self.service_cidrs.state();
        cidrs.iter().map(|o| (**o).clone()).collect()
    }

    /// The objects as the stores hold them now (the Services and slices
    /// shared with the stores, not copied).
    fn objects(&self) -> Objects {
        Objects {
            services: lock(&self.tracker.services)
                .kept
                .iter()
                .map(|k| k.0.clone())
                .collect(),
            slices: lock(&self.tracker.slices).kept.values().cloned().collect(),
            nodes: self.nodes(),
            service_cidrs: self.service_cidrs(),
        }
    }

    /// The listed Services that exist, and all of their slices, as the
    /// stores hold them now.
    fn objects_of(&self, ids: &BTreeSet<ServiceId>) -> Objects {
        let mut objects = Objects::default();
        let services = lock(&self.tracker.services);
        let slices = lock(&self.tracker.slices);
        for id in ids {
            objects
                .services
                .extend(services.kept.get(id).map(|k| k.0.clone()));
            objects
                .slices
                .extend(slices.by_service.get(id).into_iter().flatten().cloned());
        }
        objects
    }
}

impl Source for KubeSource {
    fn name(&self) -> String {
        "kube".into()
    }

    fn everything(&self) -> Option<Arc<Objects>> {
        Some(Arc::new(self.objects()))
    }

    /// Applied as soon as a change is seen: changes that arrive while the
    /// agent writes the last ones are taken together at the next call.
    async fn next(&mut self) -> Snapshot {
        if !self.ready {
            self.wait_ready().await;
            self.ready = true;
            let first = std::mem::take(&mut *lock(&self.tracker.pending));
            return Snapshot {
                objects: Arc::new(self.objects()),
                changed: Changed::Everything,
                problems: Vec::new(),
                seen: first.since.unwrap_or_else(Instant::now),
            };
        }
        loop {
            // Registered before the check, so a change marked in between
            // still wakes this call.
            let notified = self.tracker.changed.notified();
            let pending = std::mem::take(&mut *lock(&self.tracker.pending));
            let Some(seen) = pending.since else {
                notified.await;
                continue;
            };
            let (objects, changed) = if pending.everything {
                (self.objects(), Changed::Everything)
            } else {
                let mut objects = self.objects_of(&pending.services);
                if pending.nodes {
                    objects.nodes = self.nodes();
                }
                if pending.service_cidrs {
                    objects.service_cidrs = self.service_cidrs();
                }
                let changed = Changed::Some {
                    services: pending.services,
                    nodes: pending.nodes,
                    service_cidrs: pending.service_cidrs,
                };
                (objects, changed)
            };
            return Snapshot {
                objects: Arc::new(objects),
                changed,
                problems: Vec::new(),
                seen,
            };
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

/// What to do about a watch error, for the log; `server` is where the
/// client dials.
fn advice<K: kube::Resource<DynamicType = ()>>(e: &watcher::Error, server: &str) -> String {
    const RETRYING: &str = "retrying with backoff, the dataplane keeps its current state";
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
        return format!(
            "grant get, list and watch on {resource} to the agent's ClusterRole (deploy/rbac.yaml); {RETRYING}"
        );
    }
    if status.is_some() {
        return RETRYING.into();
    }
    match transport_problem(e) {
        Some(Transport::Certificate) => format!(
            "the API server at {server} presented a certificate that does not verify: its host must be \
             one of the certificate's subjectAltNames (give --k8s-api-server a name or address the \
             certificate holds) and the certificate must chain to the CA in use (the service account's \
             ca.crt, or the kubeconfig's); {RETRYING}"
        ),
        Some(Transport::Connect) => format!(
            "cannot connect to the API server at {server}: check the address and port, that the API \
             server listens there, and that this node reaches it (firewall, security group); without \
             kube-proxy, set --k8s-api-server (ConfigMap key k8s-api-server) to the API server's own \
             address, not the `kubernetes` ClusterIP; {RETRYING}"
        ),
        None => RETRYING.into(),
    }
}

/// What kind of failure below HTTP an error is.
#[derive(Debug, PartialEq, Eq)]
enum Transport {
    /// TLS: the server's certificate was refused.
    Certificate,
    /// No connection: refused, timed out, no route, name not resolved.
    Connect,
}

/// Reads the error's whole source chain: kube boxes the transport's errors
/// (hyper, rustls, io), so the chain's text is what is there to go by.
fn transport_problem(e: &(dyn std::error::Error + 'static)) -> Option<Transport> {
    let mut text = String::new();
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused | TimedOut | HostUnreachable | NetworkUnreachable
            ) {
                return Some(Transport::Connect);
            }
        }
        text.push_str(&err.to_string().to_lowercase());
        text.push('\n');
        next = err.source();
    }
    if text.contains("certificate") || text.contains("unknownissuer") {
        Some(Transport::Certificate)
    } else if [
        "connection refused",
        "timed out",
        "dns error",
        "failed to lookup address",
        "no route to host",
        "network is unreachable",
        "client error (connect)",
    ]
    .iter()
    .any(|m| text.contains(m))
    {
        Some(Transport::Connect)
    } else {
        None
    }
}

/// What the dataplane never reads is not kept: the stores hold every Node
/// (and ServiceCIDR) of the cluster, and managedFields, kubectl's copy of
/// the last applied object, owner references and a Node's images and
/// conditions are most of their size. A watch keeps its own
/// resourceVersion, so the stored objects need none of these.
fn trim<K: kube::Resource + 'static>(o: &mut K) {
    let meta = o.meta_mut();
    meta.managed_fields = None;
    meta.owner_references = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
    if let Some(node) = (o as &mut dyn std::any::Any).downcast_mut::<Node>()
        && let Some(status) = node.status.as_mut()
    {
        // A node's images and its capacity and conditions are most of a
        // Node object; the plan reads its addresses.
        status.images = None;
        status.conditions = None;
        status.volumes_attached = None;
        status.volumes_in_use = None;
    }
}

/// A reflector for a kind with few objects (Nodes, ServiceCIDRs): kube-rs
/// keeps them, trimmed.
fn spawn_reflector<K>(
    api: Api<K>,
    kind: &'static str,
    on_event: impl Fn(&watcher::Event<K>) + Send + 'static,
    server: Arc<str>,
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
    let lean = watcher(api, watcher::Config::default()).modify(|o: &mut K| trim(o));
    // The store already holds what an event says when `on_event` sees it.
    let stream = reflector::reflector(writer, lean);
    spawn_watch(stream, kind, move |e| on_event(&e), server, optional);
    reader
}

/// Follow `stream` on its own task, retrying errors with backoff, handing
/// each event to `on_event`.
fn spawn_watch<K>(
    stream: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    kind: &'static str,
    on_event: impl Fn(watcher::Event<K>) + Send + 'static,
    server: Arc<str>,
    optional: Option<NotServed>,
) where
    K: kube::Resource<DynamicType = ()> + Send + 'static,
{
    let stream = stream.default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => on_event(event),
                Err(e) if optional.is_some() && not_served(&e) => {
                    if let Some(NotServed { flag, then }) = &optional {
                        tracing::warn!(kind, error = %e, "{then}");
                        flag.send_replace(true);
                    }
                    // No retries: asking again every few seconds on every
                    // node would only load the API server with 404s.
                    break;
                }
                Err(e) => tracing::warn!(
                    kind,
                    error = %e,
                    "watch failed; {}",
                    advice::<K>(&e, &server)
                ),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(name: &str, service: &str) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.5"]}],
        }))
        .unwrap()
    }

    fn id(name: &str) -> ServiceId {
        ("default".into(), name.into())
    }

    fn services_of(t: &Tracker, service: &str) -> Vec<String> {
        let slices = lock(&t.slices);
        let mut names: Vec<String> = slices
            .by_service
            .get(&id(service))
            .into_iter()
            .flatten()
            .map(|s| s.name.to_string())
            .collect();
        names.sort();
        names
    }

    fn taken(t: &Tracker) -> Pending {
        std::mem::take(&mut *lock(&t.pending))
    }

    #[test]
    fn slice_events_keep_each_services_slices_and_mark_old_and_new_owner() {
        let t = Tracker::default();
        // The first list: kept once it is complete, and no relist marked.
        t.on_slice(watcher::Event::Init);
        t.on_slice(watcher::Event::InitApply(slice("a-1", "a")));
        t.on_slice(watcher::Event::InitApply(slice("a-2", "a")));
        assert!(lock(&t.slices).kept.is_empty(), "not before the list ends");
        t.on_slice(watcher::Event::InitDone);
        assert_eq!(services_of(&t, "a"), ["a-1", "a-2"]);
        assert!(!taken(&t).everything);

        // A slice moves to another Service: both are marked, and it is
        // kept under the new one only.
        t.on_slice(watcher::Event::Apply(slice("a-2", "b")));
        let p = taken(&t);
        assert_eq!(p.services, BTreeSet::from([id("a"), id("b")]));
        assert_eq!(services_of(&t, "a"), ["a-1"]);
        assert_eq!(services_of(&t, "b"), ["a-2"]);

        // Deleted: gone, its Service marked.
        t.on_slice(watcher::Event::Delete(slice("a-1", "a")));
        assert_eq!(taken(&t).services, BTreeSet::from([id("a")]));
        assert!(!lock(&t.slices).by_service.contains_key(&id("a")));

        // A relist that no longer has a-2: once complete it replaces
        // everything, and everything is planned again.
        t.on_slice(watcher::Event::Apply(slice("c-1", "c")));
        let c1 = |t: &Tracker| lock(&t.slices).kept[&id("c-1")].clone();
        let before = c1(&t);
        t.on_slice(watcher::Event::Init);
        t.on_slice(watcher::Event::InitApply(slice("c-1", "c")));
        assert_eq!(services_of(&t, "b"), ["a-2"], "kept until the relist ends");
        t.on_slice(watcher::Event::InitDone);
        assert!(services_of(&t, "b").is_empty());
        assert_eq!(services_of(&t, "c"), ["c-1"]);
        assert_eq!(lock(&t.slices).kept.len(), 1);
        assert!(taken(&t).everything);
        // Listed again unchanged: the object kept before, not a copy.
        assert!(Arc::ptr_eq(&before, &c1(&t)));
        // Changed in a relist: the new one.
        t.on_slice(watcher::Event::Init);
        t.on_slice(watcher::Event::InitApply(slice("c-1", "d")));
        t.on_slice(watcher::Event::InitDone);
        assert!(!Arc::ptr_eq(&before, &c1(&t)));
        assert_eq!(services_of(&t, "d"), ["c-1"]);
    }

    #[test]
    fn service_events_replace_the_kept_service_and_a_delete_removes_it() {
        let t = Tracker::default();
        let svc = |ip: &str| -> Service {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"clusterIP": ip, "ports": [{"port": 80}]},
            }))
            .unwrap()
        };
        t.on_service(watcher::Event::Init);
        t.on_service(watcher::Event::InitApply(svc("10.96.0.1")));
        t.on_service(watcher::Event::InitDone);
        t.on_service(watcher::Event::Apply(svc("10.96.0.2")));
        assert_eq!(taken(&t).services, BTreeSet::from([id("web")]));
        {
            let services = lock(&t.services);
            let kept = &services.kept.get(&id("web")).unwrap().0;
            let parsed = kept.parsed.as_ref().unwrap();
            assert_eq!(
                &*parsed.cluster_ips,
                ["10.96.0.2".parse::<std::net::Ipv4Addr>().unwrap()]
            );
            assert_eq!(services.kept.len(), 1);
        }
        // Listed again unchanged: the object kept before, not a copy.
        let web = |t: &Tracker| lock(&t.services).kept.get(&id("web")).unwrap().0.clone();
        let before = web(&t);
        t.on_service(watcher::Event::Init);
        t.on_service(watcher::Event::InitApply(svc("10.96.0.2")));
        t.on_service(watcher::Event::InitDone);
        assert!(Arc::ptr_eq(&before, &web(&t)));
        taken(&t);
        t.on_service(watcher::Event::Delete(svc("10.96.0.2")));
        assert!(lock(&t.services).kept.is_empty());
        assert_eq!(taken(&t).services, BTreeSet::from([id("web")]));
    }

    #[test]
    fn stored_nodes_keep_what_the_plan_reads_and_nothing_heavy() {
        let mut node: k8s_openapi::api::core::v1::Node =
            serde_json::from_value(serde_json::json!({
                "metadata": {
                    "name": "n1",
                    "labels": {"topology.kubernetes.io/zone": "a"},
                    "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
                    "managedFields": [{"manager": "kubelet"}],
                },
                "spec": {"podCIDR": "10.244.1.0/24"},
                "status": {
                    "addresses": [{"type": "InternalIP", "address": "192.168.1.1"}],
                    "images": [{"names": ["registry.k8s.io/pause:3.10"], "sizeBytes": 320000}],
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "volumesInUse": ["kubernetes.io/csi/x"],
                },
            }))
            .unwrap();
        let kept = {
            let mut n = node.clone();
            n.metadata.managed_fields = None;
            n.metadata
                .annotations
                .as_mut()
                .unwrap()
                .remove(super::LAST_APPLIED);
            let status = n.status.as_mut().unwrap();
            status.images = None;
            status.conditions = None;
            status.volumes_in_use = None;
            n
        };
        super::trim(&mut node);
        assert_eq!(node, kept);
        assert!(node.status.unwrap().addresses.is_some());
    }

    #[test]
    fn the_selector_leaves_out_exactly_the_labels_the_file_source_skips() {
        let labels: Vec<String> = super::super::NOT_PROXIED_LABELS
            .iter()
            .map(|l| format!("!{l}"))
            .collect();
        assert_eq!(super::SERVICE_SELECTOR, labels.join(","));
    }

    use std::path::PathBuf;

    use kube::config::{KubeConfigOptions, Kubeconfig};

    /// A kubeconfig with a token and a TLS server name, whose server is
    /// the `kubernetes` ClusterIP.
    const KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: https://10.96.0.1:443
    tls-server-name: kubernetes.default.svc
users:
- name: u
  user:
    token: secret-token
contexts:
- name: x
  context: {cluster: c, user: u, namespace: ferry-system}
current-context: x
";

    fn url(s: &str) -> ApiServerUrl {
        ApiServerUrl::parse(s).unwrap().unwrap()
    }

    async fn from_kubeconfig() -> Config {
        let kc = Kubeconfig::from_yaml(KUBECONFIG).unwrap();
        Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_api_server_replaces_only_the_url_and_keeps_credentials_and_verification() {
        let base = from_kubeconfig().await;
        assert_eq!(base.cluster_url.to_string(), "https://10.96.0.1:443/");
        let unchanged = with_api_server(base.clone(), None);
        assert_eq!(unchanged.cluster_url, base.cluster_url);

        let cfg = with_api_server(base.clone(), Some(&url("192.168.1.10:6443")));
        assert_eq!(cfg.cluster_url.to_string(), "https://192.168.1.10:6443/");
        // (AuthInfo has no PartialEq; its Debug redacts the token.)
        assert_eq!(
            format!("{:?}", cfg.auth_info),
            format!("{:?}", base.auth_info)
        );
        assert!(cfg.auth_info.token.is_some(), "the token is kept");
        assert_eq!(
            cfg.tls_server_name.as_deref(),
            Some("kubernetes.default.svc")
        );
        assert_eq!(cfg.default_namespace, "ferry-system");
        assert!(!cfg.accept_invalid_certs, "verification stays on");
    }

    #[tokio::test]
    async fn with_a_kubeconfig_the_flag_overrides_its_server() {
        let path = std::env::temp_dir().join(format!(
            "ferry-agent-kubeconfig-override-{}.yaml",
            std::process::id()
        ));
        std::fs::write(&path, KUBECONFIG).unwrap();
        let api = |api_server| KubeApi {
            kubeconfig: Some(path.clone()),
            api_server,
        };
        let plain = config(&api(None)).await.unwrap();
        let flagged = config(&api(Some(url("https://api.example.com:6443"))))
            .await
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(plain.cluster_url.to_string(), "https://10.96.0.1:443/");
        assert_eq!(
            flagged.cluster_url.to_string(),
            "https://api.example.com:6443/"
        );
    }

    #[tokio::test]
    async fn without_a_service_account_the_error_says_where_it_looked_and_what_to_add() {
        if PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount").exists() {
            return; // in a pod: the service account is there
        }
        let e = config(&KubeApi {
            kubeconfig: None,
            api_server: Some(url("10.0.0.1:6443")),
        })
        .await
        .unwrap_err();
        assert!(matches!(e, KubeError::InCluster(_)), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("/var/run/secrets/kubernetes.io/serviceaccount"),
            "{text}"
        );
        assert!(text.contains("--kubeconfig"), "{text}");
    }

    /// An error whose chain reads as the transport's.
    #[derive(Debug)]
    struct Chain(&'static str, Option<Box<Chain>>);
    impl std::fmt::Display for Chain {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Chain {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|c| c as _)
        }
    }

    #[test]
    fn transport_failures_are_told_apart_by_their_chain() {
        let chain = |outer, inner| Chain(outer, Some(Box::new(Chain(inner, None))));
        assert_eq!(
            transport_problem(&chain(
                "client error (Connect)",
                "invalid peer certificate: NotValidForName"
            )),
            Some(Transport::Certificate)
        );
        assert_eq!(
            transport_problem(&chain(
                "error trying to connect",
                "dns error: failed to lookup address"
            )),
            Some(Transport::Connect)
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(transport_problem(&refused), Some(Transport::Connect));
        assert_eq!(transport_problem(&chain("bad response", "eof")), None);
    }

    /// A real client against a closed port on loopback: the advice names
    /// the server and what to check.
    #[tokio::test]
    async fn an_unreachable_server_gets_advice_naming_it() {
        // Bound, then closed: nothing listens there now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let api = KubeApi {
            kubeconfig: None,
            api_server: Some(url(&format!("http://127.0.0.1:{port}"))),
        };
        // No service account here: build on the kubeconfig-free default.
        let cfg = with_api_server(
            Config::new("https://10.96.0.1".parse().unwrap()),
            api.api_server.as_ref(),
        );
        let client = Client::try_from(cfg).unwrap();
        let e = Api::<Node>::all(client)
            .list(&Default::default())
            .await
            .unwrap_err();
        let e = watcher::Error::InitialListFailed(e);
        assert_eq!(transport_problem(&e), Some(Transport::Connect), "{e:?}");
        let text = advice::<Node>(&e, "http://127.0.0.1:1/ (--k8s-api-server)");
        assert!(
            text.contains("cannot connect to the API server at http://127.0.0.1:1/"),
            "{text}"
        );
        assert!(text.contains("k8s-api-server"), "{text}");
    }
}
