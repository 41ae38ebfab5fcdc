//! Scenario "churn": the agent on the Kubernetes API (issue 15 item 5).
//!
//! An API server stand-in (ferry-apiserver-standin, the real list/watch
//! wire protocol; the agent's kube-rs watchers talk to it inside the node's
//! network namespace) holds N ClusterIP Services of one TCP port, each with
//! one EndpointSlice of ENDPOINTS_PER_SERVICE endpoints. For each N:
//!
//! - **list -> first sync written**: from the agent's start until the
//!   pinned `ferry_services` map holds all N frontends (the map is the
//!   truth; the agent's own " synced " line is reported next to it). The
//!   node is brought up with the Node object alone (the harness waits for
//!   the CNI config, which the first sync writes), then its agent is
//!   stopped, its pins removed (a cold start: the maps are created anew),
//!   the Services and slices created, and the agent started again: that
//!   start is what is timed.
//! - **churn**: endpoint changes at a steady rate (each `--churn-rates`
//!   entry for `--seconds`): each replaces one endpoint of a random
//!   Service's slice, through the stand-in's in-process API, with the
//!   `endpoints.kubernetes.io/last-change-trigger-time` annotation set to
//!   the change's time. Each change's latency runs from the stand-in's
//!   store having applied it to the new address being in the frontend's
//!   active backend bank in the pinned maps, as a poller thread sees it
//!   by key lookups (its pass time, reported, bounds the resolution). A
//!   Service with a change still outstanding is not picked again until the
//!   change is seen, so every change has one address to look for.
//! - **kube-proxy** for the same change: what its partial sync writes
//!   (its way since Kubernetes 1.28), one `iptables-restore --noflush` of
//!   its top-level chains and the changed Service's chains, and one
//!   nftables transaction, both into tables holding the same N Services
//!   ([`super::service_set`]'s shapes).
use std::{
    collections::HashSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use ferry_apiserver_standin::ApiServer;
use ferry_common::{
    Backend, MAP_BACKENDS, MAP_SERVICES, SCOPE_CLUSTER_IP, ServiceKey, ServiceValue,
};
use ferry_harness::{Binaries, Cluster, Netns, Node, PlainNode};
use serde_json::{Value, json};

use super::{
    ENDPOINTS_PER_SERVICE, Opts, ServiceSpec, as_strs, endpoints_of, kube_proxy, plots,
    programming::{
        IPTABLES_SERVICES_PER_RESTORE, NFT_SERVICES_PER_TRANSACTION, timed_iptables_load,
        timed_load, timed_nft_load,
    },
    report::{Cell, Report, Table},
    service_set,
    testbed::{SyncLine, map_size_args, sync_and_resync_lines, sync_lines},
};

pub const NAME: &str = "churn";

const NODE: &str = "churn";
const POD_CIDR: &str = "10.244.1.0/24";
/// Replacement endpoints are numbered from here: no Service of the set
/// uses these addresses, so each change's address is new.
const NEW_ENDPOINTS: Ipv4Addr = Ipv4Addr::new(10, 192, 0, 0);
/// The longest the first sync may take.
const FIRST_SYNC_TIMEOUT: Duration = Duration::from_secs(900);
/// How long after a rate's last change its outstanding changes are still
/// waited for; any not seen by then are counted lost.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The poller's pause between passes, so it does not take a whole core
/// from the agent on this 2-core machine.
const POLL_PAUSE: Duration = Duration::from_millis(1);
/// Partial-sync transactions timed per size; the median is reported.
const NFT_CHANGES: usize = 5;
/// With `--churn-only`, kube-proxy's rule sets are loaded here first;
/// above this many Services that takes too long (nft in transactions of
/// 500 took 69 s for 10,000 Services here, and grows faster than the
/// Services), so the comparison is left to the full bench, which has the
/// rule sets loaded already.
const KUBE_PROXY_LOAD_MAX: usize = 20_000;

type ServicesMap = BpfHashMap<MapData, ServiceKey, ServiceValue>;
type BackendsMap = aya::maps::Array<MapData, Backend>;

/// kube-proxy's rule writes for one endpoint change among `services`
/// Services, ms.
#[derive(Clone, Copy, Debug)]
pub struct KubeProxyChange {
    pub services: usize,
    /// One `iptables-restore` of kube-proxy's partial sync.
    pub iptables_ms: f64,
    /// One partial-sync nftables transaction (median of NFT_CHANGES).
    pub nft_ms: f64,
}

/// Time kube-proxy's writes for one endpoint change, in `ipt` and `nft`,
/// which hold the rule sets of [`service_set`]`(n)` (as the programming
/// scenario leaves them; Service n/4, the one changed here, is the same
/// in both). The tables are left holding the changed set.
pub fn kube_proxy_change(ipt: &Netns, nft: &Netns, n: usize) -> Result<KubeProxyChange> {
    let (mut services, _) = service_set(n);
    let changed = n / 4;
    // What the iptables node holds for the endpoint the changes replace.
    let stale = services[changed].endpoints[0];
    let first = u32::from(Ipv4Addr::new(10, 191, 0, 0));
    let mut times = Vec::new();
    for k in 0..NFT_CHANGES as u32 {
        let (tx, cleanup) = kube_proxy::nftables_endpoint_change(
            &mut services,
            changed,
            0,
            Ipv4Addr::from(first + k),
        );
        times.push(timed_load(nft, "nft", &["-f", "-"], &tx)?.as_secs_f64() * 1e3);
        // A sync later, untimed.
        timed_load(nft, "nft", &["-f", "-"], &cleanup)?;
    }
    let ipt_time = timed_load(
        ipt,
        kube_proxy::IPTABLES_RESTORE,
        &["--noflush"],
        &kube_proxy::iptables_endpoint_change(&services, changed, 0, stale),
    )?;
    Ok(KubeProxyChange {
        services: n,
        iptables_ms: ipt_time.as_secs_f64() * 1e3,
        nft_ms: median(&mut times),
    })
}

/// Nodes holding kube-proxy's rule sets for `n` Services, for
/// `--churn-only`; how long loading them took (ms: iptables, nft).
fn kube_proxy_loaded(run_id: &str, n: usize) -> Result<(PlainNode, PlainNode, f64, f64)> {
    let ipt = PlainNode::create(run_id, "kp-ipt")?;
    let nft = PlainNode::create(run_id, "kp-nft")?;
    let (services, _) = service_set(n);
    let ipt_ms = timed_iptables_load(
        &ipt.netns,
        &kube_proxy::iptables_restores(&services, &[], IPTABLES_SERVICES_PER_RESTORE),
    )?
    .as_secs_f64()
        * 1e3;
    let nft_ms = timed_nft_load(
        &nft.netns,
        &kube_proxy::nftables(&services, NFT_SERVICES_PER_TRANSACTION),
    )?
    .as_secs_f64()
        * 1e3;
    Ok((ipt, nft, ipt_ms, nft_ms))
}

/// The scenario at every size of `--services`; `kube_proxy` has the
/// kube-proxy figures the full bench measured on its loaded rule sets
/// (none: measure them here, up to KUBE_PROXY_LOAD_MAX Services). The
/// histogram goes to `out_dir`.
pub fn run(
    bins: &Binaries,
    opts: &Opts,
    out_dir: &Path,
    kube_proxy: &[KubeProxyChange],
) -> Result<Report> {
    let mut report = Report::default();
    let mut histogram = Vec::new();
    for n in opts.sizes() {
        println!(
            "==> {NAME}: {n} services x {ENDPOINTS_PER_SERVICE} endpoints through the kube source"
        );
        let measured = churn_at(bins, opts, n)?;
        let kp = match kube_proxy.iter().find(|k| k.services == n) {
            Some(k) => Some(*k),
            None if n <= KUBE_PROXY_LOAD_MAX => {
                println!("==> {NAME}: loading kube-proxy's rule sets for {n} services");
                let run = Cluster::new(bins.clone())?;
                let (ipt, nft, ipt_load, nft_load) = kube_proxy_loaded(&run.run_id, n)?;
                report.line(format!(
                    "(kube-proxy's rule sets for {n} services loaded first: iptables-restore {ipt_load:.0} ms, nft {nft_load:.0} ms in transactions of {NFT_SERVICES_PER_TRANSACTION})"
                ));
                Some(kube_proxy_change(&ipt.netns, &nft.netns, n)?)
            }
            None => None,
        };
        for phase in &measured.phases {
            histogram.push((
                format!("{n} services, {:.0} changes/s", phase.rate),
                phase.latencies_ms.clone(),
            ));
        }
        report.append(measured.report(kp));
    }
    let svg = out_dir.join("bench-churn-latency.svg");
    plots::latency_histogram(
        &svg,
        "Endpoint change -> ferry's maps, through the kube source",
        &histogram,
    )?;
    report.line(format!("plot: {}", svg.display()));
    Ok(report)
}

/// What one size measured.
struct Measured {
    services: usize,
    /// Filling the stand-in: N Services and N EndpointSlices.
    fill: Duration,
    /// Agent start -> all N frontends in the maps.
    first_sync: Duration,
    /// One count of the services map at the end (the first sync's
    /// resolution).
    count_pass: Duration,
    /// The agent's first " synced " line after its start.
    sync_line: Option<SyncLine>,
    /// The agent's RSS after the first sync, and after all the changes.
    rss_mib: f64,
    rss_after_mib: f64,
    phases: Vec<Phase>,
}

/// One rate's changes.
struct Phase {
    rate: f64,
    issued: usize,
    /// How long issuing them took.
    issuing: Duration,
    latencies_ms: Vec<f64>,
    lost: usize,
    /// The poller's passes, ms each.
    passes_ms: Vec<f64>,
    /// The agent's syncs (and timed resyncs, which program whatever is
    /// pending too) from the first change until the last was seen.
    syncs: Vec<SyncLine>,
}

impl Measured {
    fn report(&self, kp: Option<KubeProxyChange>) -> Report {
        let n = self.services;
        let mut r = Report::default();
        r.line(format!(
            "churn, {n} services x {ENDPOINTS_PER_SERVICE} endpoints through the kube source (API stand-in filled in {:.1} s)",
            self.fill.as_secs_f64()
        ));
        let logged = match &self.sync_line {
            Some(l) => format!(
                "; the agent logged frontends={} parse {:.0}, model {:.0}, maps {:.0}, elapsed {:.0} ms, so its start-up and the LISTs took about {:.0} ms",
                l.field("frontends").unwrap_or("?"),
                l.ms("parse_ms"),
                l.ms("model_ms"),
                l.ms("maps_ms"),
                l.ms("elapsed_ms"),
                self.first_sync.as_secs_f64() * 1e3 - l.ms("elapsed_ms")
            ),
            None => "; the agent logged no sync line".to_string(),
        };
        r.line(format!(
            "agent start -> all {n} frontends in the maps (list, then first sync written): {:.0} ms (the map counted in {:.0} ms a pass){logged}",
            self.first_sync.as_secs_f64() * 1e3,
            self.count_pass.as_secs_f64() * 1e3,
        ));
        // Issue 15's target: under 300 MB (286 MiB) at 100,000 x 10.
        let rss_max = self.rss_mib.max(self.rss_after_mib);
        let verdict = if n < 100_000 {
            String::new()
        } else if rss_max * 1_048_576.0 < 300e6 {
            " (target < 300 MB at 100,000 Services: met)".into()
        } else {
            " (target < 300 MB at 100,000 Services: NOT met)".into()
        };
        r.line(format!(
            "agent RSS {:.0} MiB after the first sync, {:.0} MiB after the changes{verdict}",
            self.rss_mib, self.rss_after_mib
        ));
        let mut table = Table::new(
            ("endpoint change -> new backend in the active bank", 50),
            &[
                ("changes/s", 9),
                ("changes", 7),
                ("seen", 6),
                ("lost", 5),
                ("p50 ms", 8),
                ("p90 ms", 8),
                ("p99 ms", 8),
                ("max ms", 8),
                ("syncs", 5),
            ],
        );
        for p in &self.phases {
            let mut l = p.latencies_ms.clone();
            l.sort_by(f64::total_cmp);
            table.row(
                &format!("{n} services, {:.0} changes/s asked", p.rate),
                vec![
                    Cell::Rate(p.issued as f64 / p.issuing.as_secs_f64().max(1e-9)),
                    Cell::Count(p.issued as u64),
                    Cell::Count(l.len() as u64),
                    Cell::Count(p.lost as u64),
                    Cell::Millis(quantile(&l, 0.50)),
                    Cell::Millis(quantile(&l, 0.90)),
                    Cell::Millis(quantile(&l, 0.99)),
                    Cell::Millis(l.last().copied().unwrap_or(f64::NAN)),
                    Cell::Count(p.syncs.len() as u64),
                ],
            );
        }
        r.table(table);
        for p in &self.phases {
            let mut passes = p.passes_ms.clone();
            let pass = median(&mut passes);
            let max_pass = passes.last().copied().unwrap_or(f64::NAN);
            let field = |k: &str| {
                let mut v: Vec<f64> = p.syncs.iter().map(|s| s.ms(k)).collect();
                median(&mut v)
            };
            r.line(format!(
                "  {:.0}/s: the poller's pass over the outstanding changes took {pass:.2} ms (median; max {max_pass:.1}), +{} ms pause: the resolution; agent sync or resync lines meanwhile {} (a line follows all of its sync's writes, so a change can be seen before it; median parse {:.0}, model {:.0}, maps {:.1}, elapsed {:.0} ms)",
                p.rate,
                POLL_PAUSE.as_millis(),
                p.syncs.len(),
                field("parse_ms"),
                field("model_ms"),
                field("maps_ms"),
                field("elapsed_ms"),
            ));
        }
        match kp {
            Some(k) => {
                r.line(format!(
                    "kube-proxy, one endpoint changed among {n} services: iptables-restore of its partial sync {:.0} ms, nftables partial-sync transaction {:.1} ms (median of {NFT_CHANGES})",
                    k.iptables_ms, k.nft_ms
                ));
                for p in &self.phases {
                    let mut l = p.latencies_ms.clone();
                    let p50 = median(&mut l);
                    r.line(format!(
                        "  against ferry's p50 at {:.0}/s ({p50:.1} ms, the whole path from the API): iptables {:.2}x, nftables {:.2}x (kube-proxy's time / ferry's; its rule write alone, no watch, no debounce)",
                        p.rate,
                        k.iptables_ms / p50,
                        k.nft_ms / p50
                    ));
                }
            }
            None => r.line(format!(
                "kube-proxy at {n} services: its rule writes for one change are measured only on its whole rule sets, which are not loaded here above {KUBE_PROXY_LOAD_MAX} services (--churn-only) or --kube-proxy-up-to (the full bench)"
            )),
        }
        r
    }
}

/// The node, the stand-in and the measurements at `n` Services.
fn churn_at(bins: &Binaries, opts: &Opts, n: usize) -> Result<Measured> {
    let cluster = Cluster::new(bins.clone())?;
    // Dropped after the node (declared before it): the agent goes first.
    let api = ApiServer::new();
    api.create(node_object())?;
    let kubeconfig = cluster.root.join("kubeconfig");
    let size_args = map_size_args(n);
    let mut node = cluster.node_with_kube_api_and(NODE, &as_strs(&size_args), |ns| {
        let addr = api.listen_in(&ns.path())?;
        api.kubeconfig(addr, &kubeconfig)?;
        Ok(kubeconfig.clone())
    })?;
    node.kill_agent()?;
    std::fs::remove_dir_all(&node.pin_dir)
        .with_context(|| format!("removing {}", node.pin_dir.display()))?;

    let mut services = churn_set(n);
    let filling = Instant::now();
    for s in &services {
        api.create(service_object(s))?;
        api.create(slice_object(s, None))?;
    }
    let fill = filling.elapsed();
    println!(
        "    stand-in holds {n} services and slices ({:.1} s); starting the agent",
        fill.as_secs_f64()
    );
    let (first_sync, count_pass, sync_line) = first_sync(&mut node, n)?;
    println!(
        "    all {n} frontends in the maps {:.0} ms after the agent's start",
        first_sync.as_secs_f64() * 1e3
    );
    let rss_mib = node
        .agent_rss_bytes()
        .map_or(f64::NAN, |b| b as f64 / 1048576.0);

    let mut rng = fastrand::Rng::with_seed(n as u64);
    let mut next_addr = 0u32;
    let mut phases = Vec::new();
    for &rate in &opts.churn_rates {
        if rate <= 0.0 {
            continue;
        }
        // Let the agent settle after the previous rate.
        std::thread::sleep(Duration::from_secs(1));
        println!("    {rate:.0} endpoint changes/s for {} s", opts.seconds);
        let phase = churn_phase(
            &api,
            &node,
            &mut services,
            rate,
            opts.seconds,
            &mut rng,
            &mut next_addr,
        )?;
        let mut l = phase.latencies_ms.clone();
        println!(
            "    seen {} of {}, p50 {:.1} ms",
            phase.latencies_ms.len(),
            phase.issued,
            median(&mut l)
        );
        phases.push(phase);
    }
    let rss_after_mib = node
        .agent_rss_bytes()
        .map_or(f64::NAN, |b| b as f64 / 1048576.0);
    Ok(Measured {
        services: n,
        fill,
        first_sync,
        count_pass,
        sync_line,
        rss_mib,
        rss_after_mib,
        phases,
    })
}

/// [`service_set`]`(n)` with every Service at ENDPOINTS_PER_SERVICE
/// endpoints (the measured one of the other scenarios has one).
fn churn_set(n: usize) -> Vec<ServiceSpec> {
    let (mut services, _) = service_set(n);
    for (i, s) in services.iter_mut().enumerate() {
        if s.endpoints.len() != ENDPOINTS_PER_SERVICE {
            s.endpoints = endpoints_of(i);
        }
    }
    services
}

/// Start the agent and wait until the services map holds `n` frontends:
/// how long that took, how long the last count took, and the agent's
/// first sync line.
fn first_sync(node: &mut Node, n: usize) -> Result<(Duration, Duration, Option<SyncLine>)> {
    let before = sync_lines(&node.log).len();
    let start = Instant::now();
    node.start_agent()?;
    let mut map: Option<ServicesMap> = None;
    let (took, pass) = loop {
        if start.elapsed() > FIRST_SYNC_TIMEOUT {
            bail!(
                "the agent did not write {n} frontends within {FIRST_SYNC_TIMEOUT:?}:\n{}",
                log_tail(node)
            );
        }
        if node.agent_rss_bytes().is_none() {
            bail!("the agent exited:\n{}", log_tail(node));
        }
        let Some(m) = &map else {
            map = open_map(&node.pin_dir, MAP_SERVICES).ok();
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let counting = Instant::now();
        let count = m.keys().filter(Result::is_ok).count();
        if count >= n {
            break (start.elapsed(), counting.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // The agent logs its sync just after writing it.
    let waiting = Instant::now();
    let line = loop {
        let lines = sync_lines(&node.log);
        if let Some(l) = lines[before.min(lines.len())..]
            .iter()
            .find(|l| l.field("frontends").is_some())
        {
            break Some(l.clone());
        }
        if waiting.elapsed() > Duration::from_secs(30) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok((took, pass, line))
}

fn log_tail(node: &Node) -> String {
    let log = node.agent_log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn open_map<T>(pin_dir: &Path, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let path: PathBuf = pin_dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(T::try_from(Map::from_map_data(data)?)?)
}

/// One change on its way to the maps.
struct Change {
    key: ServiceKey,
    addr: [u8; 4],
    /// Its Service's index, busy until the change is seen.
    service: usize,
    /// When the stand-in's store had applied it.
    applied: Instant,
}

/// Changes at `rate` a second for `seconds`, each awaited by the poller.
fn churn_phase(
    api: &ApiServer,
    node: &Node,
    services: &mut [ServiceSpec],
    rate: f64,
    seconds: f64,
    rng: &mut fastrand::Rng,
    next_addr: &mut u32,
) -> Result<Phase> {
    let syncs_before = sync_and_resync_lines(&node.log).len();
    let busy: Arc<Mutex<HashSet<usize>>> = Arc::default();
    let (tx, rx) = mpsc::channel::<Change>();
    let poller = {
        let busy = busy.clone();
        let pin_dir = node.pin_dir.clone();
        std::thread::Builder::new()
            .name("churn-poller".into())
            .spawn(move || poll_changes(&pin_dir, &rx, &busy))?
    };
    let total = (rate * seconds).round() as usize;
    let start = Instant::now();
    let mut issued = 0;
    let issue = (|| -> Result<()> {
        for k in 0..total {
            let due = start + Duration::from_secs_f64(k as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let i = loop {
                let pick = rng.usize(..services.len());
                let mut busy = busy.lock().unwrap_or_else(|e| e.into_inner());
                if busy.insert(pick) {
                    break pick;
                }
                if busy.len() >= services.len() {
                    drop(busy);
                    std::thread::sleep(Duration::from_millis(1));
                }
            };
            let s = &mut services[i];
            let j = rng.usize(..s.endpoints.len());
            let addr = Ipv4Addr::from(u32::from(NEW_ENDPOINTS) + *next_addr);
            *next_addr += 1;
            s.endpoints[j] = addr;
            api.apply(slice_object(s, Some(SystemTime::now())))?;
            let applied = Instant::now();
            tx.send(Change {
                key: frontend(s),
                addr: addr.octets(),
                service: i,
                applied,
            })
            .map_err(|_| anyhow!("the poller stopped"))?;
            issued += 1;
        }
        Ok(())
    })();
    let issuing = start.elapsed();
    drop(tx);
    let polled = poller
        .join()
        .map_err(|_| anyhow!("the poller panicked"))??;
    issue?;
    let syncs = sync_and_resync_lines(&node.log)
        .split_off(syncs_before)
        .into_iter()
        .filter(|l| l.field("frontends").is_some())
        .collect();
    Ok(Phase {
        rate,
        issued,
        issuing,
        latencies_ms: polled.latencies_ms,
        lost: polled.lost,
        passes_ms: polled.passes_ms,
        syncs,
    })
}

struct Polled {
    latencies_ms: Vec<f64>,
    lost: usize,
    passes_ms: Vec<f64>,
}

/// Look up every outstanding change in the maps, pass after pass, until
/// the sender is gone and every change was seen or DRAIN_TIMEOUT passed.
fn poll_changes(
    pin_dir: &Path,
    rx: &mpsc::Receiver<Change>,
    busy: &Mutex<HashSet<usize>>,
) -> Result<Polled> {
    let services: ServicesMap = open_map(pin_dir, MAP_SERVICES)?;
    let backends: BackendsMap = open_map(pin_dir, MAP_BACKENDS)?;
    let mut outstanding: Vec<Change> = Vec::new();
    let mut latencies_ms = Vec::new();
    let mut passes_ms = Vec::new();
    let mut last_sent: Option<Instant> = None;
    loop {
        loop {
            match rx.try_recv() {
                Ok(c) => outstanding.push(c),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    last_sent.get_or_insert_with(Instant::now);
                    break;
                }
            }
        }
        let pass = Instant::now();
        outstanding.retain(|c| {
            if !holds(&services, &backends, c) {
                return true;
            }
            latencies_ms.push((Instant::now() - c.applied).as_secs_f64() * 1e3);
            busy.lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&c.service);
            false
        });
        if !outstanding.is_empty() {
            passes_ms.push(pass.elapsed().as_secs_f64() * 1e3);
        }
        if let Some(t) = last_sent
            && (outstanding.is_empty() || t.elapsed() > DRAIN_TIMEOUT)
        {
            return Ok(Polled {
                latencies_ms,
                lost: outstanding.len(),
                passes_ms,
            });
        }
        std::thread::sleep(POLL_PAUSE);
    }
}

/// Whether the change's address is in its frontend's active set (read
/// again after, so a run being rewritten is not taken for the active one).
fn holds(services: &ServicesMap, backends: &BackendsMap, c: &Change) -> bool {
    let Ok(sv) = services.get(&c.key, 0) else {
        return false;
    };
    let found = (0..sv.backend_count).any(|slot| {
        sv.slot_index(slot)
            .is_some_and(|i| backends.get(&i, 0).is_ok_and(|b| b.addr == c.addr))
    });
    found && services.get(&c.key, 0).is_ok_and(|now| now == sv)
}

fn frontend(s: &ServiceSpec) -> ServiceKey {
    ServiceKey {
        addr: s.vip.octets(),
        port: s.port,
        protocol: 6,
        scope: SCOPE_CLUSTER_IP,
    }
}

fn node_object() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE},
        "spec": {"podCIDR": POD_CIDR, "podCIDRs": [POD_CIDR]}
    })
}

fn service_object(s: &ServiceSpec) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": s.name, "namespace": "default"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": s.vip.to_string(), "clusterIPs": [s.vip.to_string()],
            "ports": [{"name": "http", "port": s.port, "protocol": "TCP", "targetPort": s.target_port}]
        }
    })
}

