//! Per-Service counters: the frontends of `ferry_services` joined with
//! their names (`ferry_svc_names`) and counts (`ferry_svc_stats`), summed
//! per Service port.
//!
//! One Service port has several frontends (its ClusterIP; a NodePort on
//! each node address; load-balancer IPs and externalIPs; the same external
//! addresses as this node's pods reach them), each with an id and a slot of
//! its own. What an operator asks about is the Service port, so the rows
//! are summed over them. The join is pure, so it is tested without a
//! kernel; `PinnedMaps` reads its inputs at scrape time.
use std::collections::BTreeMap;

use ferry_common::{SERVICE_DROP_REASONS, ServiceKey, ServiceStats, protocol_name};

/// One Service port, as the labels of its metrics.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    /// The port's name in the Service ("" for a Service's only, unnamed
    /// port).
    pub port: String,
    /// "TCP" or "UDP", from the frontend's key.
    pub protocol: &'static str,
}

/// A Service port's counts, summed over its frontends and CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRow {
    pub service: ServicePort,
    pub stats: ServiceStats,
}

/// "namespace/name:port" (as the agent writes `ferry_svc_names`; the
/// ":port" is left out for an unnamed port) as (namespace, name, port).
/// None for anything else: no namespace, or an empty part. Namespaces,
/// names and port names hold neither '/' nor ':' (DNS labels and IANA
/// service names), so the first of each splits them.
pub fn parse_service_name(s: &str) -> Option<(&str, &str, &str)> {
    let (namespace, rest) = s.split_once('/')?;
    let (name, port) = rest.split_once(':').unwrap_or((rest, ""));
    (!namespace.is_empty() && !name.is_empty()).then_some((namespace, name, port))
}

/// The rows of `frontends` (each key with its service id), named from
/// `names` and counted from `stats` (by id, already summed over CPUs),
/// sorted by Service port.
///
/// A frontend whose id has no name, or a name that is no
/// "namespace/name[:port]", is left out: its counts cannot be put on a
/// Service (the agent names every frontend it writes; only a frontend
/// removed between the reads, or written by hand, has none), and a row
/// labelled by id would start a series per reused id. Its packets are
/// still in `ferry_datapath_*`. A frontend whose slot could not be read
/// adds nothing, but its Service port still has a row.
pub fn service_rows(
    frontends: &[(ServiceKey, u32)],
    names: &BTreeMap<u32, String>,
    stats: &BTreeMap<u32, ServiceStats>,
) -> Vec<ServiceRow> {
    let mut by_port: BTreeMap<ServicePort, ServiceStats> = BTreeMap::new();
    for (key, id) in frontends {
        let Some((namespace, name, port)) = names.get(id).and_then(|n| parse_service_name(n))
        else {
            continue;
        };
        let service = ServicePort {
            namespace: namespace.to_string(),
            name: name.to_string(),
            port: port.to_string(),
            protocol: protocol_name(key.protocol),
        };
        let sum = by_port.entry(service).or_default();
        if let Some(s) = stats.get(id) {
            add(sum, s);
        }
    }
    by_port
        .into_iter()
        .map(|(service, stats)| ServiceRow { service, stats })
        .collect()
}

