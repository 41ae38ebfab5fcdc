//! A seeded fuzz of every packet program through BPF_PROG_TEST_RUN: frames
//! from `frames` (well-formed, then mutated) against a node whose maps
//! `world` filled and whose flows it started, each run checked by `check`
//! (a valid action for the hook, counted once by the counting policy,
//! malformed frames never rewritten, every rewrite checksum-correct and
//! touching only what NAT may touch), with counts by verdict, by outcome
//! and by the host's own classification of the frame.
//!
//! The cgroup socket programs take addresses, not packets: they are not
//! fuzzed here.
//!
//! A seed fixes every draw of the fuzz; the kernel's own draws (backends,
//! source-NAT ports: `bpf_get_prandom_u32`) vary, and the packets of the
//! warm-up's flows follow them, so frames and counts differ a little from
//! run to run of one seed. A failure prints the frame's bytes, in and out.
pub mod check;
pub mod frames;
pub mod world;

use std::{
    collections::BTreeMap,
    io::Write,
    time::{Duration, Instant},
};

use aya::{
    maps::{Map, MapData, RingBuf},
    programs::{TestRun, TestRunOptions},
};
use check::{Effect, Hook, Run, XDP_PASS, classify};
use ferry_common::{MAP_EVENTS, MonitorEvent, PodSource, outcome};

use crate::fixture::{Kernel, TEST_RUN_IFINDEX, ipv4_source};

/// Where a frame arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// A pod's veth: `ferry_from_pod`.
    Pod,
    /// The uplink: XDP, then tc (`ferry_from_network`) on what XDP passes.
    Network,
    /// One program alone.
    One(Hook),
}

/// The seed and length of a run.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub seed: u64,
    pub frames: u64,
}

pub const DEFAULT_SEED: u64 = 0x5eed_f022;
pub const SEED_VAR: &str = "FERRY_FUZZ_SEED";
pub const FRAMES_VAR: &str = "FERRY_FUZZ_FRAMES";

impl Config {
    /// `FERRY_FUZZ_SEED` (decimal or 0x-hex; default `DEFAULT_SEED`) and
    /// `FERRY_FUZZ_FRAMES` (default `frames`).
    pub fn from_env(frames: u64) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let seed = var(SEED_VAR).map_or(DEFAULT_SEED, |v| {
            parse_u64(&v).unwrap_or_else(|| panic!("{SEED_VAR}={v}: not a number"))
        });
        let frames = var(FRAMES_VAR).map_or(frames, |v| {
            parse_u64(&v).unwrap_or_else(|| panic!("{FRAMES_VAR}={v}: not a number"))
        });
        Self { seed, frames }
    }
}

fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim().replace('_', "");
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Failures kept whole; the rest are only counted.
const KEPT_FAILURES: usize = 20;

#[derive(Default)]
pub struct Stats {
    pub frames: u64,
    pub warm_up_frames: u64,
    pub runs: BTreeMap<Hook, u64>,
    pub verdicts: BTreeMap<(Hook, u32), u64>,
    /// Frames shorter than an Ethernet header, which the kernel refuses.
    pub refused: BTreeMap<Hook, u64>,
    /// Records read from `ferry_events`.
    pub events: u64,
    /// From-pod frames first run as traces, by whether the run succeeded.
    pub traced: BTreeMap<bool, u64>,
    /// By outcome name ("" when the run counted nothing).
    pub outcomes: BTreeMap<(&'static str, Hook), u64>,
    pub classes: BTreeMap<(String, Effect), u64>,
    pub elapsed: Duration,
}

/// The loaded programs, the last counter readings, and what was seen.
pub struct Engine {
    kernel: Kernel,
    counters: Vec<ferry_common::Counter>,
    /// `ferry_events`, drained now and then.
    events: RingBuf<MapData>,
    /// Which pod's veth a from-pod frame comes through (seeded).
    rng: fastrand::Rng,
    pub stats: Stats,
    pub failures: Vec<String>,
    pub failure_count: u64,
    /// What the frame being sent is, for failure reports.
    label: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn outcome_name(i: usize) -> &'static str {
    outcome::NAMES
        .get(i)
        .copied()
        .unwrap_or("(unnamed outcome)")
}

impl Engine {
    pub fn new(kernel: Kernel, seed: u64) -> Self {
        let counters = kernel.counters();
        let events = Map::RingBuf(MapData::from_pin(kernel.pin_dir().join(MAP_EVENTS)).unwrap())
            .try_into()
            .unwrap();
        Self {
            kernel,
            counters,
            events,
            rng: fastrand::Rng::with_seed(seed ^ 0x7e70_f9e7),
            stats: Stats::default(),
            failures: Vec::new(),
            failure_count: 0,
            label: String::new(),
        }
    }

