//! `cargo xtask bench`: ferry against the direct pod-IP path and against
//! kube-proxy-shaped rule sets, side by side in one run, as ratios.
//!
//! It is split into named scenarios, one module each, each returning its
//! part of the [`Report`]:
//! - [`programming`]: how long the Service set takes to program (ferry's
//!   full and one-endpoint syncs, kube-proxy's rule loads);
//! - [`pod_to_service`]: pod to ClusterIP on one node, through ferry (tc,
//!   and socket LB at connect()) and kube-proxy's rule sets, against the
//!   direct pod-IP path;
//! - [`program_cost`]: ferry's tc program per packet (BPF_PROG_TEST_RUN);
//! - [`nodeport`]: an external client through a NodePort to a backend on
//!   another node;
//! - [`churn`]: the agent on the Kubernetes API (the stand-in) with the
//!   whole Service set: its first sync, and how long an endpoint change
//!   takes to reach the maps while endpoints change at a steady rate.
//!
//! The first three share one [`testbed::Testbed`]: two pods per node, the
//! same addressing (a /32 per pod, a link-local gateway), the same load
//! generator and the same server; only what sits between the pods changes.
//! Rounds interleave the paths so that a noisy moment on the machine hurts
//! all of them alike, and each figure is the median over rounds.
mod churn;
mod cpu;
mod kube_proxy;
mod nodeport;
mod plots;
mod pod_to_service;
mod program_cost;
mod programming;
mod report;
mod testbed;
mod traffic;

use std::net::Ipv4Addr;

use anyhow::Result;
use ferry_harness::{Binaries, Node};

use report::Report;
use testbed::Testbed;

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const SERVER_PORT: u16 = 8080;
const SERVICE_PORT: u16 = 80;
const ENDPOINTS_PER_SERVICE: usize = 10;
/// Server threads: more than the concurrent clients, so none waits.
const SERVER_THREADS: &str = "16";

#[derive(clap::Args, Debug)]
pub struct Opts {
    /// Rounds over all scenarios; each figure is the median.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds per connection-rate and per latency measurement.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Concurrent connecting clients for the connection rate.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Services in the large scenarios (each with 10 endpoints); a list
    /// (`10000,100000`) measures each size in turn and plots them.
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    services: Vec<usize>,
    /// Load kube-proxy's whole rule sets only up to this many Services.
    /// Above it they cannot be loaded here (iptables' x_tables holds about
    /// 50,000 Services of 10 endpoints at most; iptables-nft and nft take
    /// over 10 minutes for 100,000), so the larger sizes load the part of
    /// them a new connection walks (every Service's entry, only the
    /// measured Service's chains behind it).
    #[arg(long, default_value_t = 20_000)]
    kube_proxy_up_to: usize,
    /// Only the NodePort comparison.
    #[arg(long)]
    nodeport_only: bool,
    /// Only the churn scenario (the kube source under endpoint changes).
    #[arg(long, conflicts_with = "nodeport_only")]
    churn_only: bool,
    /// Endpoint changes per second in the churn scenario, each rate for
    /// `--seconds`.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    churn_rates: Vec<f64>,
}

impl Opts {
    /// The sizes to measure, smallest first, each once.
    fn sizes(&self) -> Vec<usize> {
        let mut sizes: Vec<usize> = self.services.iter().copied().filter(|n| *n > 0).collect();
        sizes.sort_unstable();
        sizes.dedup();
        if sizes.is_empty() {
            sizes.push(10_000);
        }
        sizes
    }

    fn largest(&self) -> usize {
        *self.sizes().last().expect("one size at least")
    }
}

/// One ClusterIP Service port of the benchmark's object set.
#[derive(Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub target_port: u16,
    pub endpoints: Vec<Ipv4Addr>,
}

impl ServiceSpec {
    /// The Service and its EndpointSlice, every endpoint on `node`.
    pub fn docs(&self, node: &str) -> [String; 2] {
        let endpoints: Vec<(Ipv4Addr, &str)> = self.endpoints.iter().map(|a| (*a, node)).collect();
        let ports = [("http", self.port, "TCP", self.target_port)];
        [
            ferry_harness::manifest::service(&self.name, self.vip, &ports),
            ferry_harness::manifest::endpoint_slice_on_nodes(
                &self.name,
                &endpoints,
                &[("http", self.target_port, "TCP")],
            ),
        ]
    }
}

/// `ferry-load serve` on the bench's server port.
fn serve_args() -> [String; 3] {
    [
        "serve".into(),
        SERVER_PORT.to_string(),
        SERVER_THREADS.into(),
    ]
}