/// The Service's EndpointSlice, with the trigger-time annotation the
/// EndpointSlice controller sets when `changed` is given.
fn slice_object(s: &ServiceSpec, changed: Option<SystemTime>) -> Value {
    let endpoints: Vec<Value> = s
        .endpoints
        .iter()
        .map(|a| {
            json!({
                "addresses": [a.to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": NODE
            })
        })
        .collect();
    let mut metadata = json!({
        "name": format!("{}-slice", s.name), "namespace": "default",
        "labels": {"kubernetes.io/service-name": s.name}
    });
    if let Some(t) = changed {
        metadata["annotations"] =
            json!({"endpoints.kubernetes.io/last-change-trigger-time": rfc3339(t)});
    }
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": metadata,
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": s.target_port, "protocol": "TCP"}],
        "endpoints": endpoints
    })
}

/// `t` as RFC 3339 with microseconds, UTC ("2026-12-01T10:00:00.123456Z").
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    // Days since 1970-01-01 to a date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// The median (sorts `v`); NaN if empty.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    quantile(v, 0.5)
}

/// The `q` quantile of sorted `v` (nearest rank); NaN if empty.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_times_are_rfc3339_with_microseconds() {
        let t = UNIX_EPOCH + Duration::from_micros(1_764_583_200_123_456);
        assert_eq!(rfc3339(t), "2025-12-01T10:00:00.123456Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn churn_set_has_full_slices() {
        let set = churn_set(10);
        assert!(
            set.iter()
                .all(|s| s.endpoints.len() == ENDPOINTS_PER_SERVICE)
        );
        let slice = slice_object(&set[5], Some(UNIX_EPOCH));
        assert_eq!(slice["endpoints"].as_array().unwrap().len(), 10);
        assert_eq!(
            slice["metadata"]["labels"]["kubernetes.io/service-name"],
            "svc-5"
        );
    }
}
