//! The stand-in driven by kube-rs itself: its watcher and reflector
//! (list, watch, relist after a 410, `continue` pages) and its typed `Api`
//! (responses decode into k8s-openapi types, errors into `Status`). These
//! run unprivileged, on loopback in the current network namespace.
mod common;

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use common::{KUBE_PROXY_SELECTOR, create_unproxied, service};
use ferry_apiserver_standin::ApiServer;
use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
    networking::v1::ServiceCIDR,
};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde_json::json;

fn kubeconfig_path(test: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "ferry-apiserver-standin-{}-{test}.yaml",
        std::process::id()
    ))
}

async fn client(server: &ApiServer, test: &str) -> Client {
    let addr = server.listen_local().unwrap();
    let path = kubeconfig_path(test);
    server.kubeconfig(addr, &path).unwrap();
    let kc = Kubeconfig::read_from(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

fn keys(store: &reflector::Store<Service>) -> BTreeSet<String> {
    store
        .state()
        .iter()
        .map(|s: &Arc<Service>| {
            format!(
                "{}/{}",
                s.metadata.namespace.as_deref().unwrap_or_default(),
                s.metadata.name.as_deref().unwrap_or_default()
            )
        })
        .collect()
}

/// Wait (up to 5 s) for `cond`.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn port_of(store: &reflector::Store<Service>, name: &str) -> Option<i32> {
    store
        .state()
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .and_then(|s| s.spec.as_ref()?.ports.as_ref()?.first().map(|p| p.port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_follows_changes_and_relists_after_restart() {
    let server = ApiServer::new();
    let client = client(&server, "reflector").await;
    server
        .create(service("default", "a", json!({"app": "a"})))
        .unwrap();
    create_unproxied(&server, "elsewhere");

    let (reader, writer) = reflector::store::<Service>();
    let stream = reflector(
        writer,
        watcher(
            Api::<Service>::all(client),
            watcher::Config::default().labels(KUBE_PROXY_SELECTOR),
        )
        .default_backoff(),
    );
    let task = tokio::spawn(stream.for_each(|_| async {}));
    tokio::time::timeout(Duration::from_secs(5), reader.wait_until_ready())
        .await
        .expect("the initial list")
        .unwrap();
    assert_eq!(keys(&reader), set(&["default/a"]));

    // Create, update, delete.
    server.create(service("default", "b", json!({}))).unwrap();
    eventually("b created", || {
        keys(&reader) == set(&["default/a", "default/b"])
    })
    .await;
    let mut a = service("default", "a", json!({"app": "a"}));
    a["spec"]["ports"][0]["port"] = 81.into();
    server.apply(a).unwrap();
    eventually("a updated", || port_of(&reader, "a") == Some(81)).await;
    server.delete("Service", Some("default"), "b").unwrap();
    eventually("b deleted", || keys(&reader) == set(&["default/a"])).await;

    // Labelled for another proxy: gone; unlabelled: back.
    server
        .apply(service(
            "default",
            "a",
            json!({"service.kubernetes.io/service-proxy-name": "x"}),
        ))
        .unwrap();
    eventually("a labelled away", || keys(&reader).is_empty()).await;
    server
        .apply(service("default", "a", json!({"app": "a"})))
        .unwrap();
    eventually("a back", || keys(&reader) == set(&["default/a"])).await;

    // Restart: the watch ends, re-watching from the old version gets
    // 410, the watcher lists again and keeps following.
    let lists = |server: &ApiServer| {
        server
            .requests()
            .iter()
            .filter(|r| r.starts_with("GET /api/v1/services?") && !r.contains("watch=true"))
            .count()
    };
    let lists_before = lists(&server);
    server.restart_with_new_history();
    server.create(service("default", "c", json!({}))).unwrap();
    server
        .apply(service(
            "kube-system",
            "headless",
            json!({"app": "no-longer-headless"}),
        ))
        .unwrap();
    eventually("relisted", || {
        keys(&reader) == set(&["default/a", "default/c", "kube-system/headless"])
            && lists(&server) > lists_before
    })
    .await;
    server.delete("Service", Some("default"), "a").unwrap();
    eventually("a deleted after relist", || {
        keys(&reader) == set(&["default/c", "kube-system/headless"])
    })
    .await;

    task.abort();
    let requests = server.requests();
    eprintln!("requests kube-rs made:");
    for r in &requests {
        eprintln!("  {r}");
    }
    let sel = "labelSelector=%21service.kubernetes.io%2Fservice-proxy-name%2C%21service.kubernetes.io%2Fheadless";
    assert!(
        requests
            .iter()
            .any(|r| r.contains("limit=500") && r.contains(sel))
    );
    assert!(requests.iter().any(|r| r.contains("watch=true")
        && r.contains("allowWatchBookmarks=true")
        && r.contains(sel)));
}

/// Writes and reads through kube's typed `Api`: the responses decode
/// into k8s-openapi types, errors into `Status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_api_calls() {
    let server = ApiServer::new();
    let client = client(&server, "typed").await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service =
        serde_json::from_value(service("default", "web", json!({"app": "web"}))).unwrap();
    let created = services.create(&PostParams::default(), &svc).await.unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(
        created.spec.as_ref().unwrap().type_.as_deref(),
        Some("ClusterIP")
    );
    let status = |e: kube::Error| match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("not an API error: {other}"),
    };
    let err = services
        .create(&PostParams::default(), &svc)
        .await
        .unwrap_err();
    assert_eq!(status(err), (409, "AlreadyExists".into()));

    let mut changed = created.clone();
    changed.metadata.labels = Some([("app".to_string(), "web2".to_string())].into());
    let replaced = services
        .replace("web", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_ne!(
        replaced.metadata.resource_version,
        created.metadata.resource_version
    );
    let err = services
        .replace("web", &PostParams::default(), &changed)
        .await
        .unwrap_err();
    assert_eq!(status(err), (409, "Conflict".into()));
    let patched = services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        patched
            .metadata
            .labels
            .unwrap()
            .get("x")
            .map(String::as_str),
        Some("y")
    );
    assert_eq!(
        services.get("web").await.unwrap().metadata.name.as_deref(),
        Some("web")
    );
    assert!(
        services
            .delete("web", &DeleteParams::default())
            .await
            .unwrap()
            .is_left()
    );
    assert_eq!(
        status(services.get("web").await.unwrap_err()),
        (404, "NotFound".into())
    );

    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(
        json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.1.0/24"}}),
    )
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    assert_eq!(
        nodes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 8080}],
    }))
    .unwrap();
    let created = slices.create(&PostParams::default(), &slice).await.unwrap();
    assert_eq!(created.ports.unwrap()[0].protocol.as_deref(), Some("TCP"));
    let list = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
}