/// `args` as the harness's spawn takes them.
fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// `count` Services of ENDPOINTS_PER_SERVICE endpoints each on addresses
/// nothing answers, except the measured one, in the middle of the list (as
/// an average Service sits in kube-proxy's KUBE-SERVICES chain), whose one
/// endpoint is the server pod.
fn service_set(count: usize) -> (Vec<ServiceSpec>, Ipv4Addr) {
    let measured = measured_service(count);
    let vip = |i: usize| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 16)) + i as u32);
    let services = (0..count)
        .map(|i| ServiceSpec {
            name: format!("svc-{i}"),
            vip: vip(i),
            port: SERVICE_PORT,
            target_port: SERVER_PORT,
            endpoints: if i == measured {
                vec![SERVER_IP]
            } else {
                endpoints_of(i)
            },
        })
        .collect();
    (services, vip(measured))
}

/// The index of the measured Service among `count` of [`service_set`].
fn measured_service(count: usize) -> usize {
    count / 2
}

/// The ENDPOINTS_PER_SERVICE endpoints of Service `i` of [`service_set`]
/// (but the measured one): addresses nothing answers, 10.128.0.0 onwards.
fn endpoints_of(i: usize) -> Vec<Ipv4Addr> {
    (0..ENDPOINTS_PER_SERVICE)
        .map(|j| {
            Ipv4Addr::from(
                u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * ENDPOINTS_PER_SERVICE + j) as u32,
            )
        })
        .collect()
}

/// What a node's datapath dropped or rejected, by outcome ("none" if
/// nothing): anything ferry dropped is named, not hidden in a rate.
fn datapath_drops(node: &Node) -> Result<String> {
    let drops: Vec<String> = node
        .inspect("counters")?
        .lines()
        .filter(|l| l.starts_with("drop_") || l.starts_with("rejected"))
        .filter(|l| l.split_whitespace().nth(1) != Some("0"))
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join("="))
        .collect();
    Ok(if drops.is_empty() {
        "none".to_string()
    } else {
        drops.join(", ")
    })
}

/// The run's first line: its shape and the machine's.
fn header(opts: &Opts) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "ferry bench: {} rounds x {} s, {} clients, {cpus} CPUs, kernel {}",
        opts.rounds,
        opts.seconds,
        opts.clients,
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    )
}

pub fn run(opts: &Opts) -> Result<()> {
    crate::setup::run()?;
    crate::build_bins(true)?;
    let root = std::env::current_dir()?;
    let bin_dir = root.join("target/release");
    let bins = Binaries::in_dir(&bin_dir)?;
    let load = bin_dir.join("ferry-load");
    let mut report = Report::default();
    report.line(header(opts));
    if opts.nodeport_only {
        report.append(nodeport::run(&bins, &load, opts)?);
        println!("{}", report.render());
        return Ok(());
    }
    if opts.churn_only {
        report.append(churn::run(&bins, opts, &root.join("target"), &[])?);
        let text = report.render();
        println!("\n{text}");
        let out = root.join("target/bench-churn-latest.txt");
        std::fs::write(&out, &text)?;
        println!("(saved to {})", out.display());
        return Ok(());
    }
    let sizes = opts.sizes();
    let largest = opts.largest();
    let (small, small_vip) = service_set(10);

    println!("==> bringing up five nodes (network namespaces), two pods each");
    let bed = Testbed::create(&bins, &load, largest)?;
    let mut points = Vec::new();
    let mut kube_proxy_changes = Vec::new();
    for &n in &sizes {
        let (large, large_vip) = service_set(n);
        println!(
            "==> {}: loading {n} services x {ENDPOINTS_PER_SERVICE} endpoints into each large node",
            programming::NAME
        );
        let extent = if n <= opts.kube_proxy_up_to {
            kube_proxy::Extent::Whole
        } else {
            kube_proxy::Extent::Walked
        };
        let (programmed, sync) = programming::run(&bed, &small, &large, extent)?;
        let (measured, rates) =
            pod_to_service::run(&bed, &load, opts, n, small_vip, large_vip, extent)?;
        report.append(measured);
        report.append(programmed);
        println!("==> {}: ferry's program per packet", program_cost::NAME);
        report.append(program_cost::run(
            &bed.ferry_small,
            small_vip,
            &bed.ferry_large,
            large_vip,
            n,
            &load,
            opts,
        )?);
        if extent == kube_proxy::Extent::Whole {
            println!(
                "==> {}: kube-proxy's rule writes for one endpoint change",
                churn::NAME
            );
            kube_proxy_changes.push(churn::kube_proxy_change(
                &bed.iptables.node.netns,
                &bed.nftables.node.netns,
                n,
            )?);
        }
        points.push(plots::Point {
            services: n,
            rates,
            sync,
            kube_proxy_walked: extent == kube_proxy::Extent::Walked,
        });
    }
    // The one-node paths go first: their namespaces must not compete.
    drop(bed);
    report.append(churn::run(
        &bins,
        opts,
        &root.join("target"),
        &kube_proxy_changes,
    )?);
    report.append(nodeport::run(&bins, &load, opts)?);
    for svg in plots::write(&root.join("target"), &points)? {
        report.line(format!("plot: {}", svg.display()));
    }
    let text = report.render();
    println!("\n{text}");
    let out = root.join("target/bench-latest.txt");
    std::fs::write(&out, &text)?;
    println!("(saved to {})", out.display());
    Ok(())
}
