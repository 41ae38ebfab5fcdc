//! Times the model part of the agent's sync ("model_ms") as the bench's
//! file source drives it: the manifest the bench writes (a Node, then per
//! Service a ClusterIP Service and an EndpointSlice of 10 endpoints on
//! this node), read by the real `FileSource`, first with BEFORE Services,
//! then rewritten with N. The second snapshot is what the bench's large
//! sync plans.
//!
//! `cargo run --release -p ferry-agent --example file_sync_speed -- [N] [BEFORE] [RUNS]`
use std::{
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use ferry_agent::{
    latency::TriggerTimes,
    plan::{Changed, PlanConfig, Planner, problem::ProblemLog},
    source::{Snapshot, Source, file::FileSource},
};
use ferry_harness::manifest;

/// The agent's allocator (agent/src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NODE: &str = "ferry-large";
const POD_CIDR: &str = "10.244.0.0/24";
const ENDPOINTS: usize = 10;

/// The bench's manifest of `n` Services (xtask's `service_set` and
/// `ferry_manifest`).
fn bench_manifest(n: usize) -> String {
    let mut docs = vec![manifest::node(NODE, POD_CIDR)];
    for i in 0..n {
        let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 16)) + i as u32);
        let endpoints: Vec<(Ipv4Addr, &str)> = (0..ENDPOINTS)
            .map(|j| {
                let addr = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * ENDPOINTS + j) as u32;
                (Ipv4Addr::from(addr), NODE)
            })
            .collect();
        let name = format!("svc-{i}");
        docs.push(manifest::service(&name, vip, &[("http", 80, "TCP", 8080)]));
        docs.push(manifest::endpoint_slice_on_nodes(
            &name,
            &endpoints,
            &[("http", 8080, "TCP")],
        ));
    }
    manifest::join(&docs)
}

/// The next snapshot of `source` after `path` is replaced by `text`.
fn read(source: &mut FileSource, path: &Path, text: &str) -> Snapshot {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(source.next())
}

/// The agent's model step (`run::Agent::apply` up to `planned`), timed
/// part by part: (triggers, planner, problems) in ms.
struct Model {
    planner: Planner,
    triggers: TriggerTimes,
    problems: ProblemLog,
}

impl Model {
    fn apply(&mut self, snapshot: &Snapshot) -> [f64; 3] {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let full = snapshot.changed == Changed::Everything;
        let t0 = Instant::now();
        let _ = self.triggers.new_triggers(&snapshot.objects.slices, full);
        let t1 = Instant::now();
        let update = self
            .planner
            .update(&snapshot.objects, &snapshot.changed)
            .expect("the Node does not change");
        let t2 = Instant::now();
        let logged = update
            .new_problems
            .iter()
            .chain(self.problems.new_ones(&snapshot.problems))
            .count();
        assert_eq!(logged, 0);
        let t3 = Instant::now();
        [ms(t1 - t0), ms(t2 - t1), ms(t3 - t2)]
    }
}

fn main() {
    // As the agent's main does: freed memory goes back to the system.
    ferry_agent::alloc::return_freed_memory_promptly();
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(100_000, |a| a.parse().expect("N"));
    let before: usize = args.next().map_or(10_000, |a| a.parse().expect("BEFORE"));
    let runs: usize = args.next().map_or(3, |a| a.parse().expect("RUNS"));
    let path = std::env::temp_dir().join(format!("ferry-file-sync-speed-{}", std::process::id()));
    let (small, large) = (bench_manifest(before), bench_manifest(n));
    for _ in 0..runs {
        let mut source = FileSource::new(&path);
        source.poll = Duration::from_millis(1);
        let mut model = Model {
            planner: Planner::new(&PlanConfig::for_node(NODE)),
            triggers: TriggerTimes::default(),
            problems: ProblemLog::default(),
        };
        // As the bench's node starts: its Node alone, then BEFORE Services.
        model.apply(&read(&mut source, &path, &manifest::node(NODE, POD_CIDR)));
        model.apply(&read(&mut source, &path, &small));
        let snapshot = read(&mut source, &path, &large);
        let kind = match &snapshot.changed {
            Changed::Everything => "everything".to_string(),
            Changed::Some { services, .. } => format!("{} Services changed", services.len()),
        };
        let [triggers, planner, problems] = model.apply(&snapshot);
        println!(
            "{before} -> {n} services x {ENDPOINTS} endpoints ({kind}): model {:.1} ms (triggers {triggers:.1}, planner.update {planner:.1}, problems {problems:.1})",
            triggers + planner + problems
        );
        assert_eq!(model.planner.plan().frontends.len(), n);
        // Dropped as the agent never does: not timed.
        drop(snapshot);
    }
    let _ = std::fs::remove_file(&path);
}