    /// Send `frame` the way `via` says; the frame as it leaves, unless it
    /// was dropped or refused.
    pub fn send(&mut self, frame: &[u8], via: Via, label: &str) -> Option<Vec<u8>> {
        label.clone_into(&mut self.label);
        match via {
            Via::Pod => self.run(Hook::FromPod, frame).map(|(_, out)| out),
            Via::One(hook) => self.run(hook, frame).map(|(_, out)| out),
            Via::Network => match self.run(Hook::Xdp, frame)? {
                (XDP_PASS, out) => self.run(Hook::FromNetwork, &out).map(|(_, out)| out),
                (_, out) => Some(out),
            },
        }
    }

    /// Through the veth of the pod owning the frame's source, mostly; now
    /// and then another pod's (a spoofed source) or one ferry-cni never
    /// recorded. Non-pod sources come through some pod's veth.
    fn choose_veth(&mut self, input: &[u8]) {
        let source = ipv4_source(input).filter(|a| world::is_local_pod(*a));
        let owner = match (source, self.rng.u32(0..100)) {
            (_, 0..2) => None,
            (Some(own), 2..97) => Some(own),
            _ => Some(world::LOCAL_PODS[self.rng.usize(..world::LOCAL_PODS.len())].0),
        };
        let recorded = match owner {
            Some(addr) => self
                .kernel
                .pod_sources
                .insert(
                    TEST_RUN_IFINDEX,
                    PodSource {
                        addr: addr.octets(),
                    },
                    0,
                )
                .map_err(|e| e.to_string()),
            None => match self.kernel.pod_sources.remove(&TEST_RUN_IFINDEX) {
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.kind() == std::io::ErrorKind::NotFound =>
                {
                    Ok(())
                }
                other => other.map_err(|e| e.to_string()),
            },
        };
        recorded.expect("record the test-run device's pod");
    }

