//! The kube source's ServiceCIDRs against the API stand-in, over loopback
//! (unprivileged): the objects reach the snapshot and follow changes, and
//! an API server that does not serve them (before Kubernetes 1.33) is asked
//! once, after which the source works on without them.
use std::time::Duration;

use ferry_agent::{
    config::KubeApi,
    source::{Snapshot, Source, kube::KubeSource},
};
use ferry_apiserver_standin::ApiServer;
use serde_json::{Value, json};

fn node() -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
}

fn service_cidr(name: &str, cidr: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": name}, "spec": {"cidrs": [cidr]},
    })
}

async fn source(api: &ApiServer, test: &str) -> KubeSource {
    let addr = api.listen_local().unwrap();
    let path = std::env::temp_dir().join(format!(
        "ferry-agent-kube-source-{}-{test}.yaml",
        std::process::id()
    ));
    api.kubeconfig(addr, &path).unwrap();
    let client = ferry_agent::source::kube::client(&KubeApi {
        kubeconfig: Some(path.clone()),
        api_server: None,
    })
    .await;
    std::fs::remove_file(&path).unwrap();
    KubeSource::start(client.unwrap())
}

async fn next(source: &mut KubeSource) -> Snapshot {
    tokio::time::timeout(Duration::from_secs(5), source.next())
        .await
        .expect("a snapshot within 5 s")
}

fn ranges(s: &Snapshot) -> Vec<String> {
    let mut out: Vec<String> = s
        .objects
        .service_cidrs
        .iter()
        .flat_map(|c| {
            c.spec
                .as_ref()
                .and_then(|s| s.cidrs.clone())
                .unwrap_or_default()
        })
        .collect();
    out.sort();
    out
}

fn service_cidr_requests(api: &ApiServer) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.contains("/servicecidrs"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_cidr_objects_reach_the_snapshot_and_follow_changes() {
    let api = ApiServer::new();
    api.create(node()).unwrap();
    api.create(service_cidr("kubernetes", "10.96.0.0/16"))
        .unwrap();
    let mut source = source(&api, "follow").await;
    assert_eq!(ranges(&next(&mut source).await), ["10.96.0.0/16"]);
    api.create(service_cidr("extra", "10.97.0.0/16")).unwrap();
    assert_eq!(
        ranges(&next(&mut source).await),
        ["10.96.0.0/16", "10.97.0.0/16"]
    );
    api.delete("ServiceCIDR", None, "kubernetes").unwrap();
    assert_eq!(ranges(&next(&mut source).await), ["10.97.0.0/16"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_without_service_cidrs_is_asked_once_and_the_rest_is_served() {
    let api = ApiServer::without(&["ServiceCIDR"]).unwrap();
    api.create(node()).unwrap();
    let mut source = source(&api, "without").await;
    // The first sync does not wait for a list that will never come.
    let first = next(&mut source).await;
    assert_eq!(first.objects.nodes.len(), 1);
    assert!(first.objects.service_cidrs.is_empty());
    // Changes to the other kinds still arrive.
    api.create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2"}}))
        .unwrap();
    assert_eq!(next(&mut source).await.objects.nodes.len(), 2);
    // No retries: kube-rs's backoff would have asked again within ~1 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(service_cidr_requests(&api), 1, "{:#?}", api.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_flag_is_what_the_client_dials_over_the_kubeconfigs_server() {
    let api = ApiServer::new();
    api.create(node()).unwrap();
    let addr = api.listen_local().unwrap();
    // The kubeconfig names a port nothing listens on (bound, then closed).
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let path = std::env::temp_dir().join(format!(
        "ferry-agent-kube-source-{}-flag.yaml",
        std::process::id()
    ));
    api.kubeconfig(nowhere, &path).unwrap();
    let client = ferry_agent::source::kube::client(&KubeApi {
        kubeconfig: Some(path.clone()),
        api_server: ferry_agent::config::ApiServerUrl::parse(&format!("http://{addr}")).unwrap(),
    })
    .await;
    std::fs::remove_file(&path).unwrap();
    let client = client.unwrap();
    assert_eq!(client.server, format!("http://{addr}/ (--k8s-api-server)"));
    let mut source = KubeSource::start(client);
    assert_eq!(next(&mut source).await.objects.nodes.len(), 1);
    assert!(
        api.requests().iter().any(|r| r.contains("/api/v1/nodes")),
        "{:#?}",
        api.requests()
    );
}