fn add(sum: &mut ServiceStats, s: &ServiceStats) {
    sum.packets = sum.packets.wrapping_add(s.packets);
    sum.bytes = sum.bytes.wrapping_add(s.bytes);
    sum.new_connections = sum.new_connections.wrapping_add(s.new_connections);
    for i in 0..SERVICE_DROP_REASONS {
        sum.drops[i] = sum.drops[i].wrapping_add(s.drops[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_common::{PROTO_TCP, PROTO_UDP, SCOPE_CLUSTER_IP, SCOPE_EXTERNAL};

    fn key(addr: [u8; 4], port: u16, protocol: u8, scope: u8) -> ServiceKey {
        ServiceKey {
            addr,
            port,
            protocol,
            scope,
        }
    }

    fn stats(packets: u64, bytes: u64, new_connections: u64, rejected: u64) -> ServiceStats {
        let mut s = ServiceStats {
            packets,
            bytes,
            new_connections,
            ..Default::default()
        };
        s.drops[0] = rejected;
        s
    }

    fn port(namespace: &str, name: &str, port: &str, protocol: &'static str) -> ServicePort {
        ServicePort {
            namespace: namespace.into(),
            name: name.into(),
            port: port.into(),
            protocol,
        }
    }

    #[test]
    fn names_split_into_namespace_name_and_port() {
        assert_eq!(
            parse_service_name("default/web:http"),
            Some(("default", "web", "http"))
        );
        assert_eq!(
            parse_service_name("kube-system/dns"),
            Some(("kube-system", "dns", ""))
        );
        assert_eq!(parse_service_name(""), None);
        assert_eq!(parse_service_name("web"), None);
        assert_eq!(parse_service_name("/web:http"), None);
        assert_eq!(parse_service_name("default/:http"), None);
    }

    #[test]
    fn the_frontends_of_one_port_are_summed_and_other_services_kept_apart() {
        // web:http has a ClusterIP (id 1) and a NodePort (id 2); web:dns
        // (UDP) is id 3; api:http is id 4.
        let frontends = [
            (key([10, 96, 0, 10], 80, PROTO_TCP, SCOPE_CLUSTER_IP), 1),
            (key([192, 168, 0, 1], 30080, PROTO_TCP, SCOPE_EXTERNAL), 2),
            (key([10, 96, 0, 10], 53, PROTO_UDP, SCOPE_CLUSTER_IP), 3),
            (key([10, 96, 0, 11], 80, PROTO_TCP, SCOPE_CLUSTER_IP), 4),
        ];
        let names = BTreeMap::from([
            (1, "default/web:http".to_string()),
            (2, "default/web:http".to_string()),
            (3, "default/web:dns".to_string()),
            (4, "prod/api".to_string()),
        ]);
        let counts = BTreeMap::from([
            (1, stats(10, 1000, 2, 0)),
            (2, stats(5, 700, 1, 3)),
            (3, stats(4, 200, 4, 0)),
            (4, stats(1, 60, 1, 1)),
        ]);
        let rows = service_rows(&frontends, &names, &counts);
        assert_eq!(
            rows,
            vec![
                ServiceRow {
                    service: port("default", "web", "dns", "UDP"),
                    stats: stats(4, 200, 4, 0),
                },
                ServiceRow {
                    service: port("default", "web", "http", "TCP"),
                    stats: stats(15, 1700, 3, 3),
                },
                ServiceRow {
                    service: port("prod", "api", "", "TCP"),
                    stats: stats(1, 60, 1, 1),
                },
            ]
        );
    }

    #[test]
    fn a_frontend_without_a_name_is_left_out() {
        let frontends = [
            (key([10, 96, 0, 10], 80, PROTO_TCP, SCOPE_CLUSTER_IP), 1),
            // Removed between the reads (no name), and written by hand
            // (a name that is no Service's).
            (key([10, 96, 0, 12], 80, PROTO_TCP, SCOPE_CLUSTER_IP), 7),
            (key([10, 96, 0, 13], 80, PROTO_TCP, SCOPE_CLUSTER_IP), 8),
        ];
        let names = BTreeMap::from([(1, "default/web:http".to_string()), (8, "x".to_string())]);
        let counts = BTreeMap::from([
            (1, stats(2, 120, 1, 0)),
            (7, stats(50, 5000, 9, 0)),
            (8, stats(60, 6000, 9, 0)),
        ]);
        let rows = service_rows(&frontends, &names, &counts);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].service, port("default", "web", "http", "TCP"));
        assert_eq!(rows[0].stats, stats(2, 120, 1, 0));
    }

    #[test]
    fn a_port_whose_counts_cannot_be_read_still_has_a_row() {
        let frontends = [(key([10, 96, 0, 10], 80, PROTO_TCP, SCOPE_CLUSTER_IP), 1)];
        let names = BTreeMap::from([(1, "default/web:http".to_string())]);
        let rows = service_rows(&frontends, &names, &BTreeMap::new());
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].stats, ServiceStats::default());
    }
}
