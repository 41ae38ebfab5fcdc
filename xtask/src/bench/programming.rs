//! Scenario "programming": how long it takes to put the Service set in
//! place — ferry-agent's full sync of every Service, its sync after one
//! endpoint changed among them (what every rolling update costs), and
//! kube-proxy's rule loads for the same set. It leaves the test bed's
//! nodes programmed for the pod-to-Service scenario.
use std::{
    io::Write as _,
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use ferry_harness::Netns;

use super::{ENDPOINTS_PER_SERVICE, ServiceSpec, kube_proxy, report::Report, testbed::Testbed};

pub const NAME: &str = "programming";

/// The iptables rule set goes in by restores of this many Services each
/// (one restore of more takes disproportionately longer: see
/// [`kube_proxy::iptables_restores`]).
pub const IPTABLES_SERVICES_PER_RESTORE: usize = 10_000;

/// kube-proxy's nftables mode writes large rule sets in transactions of
/// this many Services.
pub const NFT_SERVICES_PER_TRANSACTION: usize = 500;

/// Load `small` into ferry-10, then `large` (timed) into ferry-large, then
/// change one endpoint (timed), then load kube-proxy's rules for the
/// changed set into the iptables and nftables nodes (timed).
/// The times a sync took, for the plots (ms).
#[derive(Clone, Copy, Debug)]
pub struct SyncTimes {
    pub ferry_full: f64,
    pub ferry_one: f64,
    pub iptables: f64,
    pub nftables: f64,
}

pub fn run(
    bed: &Testbed,
    small: &[ServiceSpec],
    large: &[ServiceSpec],
    kube_proxy: kube_proxy::Extent,
) -> Result<(Report, SyncTimes)> {
    let n = large.len();
    bed.ferry_small.load_services(small)?;
    let full = bed.ferry_large.load_services(large)?;
    let mut changed = large.to_vec();
    let last = changed.len() - 1;
    changed[last].endpoints[0] = Ipv4Addr::new(10, 127, 255, 254);
    let one = bed.ferry_large.load_services(&changed)?;
    let kp_ipt = &bed.iptables.node.netns;
    let kp_nft = &bed.nftables.node.netns;
    // An earlier size's table goes first (iptables-restore replaces the
    // tables it is given by itself).
    let _ = kp_nft.exec(&["nft", "delete", "table", "ip", "kube-proxy"]);
    // How long kube-proxy's rule sets took to load, (iptables, nft): the
    // whole sets, or the walked parts (not kube-proxy's load times).
    let (ipt_time, nft_time) = match kube_proxy {
        kube_proxy::Extent::Whole => (
            timed_iptables_load(
                kp_ipt,
                &kube_proxy::iptables_restores(&changed, &[], IPTABLES_SERVICES_PER_RESTORE),
            )?,
            timed_nft_load(
                kp_nft,
                &kube_proxy::nftables(&changed, NFT_SERVICES_PER_TRANSACTION),
            )?,
        ),
        kube_proxy::Extent::Walked => {
            let measured = super::measured_service(n);
            (
                timed_load(
                    kp_ipt,
                    kube_proxy::IPTABLES_RESTORE,
                    &[],
                    &kube_proxy::iptables_walked(&changed, measured),
                )?,
                timed_nft_load(kp_nft, &kube_proxy::nftables_walked(&changed, measured))?,
            )
        }
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;

    let mut report = Report::default();
    // Issue 15's targets for the agent's own part (objects in memory to
    // maps written, the model and the map writes): a full sync of 10,000
    // Services under 100 ms and of 100,000 under 1 s (proportionally in
    // between), one changed endpoint within 1 ms.
    let full_target = (n as f64 / 100.0).max(100.0);
    let own = |l: &super::testbed::SyncLine| l.ms("model_ms") + l.ms("maps_ms");
    let verdict = |ms: f64, target: f64| if ms < target { "met" } else { "NOT met" };
    report.line(format!(
        "full sync of {n} services x {ENDPOINTS_PER_SERVICE} endpoints, ferry-agent: objects to maps {:.0} ms (model {:.0}, maps {:.0}; target < {full_target:.0} ms: {}), {:.0} ms with the file source's YAML parse",
        own(&full),
        full.ms("model_ms"),
        full.ms("maps_ms"),
        verdict(own(&full), full_target),
        full.ms("elapsed_ms"),
    ));
    report.line(format!(
        "one endpoint changed among {n} services, ferry-agent: objects to maps {:.2} ms (model {:.2}, maps {:.2}; target < 1 ms: {}), {:.0} ms with the YAML parse",
        own(&one),
        one.ms("model_ms"),
        one.ms("maps_ms"),
        verdict(own(&one), 1.0),
        one.ms("elapsed_ms"),
    ));
    match kube_proxy {
        kube_proxy::Extent::Whole => report.line(format!(
            "same rule set, kube-proxy style: iptables-restore {:.0} ms ({}, {} restore(s) of up to {IPTABLES_SERVICES_PER_RESTORE} services), nft -f {:.0} ms in transactions of {NFT_SERVICES_PER_TRANSACTION} services ({})",
            ms(ipt_time),
            tool_version(kube_proxy::IPTABLES_RESTORE),
            n.div_ceil(IPTABLES_SERVICES_PER_RESTORE),
            ms(nft_time),
            tool_version("nft")
        )),
        kube_proxy::Extent::Walked => report.line(format!(
            "kube-proxy's whole rule sets not loaded at {n} services (above --kube-proxy-up-to): iptables' x_tables holds about 50,000 services x {ENDPOINTS_PER_SERVICE} at most (the kernel caps a table at 512 MiB), and iptables-nft's and nft's took over 10 minutes here. (d) and (e) measure the part a new connection walks: every service's KUBE-SERVICES rule / service-ips element, the measured service's chains behind its own, one empty chain behind the others (loaded in {:.0} ms / {:.0} ms, not kube-proxy's load times)",
            ms(ipt_time),
            ms(nft_time),
        )),
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    for (label, ferry, services) in [
        ("ferry-10", &bed.ferry_small, small.len()),
        ("ferry-large", &bed.ferry_large, n),
    ] {
        report.line(format!(
            "{label} ({services} services): kernel map memory {:.1} MiB, agent RSS {:.1} MiB",
            mib(ferry.node.map_memory_bytes()?),
            ferry.node.agent_rss_bytes().map_or(f64::NAN, mib),
        ));
    }
    let times = SyncTimes {
        ferry_full: full.ms("elapsed_ms"),
        ferry_one: one.ms("elapsed_ms"),
        // The walked parts' load times are not kube-proxy's: not plotted.
        iptables: match kube_proxy {
            kube_proxy::Extent::Whole => ms(ipt_time),
            kube_proxy::Extent::Walked => f64::NAN,
        },
        nftables: match kube_proxy {
            kube_proxy::Extent::Whole => ms(nft_time),
            kube_proxy::Extent::Walked => f64::NAN,
        },
    };
    Ok((report, times))
}

/// Load `restores` (from [`kube_proxy::iptables_restores`]) in turn into
/// `ns`, the first replacing the tables and the rest added to them; how
/// long it took in all.
pub fn timed_iptables_load(ns: &Netns, restores: &[String]) -> Result<Duration> {
    let mut took = Duration::ZERO;
    for (k, input) in restores.iter().enumerate() {
        let args: &[&str] = if k == 0 { &[] } else { &["--noflush"] };
        took += timed_load(ns, kube_proxy::IPTABLES_RESTORE, args, input)?;
    }
    Ok(took)
}

/// Load `transactions` (from [`kube_proxy::nftables`] and its kin) in turn
/// into `ns` with `nft -f`; how long it took in all.
pub fn timed_nft_load(ns: &Netns, transactions: &[String]) -> Result<Duration> {
    let mut took = Duration::ZERO;
    for input in transactions {
        took += timed_load(ns, "nft", &["-f", "-"], input)?;
    }
    Ok(took)
}

/// Feed `input` to `program args` inside `ns`; how long it took.
pub fn timed_load(ns: &Netns, program: &str, args: &[&str], input: &str) -> Result<Duration> {
    let start = Instant::now();
    let mut child = ns
        .command(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program} (cargo xtask setup installs it)"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(start.elapsed())
}

fn tool_version(program: &str) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| format!("{program} (version unknown)"))
}