    /// `ferry-agent trace`'s run of `input` (the trace marker in the
    /// context): what it decided, and that it counted nothing.
    fn trace(&mut self, input: &[u8]) -> Option<Traced> {
        let ctx_in = ferry_agent::trace::trace_context(0);
        let mut ctx_out = [0u8; ferry_agent::trace::SKB_CTX_LEN];
        let mut output = vec![0u8; input.len() + 256];
        let result = self
            .kernel
            .dataplane
            .program(ferry_agent::loader::PROG_FROM_POD)
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut output),
                ctx_in: Some(&ctx_in),
                ctx_out: Some(&mut ctx_out),
                ..TestRunOptions::new()
            });
        *self.stats.traced.entry(result.is_ok()).or_default() += 1;
        let result = result.ok()?;
        output.truncate(result.data_size_out as usize);
        if self.kernel.counters() != self.counters {
            self.fail(format!(
                "from_pod ({}): a trace run counted\n  in:  {}",
                self.label,
                hex(input)
            ));
        }
        Some(Traced {
            verdict: result.return_value,
            output,
            outcome: ferry_agent::trace::traced_outcome(&ctx_out),
        })
    }

    /// Read every event the programs wrote, each through the monitor's
    /// own decoding: a well-formed record of a known outcome.
    fn drain_events(&mut self) {
        let mut wrong = Vec::new();
        while let Some(item) = self.events.next() {
            self.stats.events += 1;
            let bad = if item.len() != size_of::<MonitorEvent>() {
                Some(format!("an event of {} bytes", item.len()))
            } else {
                let event: MonitorEvent = bytemuck::pod_read_unaligned(&item);
                let _ = ferry_agent::monitor::show(&event, None).line();
                (event.outcome as usize >= outcome::NAMES.len())
                    .then(|| format!("an event of outcome {}: {event:?}", event.outcome))
            };
            wrong.extend(bad);
        }
        for bad in wrong {
            self.fail(format!("ferry_events: {bad}"));
        }
    }

    fn fail(&mut self, msg: String) {
        self.failure_count += 1;
        if self.failures.len() < KEPT_FAILURES {
            self.failures.push(msg);
        }
    }

    /// One BPF_PROG_TEST_RUN of `hook` on `input`, checked and counted:
    /// the verdict and the frame as it leaves, unless it was dropped,
    /// refused or failed a check.
    fn run(&mut self, hook: Hook, input: &[u8]) -> Option<(u32, Vec<u8>)> {
        let mut out = vec![0u8; input.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        };
        let mut twin = None;
        if hook == Hook::FromPod {
            self.choose_veth(input);
            if self.rng.u32(0..100) < TRACED_PERCENT {
                twin = self.trace(input);
            }
        }
        let dp = &mut self.kernel.dataplane;
        let result = match hook {
            Hook::FromPod => dp
                .program(ferry_agent::loader::PROG_FROM_POD)
                .test_run(opts),
            Hook::FromNetwork => dp
                .program(ferry_agent::loader::PROG_FROM_NETWORK)
                .test_run(opts),
            Hook::Xdp => dp.xdp_program().test_run(opts),
        };
        *self.stats.runs.entry(hook).or_default() += 1;
        if self.stats.runs.values().sum::<u64>() % 256 == 0 {
            self.drain_events();
        }
        let result = match result {
            Ok(r) => r,
            Err(_) if refused(hook, input) => {
                *self.stats.refused.entry(hook).or_default() += 1;
                return None;
            }
            Err(e) => {
                self.fail(format!(
                    "{} ({}): BPF_PROG_TEST_RUN failed: {e:?}\n  in:  {}",
                    hook.name(),
                    self.label,
                    hex(input)
                ));
                return None;
            }
        };
        out.truncate(result.data_size_out as usize);
        let verdict = result.return_value;
        *self.stats.verdicts.entry((hook, verdict)).or_default() += 1;

        let now = self.kernel.counters();
        let mut counted = Vec::new();
        let mut bytes = 0;
        for (i, (after, before)) in now.iter().zip(&self.counters).enumerate() {
            for _ in before.packets..after.packets {
                counted.push(outcome_name(i));
            }
            bytes += after.bytes - before.bytes;
        }
        self.counters = now;
        for name in &counted {
            *self.stats.outcomes.entry((name, hook)).or_default() += 1;
        }
        if counted.is_empty() {
            *self.stats.outcomes.entry(("", hook)).or_default() += 1;
        }
        if let Some(twin) = twin
            && let Err(why) = same_as_traced(&twin, verdict, &out, &counted, input)
        {
            self.fail(format!(
                    "from_pod ({}): a trace run of this frame differs from the real one: {why}\n  in:  {}\n  traced: {}\n  real:   {}",
                    self.label,
                    hex(input),
                    hex(&twin.output),
                    hex(&out)
                ));
        }
        let class = classify(input);
        let run = Run {
            hook,
            input,
            verdict,
            output: &out,
            counted: &counted,
        };
        let checked = check::check(&run).and_then(|effect| {
            let want = counted.len() as u64 * input.len() as u64;
            if bytes == want {
                Ok(effect)
            } else {
                Err(format!("{bytes} bytes counted, expected {want}"))
            }
        });
        match checked {
            Ok(effect) => {
                *self
                    .stats
                    .classes
                    .entry((class.to_string(), effect))
                    .or_default() += 1;
                (effect != Effect::Dropped).then_some((verdict, out))
            }
            Err(why) => {
                self.fail(format!(
                    "{} ({}), {class}: {why}\n  verdict {verdict}, counted {counted:?}\n  in:  {}\n  out: {}",
                    hook.name(),
                    self.label,
                    hex(input),
                    hex(&out)
                ));
                None
            }
        }
    }
}

/// Of the from-pod runs, how many are first run as `ferry-agent trace`
/// runs them, to compare.
const TRACED_PERCENT: u32 = 20;

/// A trace run's decision.
struct Traced {
    verdict: u32,
    output: Vec<u8>,
    outcome: Option<u32>,
}

