//! `ferry_svc_stats` as the agent keeps it, against real pinned maps: a
//! reused service id starts from zero on every CPU, an updated frontend
//! keeps its counts, and `/metrics` joins the maps into per-Service rows
//! (two frontends of one port summed, another Service apart).
use std::net::Ipv4Addr;

use ferry_agent::{maps::ServiceStatsTable, metrics::Metrics};
use ferry_common::{PROTO_TCP, SCOPE_EXTERNAL, ServiceKey, ServiceStats};
use ferry_tests::{
    fixture::{Kernel, backend, frontend},
    metrics::{sample, service_labels},
};

const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const API_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);

/// What a busy frontend's slot holds on each CPU: `n` packets, `10 n`
/// bytes, one new connection and one `rejected_no_endpoints`.
fn busy(n: u64) -> ServiceStats {
    let mut s = ServiceStats {
        packets: n,
        bytes: 10 * n,
        new_connections: 1,
        ..Default::default()
    };
    s.drops[0] = 1;
    s
}

fn cpus() -> usize {
    aya::util::nr_cpus().unwrap()
}

#[test]
fn a_reused_id_starts_from_zero_and_an_updated_frontend_keeps_its_counts() {
    let mut k = Kernel::load();
    let mut stats = ServiceStatsTable::open(k.pin_dir()).unwrap();
    let web = frontend(WEB_VIP, 80, PROTO_TCP);
    let id = k
        .services
        .upsert_named(web, &[backend(POD, 8080)], "default/web:http")
        .unwrap();
    assert_eq!(id, 1);
    stats.set_all(id, busy(5)).unwrap();

    // An update (new backends) is the same frontend: its counts stay.
    let again = k
        .services
        .upsert_named(web, &[backend(POD, 8081)], "default/web:http")
        .unwrap();
    assert_eq!(again, id);
    assert_eq!(stats.per_cpu(id).unwrap(), vec![busy(5); cpus()]);

    // web goes; api comes and is given web's id: none of web's counts.
    k.services.remove(&web).unwrap();
    assert_eq!(
        stats.per_cpu(id).unwrap(),
        vec![busy(5); cpus()],
        "removal leaves the slot alone (the datapath may still count the last packets)"
    );
    let api = frontend(API_VIP, 80, PROTO_TCP);
    let reused = k
        .services
        .upsert_named(api, &[backend(POD, 8080)], "default/api:http")
        .unwrap();
    assert_eq!(reused, id, "ids are reused");
    assert_eq!(
        stats.per_cpu(id).unwrap(),
        vec![ServiceStats::default(); cpus()]
    );
}

#[test]
fn metrics_join_the_pinned_maps_per_service_port() {
    let mut k = Kernel::load();
    let web_cluster_ip = frontend(WEB_VIP, 80, PROTO_TCP);
    let web_node_port = ServiceKey {
        addr: [192, 168, 0, 1],
        port: 30080,
        protocol: PROTO_TCP,
        scope: SCOPE_EXTERNAL,
    };
    let api = frontend(API_VIP, 80, PROTO_TCP);
    let backends = [backend(POD, 8080)];
    let mut ids = Vec::new();
    for (key, name) in [
        (web_cluster_ip, "default/web:http"),
        (web_node_port, "default/web:http"),
        (api, "default/api"),
    ] {
        ids.push(k.services.upsert_named(key, &backends, name).unwrap());
    }
    let mut stats = ServiceStatsTable::open(k.pin_dir()).unwrap();
    stats.set_all(ids[0], busy(3)).unwrap();
    stats.set_all(ids[1], busy(4)).unwrap();

    let text = Metrics::new(k.pin_dir()).render();
    let web = service_labels("default", "web", "http", "TCP");
    let api = service_labels("default", "api", "", "TCP");
    let n = cpus() as f64;
    let value = |name: &str, labels: &str| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("no {name}{{{labels}}}:\n{text}"))
    };
    // Both of web's frontends, every CPU.
    assert_eq!(value("ferry_service_packets_total", &web), 7.0 * n);
    assert_eq!(value("ferry_service_bytes_total", &web), 70.0 * n);
    assert_eq!(value("ferry_service_new_connections_total", &web), 2.0 * n);
    let rejected = format!("{web},reason=\"rejected_no_endpoints\"");
    assert_eq!(value("ferry_service_drops_total", &rejected), 2.0 * n);
    // api, unnamed port: a row of its own, none of web's counts.
    assert_eq!(value("ferry_service_packets_total", &api), 0.0);
    assert_eq!(value("ferry_service_new_connections_total", &api), 0.0);
    // The node map is not written yet: the datapath's default range.
    assert_eq!(value("ferry_snat_ports_capacity", ""), 4536.0);
    assert_eq!(
        value("ferry_map_entries", "map=\"ferry_services\""),
        3.0,
        "{text}"
    );
    // An array has every index: what counts is the slots in active sets.
    assert_eq!(
        value("ferry_map_entries", "map=\"ferry_backends\""),
        3.0,
        "{text}"
    );
}
