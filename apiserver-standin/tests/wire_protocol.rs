//! The stand-in's wire protocol, checked byte by byte with raw HTTP:
//! pagination, selectors, writes, watch streams, bookmarks, restarts and
//! shutdown. These run unprivileged, on loopback in the current network
//! namespace.
mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use common::{KUBE_PROXY_SELECTOR, create_unproxied, service};
use ferry_apiserver_standin::ApiServer;
use serde_json::{Value, json};

const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Percent-encode a query value (selectors carry '!', ',', '/', '=').
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One request on a fresh connection: (status code, JSON body).
fn http(addr: SocketAddr, method: &str, target: &str, body: Option<&Value>) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("a response head");
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn get(addr: SocketAddr, target: &str) -> Value {
    let (code, body) = http(addr, "GET", target, None);
    assert_eq!(code, 200, "GET {target}: {body}");
    body
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let m = &o["metadata"];
            match m["namespace"].as_str() {
                Some(ns) => format!("{ns}/{}", m["name"].as_str().unwrap()),
                None => m["name"].as_str().unwrap().to_string(),
            }
        })
        .collect()
}

fn rv_of(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// A raw watch stream: chunked, one event per line.
struct Watch {
    r: BufReader<TcpStream>,
}

impl Watch {
    fn open(addr: SocketAddr, target: &str) -> Self {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut r = BufReader::new(s);
        write!(r.get_mut(), "GET {target} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut head = String::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
        assert!(head.contains("Content-Type: application/json"), "{head}");
        Self { r }
    }

    /// The next event, or None at the end of the stream.
    fn next(&mut self) -> Option<Value> {
        let mut size = String::new();
        self.r
            .read_line(&mut size)
            .expect("an event before the read timeout");
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        let mut data = vec![0; size + 2];
        self.r.read_exact(&mut data).unwrap();
        if size == 0 {
            return None;
        }
        assert!(data.ends_with(b"\n\r\n"), "one JSON line per chunk");
        Some(serde_json::from_slice(&data[..size]).unwrap())
    }

    /// The next event that is not a BOOKMARK.
    fn next_change(&mut self) -> Option<Value> {
        loop {
            let e = self.next()?;
            if e["type"] != "BOOKMARK" {
                return Some(e);
            }
        }
    }
}

fn event(e: &Value) -> (String, String) {
    (
        e["type"].as_str().unwrap().to_string(),
        e["object"]["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[test]
fn list_paginates_over_a_consistent_snapshot() {
    let server = ApiServer::new();
    let addr = server.listen_local().unwrap();
    for (ns, name) in [
        ("b", "x"),
        ("a", "s1"),
        ("a", "s2"),
        ("a", "s3"),
        ("c", "y"),
    ] {
        server.create(service(ns, name, json!({}))).unwrap();
    }
    let page1 = get(addr, "/api/v1/services?limit=2");
    assert_eq!(page1["kind"], "ServiceList");
    assert_eq!(page1["apiVersion"], "v1");
    assert_eq!(names(&page1), ["a/s1", "a/s2"]);
    assert_eq!(page1["metadata"]["remainingItemCount"], 3);
    let snapshot_rv = page1["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(snapshot_rv, server.resource_version().to_string());
    // Items carry no kind or apiVersion, as on a real server.
    assert!(page1["items"][0].get("kind").is_none());

    // Changes between pages do not show: the next pages read the snapshot.
    server.delete("Service", Some("b"), "x").unwrap();
    server.create(service("a", "s4", json!({}))).unwrap();
    server
        .apply(service("c", "y", json!({"changed": "yes"})))
        .unwrap();
    let token = enc(page1["metadata"]["continue"].as_str().unwrap());
    let page2 = get(addr, &format!("/api/v1/services?limit=2&continue={token}"));
    assert_eq!(names(&page2), ["a/s3", "b/x"]);
    assert_eq!(page2["metadata"]["resourceVersion"], snapshot_rv.as_str());
    let token = enc(page2["metadata"]["continue"].as_str().unwrap());
    let page3 = get(addr, &format!("/api/v1/services?limit=2&continue={token}"));
    assert_eq!(names(&page3), ["c/y"]);
    assert!(
        page3["items"][0]["metadata"]["labels"]
            .get("changed")
            .is_none()
    );
    assert!(page3["metadata"].get("continue").is_none());

    // A fresh list sees the changes.
    let all = get(addr, "/api/v1/services");
    assert_eq!(names(&all), ["a/s1", "a/s2", "a/s3", "a/s4", "c/y"]);
    assert!(all["metadata"].get("continue").is_none());
    let ns_a = get(addr, "/api/v1/namespaces/a/services?limit=3");
    assert_eq!(names(&ns_a), ["a/s1", "a/s2", "a/s3"]);

    // continue with a resourceVersion is refused.
    let (code, status) = http(
        addr,
        "GET",
        &format!("/api/v1/services?continue={token}&resourceVersion=5"),
        None,
    );
    assert_eq!((code, status["reason"].as_str()), (400, Some("BadRequest")));

    // Once the history is gone, the token has expired.
    server.restart_with_new_history();
    let (code, status) = http(
        addr,
        "GET",
        &format!("/api/v1/services?limit=2&continue={token}"),
        None,
    );
    assert_eq!(code, 410, "{status}");
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Expired");
    assert_eq!(status["code"], 410);
}

#[test]
fn selectors_filter_lists() {
    let server = ApiServer::new();
    let addr = server.listen_local().unwrap();
    server
        .create(service("default", "plain", json!({"app": "web"})))
        .unwrap();
    create_unproxied(&server, "other-proxy");
    server
        .create(service("kube-system", "dns", json!({"app": "dns"})))
        .unwrap();
    let list = |q: &str| names(&get(addr, &format!("/api/v1/services?{q}")));

    assert_eq!(
        list(&format!("labelSelector={}", enc(KUBE_PROXY_SELECTOR))),
        ["default/plain", "kube-system/dns"]
    );
    assert_eq!(
        list(&format!("labelSelector={}", enc("app=web"))),
        ["default/plain"]
    );
    assert_eq!(
        list(&format!("labelSelector={}", enc("app==dns"))),
        ["kube-system/dns"]
    );
    assert_eq!(
        list(&format!("labelSelector={}", enc("app!=web"))),
        [
            "default/other-proxy",
            "kube-system/dns",
            "kube-system/headless"
        ]
    );
    assert_eq!(
        list(&format!(
            "labelSelector={}",
            enc("app,!service.kubernetes.io/headless")
        )),
        ["default/plain", "kube-system/dns"]
    );
    assert_eq!(
        list(&format!("labelSelector={}", enc("app in (dns,x)"))),
        ["kube-system/dns"]
    );
    assert_eq!(
        list(&format!("fieldSelector={}", enc("metadata.name=dns"))),
        ["kube-system/dns"]
    );
    assert_eq!(
        list(&format!(
            "fieldSelector={}",
            enc("metadata.namespace=default,metadata.name!=plain")
        )),
        ["default/other-proxy"]
    );
    assert_eq!(
        list(&format!(
            "labelSelector={}&fieldSelector={}",
            enc("app"),
            enc("metadata.namespace==default")
        )),
        ["default/plain"]
    );

    let (code, status) = http(
        addr,
        "GET",
        &format!("/api/v1/services?fieldSelector={}", enc("spec.x=1")),
        None,
    );
    assert_eq!((code, status["reason"].as_str()), (400, Some("BadRequest")));
    let (code, _) = http(
        addr,
        "GET",
        &format!("/api/v1/services?labelSelector={}", enc("a in (b")),
        None,
    );
    assert_eq!(code, 400);

    // The other two kinds, cluster-scoped and in another group.
    server
        .create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {"role": "a"}}}))
        .unwrap();
    server
        .create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2"}}))
        .unwrap();
    let nodes = get(
        addr,
        &format!("/api/v1/nodes?labelSelector={}", enc("role=a")),
    );
    assert_eq!(nodes["kind"], "NodeList");
    assert_eq!(names(&nodes), ["n1"]);
    assert!(
        get(addr, "/api/v1/nodes/n2")["metadata"]
            .get("namespace")
            .is_none()
    );
    server
        .create(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "endpoints": [], "ports": [{"port": 8080}],
        }))
        .unwrap();
    let slices = get(
        addr,
        &format!(
            "/apis/discovery.k8s.io/v1/endpointslices?labelSelector={}",
            enc("kubernetes.io/service-name=web")
        ),
    );
    assert_eq!(slices["kind"], "EndpointSliceList");
    assert_eq!(slices["apiVersion"], "discovery.k8s.io/v1");
    assert_eq!(names(&slices), ["default/web-1"]);
    assert_eq!(slices["items"][0]["ports"][0]["protocol"], "TCP");
}