/// A trace decides as the real run does: the same verdict and outcome, and
/// the same bytes, but for a new flow's draw (a trace records no flow, so
/// the real run draws again) — then the trace's rewrite must pass the
/// checks on its own.
fn same_as_traced(
    twin: &Traced,
    verdict: u32,
    output: &[u8],
    counted: &[&'static str],
    input: &[u8],
) -> Result<(), String> {
    let traced = twin.outcome.map(|o| outcome_name(o as usize));
    if twin.verdict != verdict || traced != counted.first().copied() {
        return Err(format!(
            "trace: verdict {} outcome {traced:?}; real: verdict {verdict} outcome {counted:?}",
            twin.verdict
        ));
    }
    if twin.output == output {
        return Ok(());
    }
    if traced != Some("translated") {
        return Err(format!("other bytes, outcome {traced:?}"));
    }
    let run = Run {
        hook: Hook::FromPod,
        input,
        verdict,
        output: &twin.output,
        counted,
    };
    check::check(&run).map(|_| ())
}

/// A frame BPF_PROG_TEST_RUN refuses (EINVAL) before any program sees
/// it: shorter than an Ethernet header, or, for an skb (tc), an IPv4 or
/// IPv6 ethertype without room for that header (kernel 6.18 checks it
/// when it builds the skb). The uplink's XDP run, which takes them, shares
/// the parser with tc.
pub fn refused(hook: Hook, input: &[u8]) -> bool {
    if input.len() < check::ETH_HLEN {
        return true;
    }
    let ethertype = u16::from_be_bytes([input[12], input[13]]);
    hook != Hook::Xdp
        && match ethertype {
            0x0800 => input.len() < check::ETH_HLEN + 20,
            0x86dd => input.len() < check::ETH_HLEN + 40,
            _ => false,
        }
}

/// A finished run.
pub struct Report {
    pub config: Config,
    pub stats: Stats,
    pub flows: usize,
    pub failures: Vec<String>,
    pub failure_count: u64,
}

/// Fill a fresh node's maps, start its flows, then send `config.frames`
/// frames; all of it from inside a network namespace of its own
/// (`world::namespace`), where the programs' fib lookups find next hops.
pub fn run(config: Config) -> Report {
    let ns = world::namespace().expect("the fuzz's network namespace");
    ferry_harness::netns::in_netns(&ns.path(), move || run_here(config))
        .expect("the fuzz ran (a panic inside it is printed above)")
}

fn run_here(config: Config) -> Report {
    let started = Instant::now();
    let mut kernel = Kernel::load();
    let frontends = world::fill(&mut kernel);
    let mut engine = Engine::new(kernel, config.seed);
    let world = world::warm_up(&mut engine, frontends);
    engine.stats.warm_up_frames = engine.stats.runs.values().sum();
    let mut generator = frames::Gen::new(config.seed);
    while engine.stats.frames < config.frames {
        let burst = generator.burst(&world);
        for (frame, via) in burst.frames {
            let label = format!(
                "frame {} of seed {:#x}: {}{}",
                engine.stats.frames,
                config.seed,
                burst.template,
                if burst.mutated { ", mutated" } else { "" }
            );
            engine.send(&frame, via, &label);
            engine.stats.frames += 1;
        }
    }
    engine.drain_events();
    engine.stats.elapsed = started.elapsed();
    Report {
        config,
        flows: world.flows.len(),
        stats: engine.stats,
        failures: engine.failures,
        failure_count: engine.failure_count,
    }
}

impl Report {
    /// Packets `hook` counted under outcome `name`.
    pub fn counted_by(&self, name: &str, hook: Hook) -> u64 {
        self.stats
            .outcomes
            .iter()
            .filter(|((n, h), _)| *n == name && *h == hook)
            .map(|(_, c)| c)
            .sum()
    }

    /// Packets counted under outcome `name`, over every hook.
    pub fn counted(&self, name: &str) -> u64 {
        self.stats
            .outcomes
            .iter()
            .filter(|((n, _), _)| *n == name)
            .map(|(_, c)| c)
            .sum()
    }

    /// The verdict, outcome and class tables.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let s = &self.stats;
        let mut t = String::new();
        let runs: u64 = s.runs.values().sum();
        let _ = writeln!(
            t,
            "fuzz: seed {:#x} ({SEED_VAR}), {} frames ({FRAMES_VAR}) after {} warm-up runs starting {} flows; {runs} program runs and {} from_pod trace runs compared, {} monitor events, in {:.1} s; {} failures",
            self.config.seed,
            s.frames,
            s.warm_up_frames,
            self.flows,
            s.traced.get(&true).copied().unwrap_or(0),
            s.events,
            s.elapsed.as_secs_f64(),
            self.failure_count,
        );
        let cols = Hook::ALL;
        let header = |t: &mut String, title: &str| {
            let _ = write!(t, "{title:<34}");
            for h in cols {
                let _ = write!(t, "{:>14}", h.name());
            }
            let _ = writeln!(t);
        };
        let cell = |t: &mut String, v: Option<u64>| {
            let _ = match v {
                Some(v) => write!(t, "{v:>14}"),
                None => write!(t, "{:>14}", "-"),
            };
        };
        header(&mut t, "by verdict");
        let mut names: Vec<(u32, &str)> = Vec::new();
        for h in cols {
            for v in h.verdicts() {
                if !names.contains(v) {
                    names.push(*v);
                }
            }
        }
        for (code, name) in names {
            let _ = write!(t, "  {:<32}", format!("{name} ({code})"));
            for h in cols {
                let valid = h.verdicts().iter().any(|(c, n)| *c == code && *n == name);
                cell(
                    &mut t,
                    valid.then(|| s.verdicts.get(&(h, code)).copied().unwrap_or(0)),
                );
            }
            let _ = writeln!(t);
        }
        let _ = write!(t, "  {:<32}", "refused by BPF_PROG_TEST_RUN");
        for h in cols {
            cell(&mut t, Some(s.refused.get(&h).copied().unwrap_or(0)));
        }
        let _ = writeln!(t);
        header(&mut t, "by outcome (ferry_counters)");
        let mut outcome_names: Vec<&str> = s.outcomes.keys().map(|(n, _)| *n).collect();
        outcome_names.dedup();
        outcome_names.sort_by_key(|n| {
            outcome::NAMES
                .iter()
                .position(|x| x == n)
                .unwrap_or(usize::MAX)
        });
        for name in outcome_names {
            let shown = if name.is_empty() {
                "(not counted: not ferry's)"
            } else {
                name
            };
            let _ = write!(t, "  {shown:<32}");
            for h in cols {
                cell(
                    &mut t,
                    Some(s.outcomes.get(&(name, h)).copied().unwrap_or(0)),
                );
            }
            let _ = writeln!(t);
        }
        let effects = [
            Effect::Dropped,
            Effect::Unchanged,
            Effect::MacsOnly,
            Effect::Rewritten,
            Effect::Rejected,
        ];
        let _ = write!(t, "{:<34}", "by frame class (host's reading)");
        for e in effects {
            let _ = write!(t, "{:>11}", format!("{e:?}"));
        }
        let _ = writeln!(t);
        let mut classes: Vec<&String> = s.classes.keys().map(|(c, _)| c).collect();
        classes.dedup();
        for class in classes {
            let _ = write!(t, "  {class:<32}");
            for e in effects {
                let n = s.classes.get(&(class.clone(), e)).copied().unwrap_or(0);
                let _ = write!(t, "{n:>11}");
            }
            let _ = writeln!(t);
        }
        t
    }

    /// Print the tables to the test's stderr file descriptor directly, so
    /// that they show whether or not the test harness captures output.
    pub fn print(&self) {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(self.table().as_bytes());
        for f in &self.failures {
            let _ = writeln!(err, "FAILED {f}");
        }
        let _ = err.flush();
    }

    /// Every failure kept, for the test's panic message.
    pub fn failures_text(&self) -> String {
        let mut s = format!(
            "{} of the fuzz's checks failed (seed {:#x}; rerun with {SEED_VAR}={:#x} {FRAMES_VAR}={}):\n",
            self.failure_count, self.config.seed, self.config.seed, self.config.frames
        );
        for f in &self.failures {
            s.push_str(f);
            s.push('\n');
        }
        s
    }
}
