//! The parsers' fuzz targets (`ferry_agent::fuzzing`, which `cargo xtask
//! fuzz --targets-for SECS` runs under libFuzzer) over a seeded corpus of
//! mutated inputs, without libFuzzer: none may panic, and each input must
//! be done within a time and memory bound. Then the hostile YAML a fuzzer
//! takes long to build: deep nesting, alias bombs, a large anchor replayed
//! many times, many documents.
use std::{
    alloc::{GlobalAlloc, Layout, System},
    path::Path,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use ferry_agent::{fuzzing, source::file::parse_manifest};

/// Counts live heap bytes and their peak, so a test can bound what one
/// input costs.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is passed to the system allocator unchanged; only
// counters are kept beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One measurement at a time: the counters are process-wide.
static MEASURING: Mutex<()> = Mutex::new(());

/// Run `f`: how long it took and the most heap it held at once beyond
/// what was live before.
fn measure(f: impl FnOnce()) -> (Duration, usize) {
    let _one = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let start = Instant::now();
    f();
    let elapsed = start.elapsed();
    (elapsed, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

/// What one input of the corpus may cost (a debug build on a slow, busy
/// machine: generous, but far below what a blow-up takes).
const TIME_BOUND: Duration = Duration::from_secs(5);
const MEMORY_BOUND: usize = 64 << 20;
const MUTANTS: usize = 1500;

const YAML_TOKENS: &[&str] = &[
    "&a ",
    "*a",
    "<<: *a\n",
    "- ",
    ": ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "!!str ",
    "!!binary ",
    "!custom ",
    "---\n",
    "...\n",
    "\t",
    "\"",
    "'",
    "|\n",
    ">-\n",
    "? ",
    "#",
    "%YAML 1.2\n",
    "\u{feff}",
    "~",
    "null",
    "0x1F",
    "1e400",
    "-0",
    ".inf",
    "2147483648",
    "65536",
    "-1",
    "\n  ",
    "10.96.0.10",
    "10.244.0.0/16",
    "300.1.1.1",
    "TCP",
    "SCTP",
    "ClusterIP",
    "NodePort",
    "LoadBalancer",
    "ExternalName",
    "None",
    "kind: Service\n",
    "kind: EndpointSlice\n",
    "kind: Node\n",
    "kind: ServiceCIDR\n",
    "kind: List\nitems:\n",
    "ports:\n- port: 80\n",
    "sessionAffinity: ClientIP\n",
];

const JSON_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"cniVersion\"",
    "\"1.0.0\"",
    "\"0.4.0\"",
    "\"9.9.9\"",
    "null",
    "\\u0000",
    "\\ud800",
    "1e999",
    "-1",
    "4294967296",
    "\"ipam\"",
    "\"subnet\"",
    "\"10.244.1.0/24\"",
    "\"10.244.1.0/33\"",
    "\"../..\"",
    "\"prevResult\"",
    "\"mtu\"",
    "\"name\"",
];

/// A seeded mutant of `corpus[i]`: bit flips, cuts, repeats, tokens
/// inserted, another input spliced in.
fn mutant(rng: &mut fastrand::Rng, corpus: &[Vec<u8>], tokens: &[&str]) -> Vec<u8> {
    let mut b = corpus[rng.usize(..corpus.len())].clone();
    for _ in 0..rng.usize(1..=4) {
        let len = b.len();
        match rng.u32(0..7) {
            0 => {
                if len > 0 {
                    let at = rng.usize(..len);
                    b[at] ^= 1 << rng.u32(0..8);
                }
            }
            1 => {
                let from = rng.usize(0..=len);
                let to = rng.usize(from..=len.min(from + 64));
                b.drain(from..to);
            }
            2 => {
                let from = rng.usize(0..=len);
                let to = rng.usize(from..=len.min(from + 200));
                let piece = b[from..to].to_vec();
                let at = rng.usize(0..=len);
                for _ in 0..rng.usize(1..=8) {
                    b.splice(at..at, piece.iter().copied());
                }
            }
            3 | 4 => {
                let at = rng.usize(0..=len);
                let t = tokens[rng.usize(..tokens.len())];
                b.splice(at..at, t.bytes());
            }
            5 => {
                let other = &corpus[rng.usize(..corpus.len())];
                let cut = rng.usize(0..=len);
                let from = rng.usize(0..=other.len());
                b.truncate(cut);
                b.extend_from_slice(&other[from..]);
            }
            _ => {
                let at = rng.usize(0..=len);
                b.truncate(at);
            }
        }
    }
    b
}

fn run_bounded(what: &str, target: fn(&[u8]), input: &[u8]) {
    let (took, peak) = measure(|| target(input));
    let shown = String::from_utf8_lossy(&input[..input.len().min(300)]).into_owned();
    assert!(
        took < TIME_BOUND,
        "{what}: {took:?} for this input:\n{shown}"
    );
    assert!(
        peak < MEMORY_BOUND,
        "{what}: {peak} bytes of heap for this input:\n{shown}"
    );
}

fn files(dir: &Path, ext: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == ext) {
            out.push(std::fs::read(&path).unwrap());
        }
    }
    out
}