#[test]
fn writes_over_http() {
    let server = ApiServer::new();
    let addr = server.listen_local().unwrap();
    let coll = "/api/v1/namespaces/default/services";
    let svc = service("default", "web", json!({"app": "web"}));
    let (code, created) = http(addr, "POST", coll, Some(&svc));
    assert_eq!(code, 201, "{created}");
    let meta = &created["metadata"];
    assert_eq!(meta["namespace"], "default");
    assert!(meta["uid"].as_str().unwrap().len() == 36);
    assert!(meta["creationTimestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(rv_of(&created), server.resource_version());
    assert_eq!(created["spec"]["ports"][0]["protocol"], "TCP");
    assert!(
        created["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .starts_with("10.")
    );

    let (code, status) = http(addr, "POST", coll, Some(&svc));
    assert_eq!(code, 409);
    assert_eq!(status["reason"], "AlreadyExists");
    assert_eq!(status["details"]["name"], "web");
    let (code, status) = http(
        addr,
        "POST",
        "/api/v1/namespaces/other/services",
        Some(&svc),
    );
    assert_eq!((code, status["reason"].as_str()), (400, Some("BadRequest")));

    // PUT replaces; the same content again changes nothing; a stale
    // resourceVersion conflicts.
    let mut changed = created.clone();
    changed["metadata"]["labels"]["app"] = "web2".into();
    let (code, updated) = http(addr, "PUT", &format!("{coll}/web"), Some(&changed));
    assert_eq!(code, 200, "{updated}");
    assert!(rv_of(&updated) > rv_of(&created));
    assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);
    let (code, same) = http(addr, "PUT", &format!("{coll}/web"), Some(&updated));
    assert_eq!((code, rv_of(&same)), (200, rv_of(&updated)));
    let (code, status) = http(addr, "PUT", &format!("{coll}/web"), Some(&changed));
    assert_eq!((code, status["reason"].as_str()), (409, Some("Conflict")));

    // PATCH (merge patch).
    let mut s = TcpStream::connect(addr).unwrap();
    let patch = r#"{"metadata":{"labels":{"app":null,"tier":"front"}}}"#;
    write!(
        s,
        "PATCH {coll}/web HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/merge-patch+json\r\n\
         Content-Length: {}\r\n\r\n{patch}",
        patch.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(
        get(addr, &format!("{coll}/web"))["metadata"]["labels"],
        json!({"tier": "front"})
    );

    // PUT to a missing EndpointSlice is 404 (Services would be created).
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                       "metadata": {"name": "s"}, "addressType": "IPv4", "endpoints": []});
    let (code, status) = http(
        addr,
        "PUT",
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/s",
        Some(&slice),
    );
    assert_eq!((code, status["reason"].as_str()), (404, Some("NotFound")));

    let (code, deleted) = http(addr, "DELETE", &format!("{coll}/web"), None);
    assert_eq!(code, 200);
    assert_eq!(deleted["metadata"]["name"], "web");
    assert_eq!(rv_of(&deleted), server.resource_version());
    let (code, status) = http(addr, "DELETE", &format!("{coll}/web"), None);
    assert_eq!(code, 404);
    assert_eq!(status["message"], "services \"web\" not found");
    assert_eq!(http(addr, "GET", &format!("{coll}/web"), None).0, 404);
    assert_eq!(http(addr, "GET", "/api/v1/pods", None).0, 404);
    assert_eq!(http(addr, "POST", "/api/v1/services", Some(&svc)).0, 405);
    assert_eq!(http(addr, "DELETE", coll, None).0, 405);
}

#[test]
fn watch_replays_history_and_follows_selectors() {
    let server = ApiServer::new();
    let addr = server.listen_local().unwrap();
    let a = server.create(service("default", "a", json!({}))).unwrap();
    let from = rv_of(&a);
    server
        .apply(service("default", "a", json!({"v": "2"})))
        .unwrap();
    server.create(service("default", "b", json!({}))).unwrap();
    let deleted = server.delete("Service", Some("default"), "a").unwrap();
    server.create(service("other", "c", json!({}))).unwrap();

    let mut w = Watch::open(
        addr,
        &format!("/api/v1/namespaces/default/services?watch=true&resourceVersion={from}"),
    );
    assert_eq!(event(&w.next().unwrap()), ("MODIFIED".into(), "a".into()));
    assert_eq!(event(&w.next().unwrap()), ("ADDED".into(), "b".into()));
    let e = w.next().unwrap();
    assert_eq!(event(&e), ("DELETED".into(), "a".into()));
    assert_eq!(
        e["object"]["metadata"]["resourceVersion"],
        deleted["metadata"]["resourceVersion"]
    );
    assert_eq!(e["object"]["kind"], "Service");
    // Then live events; "other/c" never showed (another namespace).
    server.create(service("default", "d", json!({}))).unwrap();
    assert_eq!(event(&w.next().unwrap()), ("ADDED".into(), "d".into()));

    // Moving out of a selector is DELETED, back in is ADDED.
    let now = server.resource_version();
    let mut w = Watch::open(
        addr,
        &format!(
            "/api/v1/services?watch=1&resourceVersion={now}&labelSelector={}",
            enc(KUBE_PROXY_SELECTOR)
        ),
    );
    server
        .apply(service(
            "default",
            "b",
            json!({"service.kubernetes.io/service-proxy-name": "x"}),
        ))
        .unwrap();
    let e = w.next().unwrap();
    assert_eq!(event(&e), ("DELETED".into(), "b".into()));
    assert_eq!(rv_of(&e["object"]), server.resource_version());
    server.apply(service("default", "b", json!({}))).unwrap();
    assert_eq!(event(&w.next().unwrap()), ("ADDED".into(), "b".into()));
    server
        .apply(service("default", "b", json!({"x": "y"})))
        .unwrap();
    assert_eq!(event(&w.next().unwrap()), ("MODIFIED".into(), "b".into()));
    // A change to an object outside the selector is not sent at all.
    server
        .create(service(
            "default",
            "h",
            json!({"service.kubernetes.io/headless": ""}),
        ))
        .unwrap();
    server.delete("Service", Some("default"), "h").unwrap();
    server.delete("Service", Some("default"), "b").unwrap();
    assert_eq!(event(&w.next().unwrap()), ("DELETED".into(), "b".into()));

    // From "0": the current objects first, as ADDED, then live events.
    let mut w = Watch::open(addr, "/api/v1/services?watch=true&resourceVersion=0");
    let mut initial: Vec<_> = (0..2).map(|_| event(&w.next().unwrap())).collect();
    initial.sort();
    assert_eq!(
        initial,
        [("ADDED".into(), "c".into()), ("ADDED".into(), "d".into())]
    );
    server.create(service("default", "e", json!({}))).unwrap();
    assert_eq!(event(&w.next().unwrap()), ("ADDED".into(), "e".into()));
}

#[test]
fn bookmarks_and_timeout_end_the_stream() {
    let server = ApiServer::new();
    let addr = server.listen_local().unwrap();
    server.create(service("default", "a", json!({}))).unwrap();
    let rv = server.resource_version();
    let started = Instant::now();
    let mut w = Watch::open(
        addr,
        &format!(
            "/api/v1/services?watch=true&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=2"
        ),
    );
    let mut events = Vec::new();
    while let Some(e) = w.next() {
        events.push(e);
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert!(
        events.len() >= 2,
        "a periodic and a final BOOKMARK: {events:?}"
    );
    for e in &events {
        assert_eq!(e["type"], "BOOKMARK");
        assert_eq!(e["object"]["kind"], "Service");
        assert_eq!(e["object"]["apiVersion"], "v1");
        assert_eq!(e["object"]["metadata"]["resourceVersion"], rv.to_string());
    }

    // Without allowWatchBookmarks there are none; the stream still ends.
    let mut w = Watch::open(
        addr,
        &format!("/api/v1/nodes?watch=true&resourceVersion={rv}&timeoutSeconds=1"),
    );
    assert!(w.next().is_none());
}

#[test]
fn restart_ends_watches_and_old_versions_are_gone() {
    let server = ApiServer::new();
    let addr = server.listen_local().unwrap();
    let old = rv_of(&server.create(service("default", "a", json!({}))).unwrap());
    let mut w = Watch::open(
        addr,
        &format!("/api/v1/services?watch=true&resourceVersion={old}"),
    );
    server.create(service("default", "b", json!({}))).unwrap();
    assert_eq!(event(&w.next().unwrap()), ("ADDED".into(), "b".into()));

    server.restart_with_new_history();
    assert!(w.next_change().is_none(), "the stream ends");
    let new = server.resource_version();
    assert!(new > old + 1);

    let mut w = Watch::open(
        addr,
        &format!("/api/v1/services?watch=true&resourceVersion={old}"),
    );
    let e = w.next().unwrap();
    assert_eq!(
        e,
        json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {old} ({new})"), "reason": "Expired", "code": 410,
        }})
    );
    assert!(w.next().is_none());

    // The objects survived, and a watch from the new version works.
    assert_eq!(
        names(&get(addr, "/api/v1/services")),
        ["default/a", "default/b"]
    );
    let mut w = Watch::open(
        addr,
        &format!("/api/v1/services?watch=true&resourceVersion={new}"),
    );
    server.delete("Service", Some("default"), "a").unwrap();
    assert_eq!(event(&w.next().unwrap()), ("DELETED".into(), "a".into()));
}

#[test]
fn drop_stops_everything() {
    let server = ApiServer::new();
    let addr = server.listen_local().unwrap();
    let mut w = Watch::open(addr, "/api/v1/services?watch=true&allowWatchBookmarks=true");
    // An idle kept-alive connection too.
    let idle = TcpStream::connect(addr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    drop(server);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "drop joined its threads promptly"
    );
    while w.next().is_some() {}
    assert!(TcpStream::connect(addr).is_err(), "the listener is closed");
    drop(idle);
}