/// Reflectors on EndpointSlices and Nodes, with small pages so the
/// initial list follows `continue` tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_reflectors_on_slices_and_nodes() {
    let server = ApiServer::new();
    let client = client(&server, "paged").await;
    for i in 0..5 {
        server
            .create(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("s{i}"), "namespace": "default"},
                "addressType": "IPv4", "endpoints": [],
            }))
            .unwrap();
        server
            .create(
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("n{i}")}}),
            )
            .unwrap();
    }
    let (slices, writer) = reflector::store::<EndpointSlice>();
    let slice_task = tokio::spawn(
        reflector(
            writer,
            watcher(
                Api::<EndpointSlice>::all(client.clone()),
                watcher::Config::default().page_size(2),
            )
            .default_backoff(),
        )
        .for_each(|_| async {}),
    );
    let (nodes, writer) = reflector::store::<Node>();
    let node_task = tokio::spawn(
        reflector(
            writer,
            watcher(
                Api::<Node>::all(client),
                watcher::Config::default().page_size(2),
            )
            .default_backoff(),
        )
        .for_each(|_| async {}),
    );
    eventually("both listed", || {
        slices.state().len() == 5 && nodes.state().len() == 5
    })
    .await;
    server
        .delete("EndpointSlice", Some("default"), "s0")
        .unwrap();
    server.delete("Node", None, "n0").unwrap();
    eventually("deletes seen", || {
        slices.state().len() == 4 && nodes.state().len() == 4
    })
    .await;
    slice_task.abort();
    node_task.abort();
    let continued = server
        .requests()
        .iter()
        .filter(|r| r.contains("limit=2") && r.contains("continue="))
        .count();
    assert_eq!(
        continued,
        4,
        "two more pages each: {:#?}",
        server.requests()
    );
}

fn service_cidr(name: &str, cidrs: &[&str]) -> serde_json::Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": name},
        "spec": {"cidrs": cidrs},
    })
}

/// ServiceCIDRs (cluster-scoped, `networking.k8s.io/v1`) through a
/// reflector and the typed API, with the real validation's immutable
/// ranges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_cidrs_are_listed_watched_and_their_ranges_immutable() {
    let server = ApiServer::new();
    let client = client(&server, "servicecidrs").await;
    server
        .create(service_cidr("kubernetes", &["10.96.0.0/16"]))
        .unwrap();
    let (store, writer) = reflector::store::<ServiceCIDR>();
    let task = tokio::spawn(
        reflector(
            writer,
            watcher(
                Api::<ServiceCIDR>::all(client.clone()),
                watcher::Config::default(),
            )
            .default_backoff(),
        )
        .for_each(|_| async {}),
    );
    let cidrs = |store: &reflector::Store<ServiceCIDR>| -> BTreeSet<String> {
        store
            .state()
            .iter()
            .flat_map(|c| {
                c.spec
                    .as_ref()
                    .and_then(|s| s.cidrs.clone())
                    .unwrap_or_default()
            })
            .collect()
    };
    eventually("listed", || cidrs(&store) == set(&["10.96.0.0/16"])).await;
    server
        .create(service_cidr("extra", &["10.97.0.0/16", "fd00::/108"]))
        .unwrap();
    eventually("the new one watched", || {
        cidrs(&store) == set(&["10.96.0.0/16", "10.97.0.0/16", "fd00::/108"])
    })
    .await;

    let api = Api::<ServiceCIDR>::all(client);
    let mut changed: ServiceCIDR = api.get("extra").await.unwrap();
    changed.spec.as_mut().unwrap().cidrs = Some(vec!["10.98.0.0/16".into()]);
    let err = api
        .replace("extra", &PostParams::default(), &changed)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains("immutable")),
        "{err:?}"
    );
    let err = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "empty"}, "spec": {}})).unwrap(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "{err:?}"
    );

    api.delete("kubernetes", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the delete watched", || {
        cidrs(&store) == set(&["10.97.0.0/16", "fd00::/108"])
    })
    .await;
    task.abort();
}

/// A server told not to serve ServiceCIDRs answers 404 as one older than
/// Kubernetes 1.33 does, and still serves everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_left_out_answers_404() {
    let server = ApiServer::without(&["ServiceCIDR"]).unwrap();
    let client = client(&server, "without").await;
    let err = Api::<ServiceCIDR>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404),
        "{err:?}"
    );
    let nodes = Api::<Node>::all(client).list(&ListParams::default()).await;
    assert!(nodes.is_ok(), "{nodes:?}");
    assert!(ApiServer::without(&["Pod"]).is_err());
}