fn seed() -> u64 {
    std::env::var("FERRY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f022)
}

#[test]
fn manifest_target_survives_mutated_manifests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut corpus = files(&root.join("testdata"), "yaml");
    corpus.extend(files(&root.join("../examples"), "yaml"));
    assert!(corpus.len() >= 5, "the seed corpus is there");
    for input in &corpus {
        run_bounded("manifest (seed)", fuzzing::manifest, input);
    }
    let mut rng = fastrand::Rng::with_seed(seed());
    for _ in 0..MUTANTS {
        let input = mutant(&mut rng, &corpus, YAML_TOKENS);
        run_bounded("manifest", fuzzing::manifest, &input);
    }
}

#[test]
fn cni_target_survives_mutated_configurations() {
    let corpus: Vec<Vec<u8>> = [
        r#"{"cniVersion":"1.0.0","name":"ferry","type":"ferry-cni","pinDir":"/sys/fs/bpf/ferry","mtu":1450,"ipam":{"subnet":"10.244.1.0/24","dataDir":"/var/lib/cni/networks"}}"#,
        r#"{"cniVersion":"0.4.0","name":"ferry","type":"ferry-cni","ipam":{"subnet":"10.244.1.0/24"},"prevResult":{"cniVersion":"0.4.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"10.244.1.5/24"}]}}"#,
        r#"{"cniVersion":"1.0.0","name":"../x","type":"ferry-cni","ipam":{"subnet":"10.244.1.0/33"}}"#,
        r#"{"cniVersion":"1.0.0"}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    for input in &corpus {
        run_bounded("cni (seed)", fuzzing::cni_conf, input);
    }
    let mut rng = fastrand::Rng::with_seed(seed());
    for _ in 0..MUTANTS {
        let input = mutant(&mut rng, &corpus, JSON_TOKENS);
        run_bounded("cni", fuzzing::cni_conf, &input);
    }
}

/// `levels` anchors, each a sequence of `width` aliases of the one before:
/// width^levels scalars once expanded.
fn alias_bomb(levels: usize, width: usize) -> String {
    let mut s = String::from("a0: &a0 [\"lol\"]\n");
    for i in 1..=levels {
        let items = vec![format!("*a{}", i - 1); width].join(", ");
        s.push_str(&format!("a{i}: &a{i} [{items}]\n"));
    }
    s
}

/// Each within seconds and a heap bounded by its own size plus a fixed
/// amount, however much its aliases would expand to (see `yaml_options`).
#[test]
fn hostile_yaml_stays_bounded() {
    let big = "x".repeat(4 << 20);
    let cases: Vec<(&str, String)> = vec![
        ("deep flow nesting", "[".repeat(100_000)),
        ("deep flow mappings", "{a: ".repeat(50_000)),
        (
            "deep block nesting",
            (0..5_000)
                .map(|i| format!("{}a:\n", " ".repeat(i)))
                .collect(),
        ),
        ("billion laughs", alias_bomb(9, 10)),
        ("alias bomb, wide", alias_bomb(3, 1_000)),
        (
            "a 4 MiB anchor replayed 512 times",
            format!("a: &big \"{big}\"\nb: [{}]\n", vec!["*big"; 512].join(", ")),
        ),
        (
            "a 4 MiB anchor replayed in a Service's labels",
            format!(
                "kind: Service\nmetadata: {{name: x, labels: {{a: &big \"{big}\"}}, annotations: {{{}}}}}\n",
                (0..512)
                    .map(|i| format!("k{i}: *big"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        ("merge key chain", {
            let mut s = String::from("m0: &m0 {a: 1, b: 2}\n");
            for i in 1..200 {
                s.push_str(&format!(
                    "m{i}: &m{i} {{<<: [*m{}, *m{}], k{i}: {i}}}\n",
                    i - 1,
                    i - 1
                ));
            }
            s
        }),
        ("many documents", "---\n".repeat(200_000)),
        ("nested Lists", {
            let mut s = String::from("kind: List\nitems:\n");
            for i in 1..30 {
                let indent = "  ".repeat(i - 1);
                s.push_str(&format!("{indent}- kind: List\n{indent}  items:\n"));
            }
            s
        }),
        ("a long key", format!("{}: 1\n", "k".repeat(1 << 20))),
    ];
    for (what, text) in cases {
        let mut parsed = String::new();
        let (took, peak) = measure(|| {
            parsed = match parse_manifest(&text) {
                Ok((objects, problems)) => format!(
                    "{} Services, {} problems",
                    objects.services.len(),
                    problems.len()
                ),
                Err(e) => e.to_string().lines().next().unwrap_or_default().into(),
            }
        });
        eprintln!(
            "{what}: {} bytes in, {took:?}, peak heap {} KiB: {parsed}",
            text.len(),
            peak >> 10
        );
        assert!(took < Duration::from_secs(20), "{what}: took {took:?}");
        // The input itself, a copy of it, and a bounded amount beyond.
        let bound = 4 * text.len() + (96 << 20);
        assert!(
            peak < bound,
            "{what}: peak heap {peak} bytes (bound {bound})"
        );
    }
}
