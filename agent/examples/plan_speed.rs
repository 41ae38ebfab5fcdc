//! Times the agent's full plan (objects in memory to `NodePlan`, the
//! "model_ms" of its sync log line) on the benchmark's shape of objects:
//! N ClusterIP Services, one TCP port "http", each with one EndpointSlice
//! of 10 ready endpoints on this node (as xtask's `ServiceSpec::docs` and
//! the churn bench write them).
//!
//! `cargo run --release -p ferry-agent --example plan_speed -- [N] [RUNS] [ordered]`
//!
//! Each run is a full update of an empty planner (the first sync) and
//! then of the planner that already holds everything (a later full sync,
//! which also drops the old state); the medians of both are printed.
use std::{net::Ipv4Addr, time::Instant};

use ferry_agent::plan::{Changed, Objects, PlanConfig, Planner};
use k8s_openapi::{
    api::{
        core::v1::{Node, NodeSpec, Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

/// The agent's allocator (agent/src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NODE: &str = "churn";
const ENDPOINTS: usize = 10;

fn objects(n: usize) -> Objects {
    let mut objects = Objects {
        nodes: vec![Node {
            metadata: ObjectMeta {
                name: Some(NODE.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some("10.244.0.0/24".into()),
                pod_cidrs: Some(vec!["10.244.0.0/24".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    for i in 0..n {
        let name = format!("svc-{i}");
        let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 16)) + i as u32).to_string();
        objects.add_service(&Service {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                cluster_ip: Some(vip.clone()),
                cluster_ips: Some(vec![vip]),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    protocol: Some("TCP".into()),
                    target_port: Some(IntOrString::Int(8080)),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        let endpoints = (0..ENDPOINTS)
            .map(|j| {
                let addr = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * ENDPOINTS + j) as u32;
                Endpoint {
                    addresses: vec![Ipv4Addr::from(addr).to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    node_name: Some(NODE.into()),
                    ..Default::default()
                }
            })
            .collect();
        objects.add_slice(&EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{name}-slice")),
                namespace: Some("default".into()),
                labels: Some(
                    [("kubernetes.io/service-name".to_string(), name)]
                        .into_iter()
                        .collect(),
                ),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            endpoints,
        });
    }
    objects
}

/// `v` in a fixed pseudo-random order, as the kube source hands its
/// objects over (from hash maps).
fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        v.swap(i, (seed >> 33) as usize % (i + 1));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(100_000, |a| a.parse().expect("N"));
    let runs: usize = args.next().map_or(7, |a| a.parse().expect("RUNS"));
    // "ordered": as the file source keeps them (document order).
    let ordered = args.next().as_deref() == Some("ordered");
    let mut objects = objects(n);
    if !ordered {
        shuffle(&mut objects.services, 1);
        shuffle(&mut objects.slices, 2);
    }
    let cfg = PlanConfig::for_node(NODE);
    let (mut first, mut again) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let mut planner = Planner::new(&cfg);
        let t = Instant::now();
        planner.update(&objects, &Changed::Everything).unwrap();
        first.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        planner.update(&objects, &Changed::Everything).unwrap();
        again.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(planner.plan().frontends.len(), n);
    }
    println!(
        "{n} services{} x {ENDPOINTS} endpoints: full plan {:.1} ms (into an empty planner), {:.1} ms (over a full one); median of {runs}",
        if ordered { " (ordered)" } else { "" },
        median(first),
        median(again)
    );
}
