use std::path::PathBuf;

/// mimalloc rather than glibc's malloc: planning 100,000 Services allocates
/// millions of small objects from several threads, and took half the time
/// (1.0 s instead of 1.7–2.1 s on a 2-CPU VM). How it hands memory back:
/// `ferry_agent::alloc`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use ferry_agent::{
    DEFAULT_PIN_DIR,
    config::{LogFormat, RunArgs, RunConfig},
    inspect,
    loader::Dataplane,
    run,
};

/// ferry's node agent and inspection CLI.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum What {
    /// Each pinned map: its type, capacity and the kernel memory it holds.
    Maps,
    Services,
    Backends,
    Conntrack,
    Endpoints,
    Counters,
    ServiceCidrs,
    Affinity,
}

// Parsed once at startup; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the agent: load (or adopt) the dataplane and keep its maps in
    /// step with the Kubernetes objects.
    Run(RunArgs),
    /// Print what the dataplane holds, from the pinned maps.
    Inspect {
        #[arg(value_enum)]
        what: What,
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// What a hook does with a packet: run it through the live pinned
    /// program, changing no map, and say which frontend it matched, which
    /// flow and backend it gets, what is rewritten and where it goes.
    Trace {
        /// The sender and its port: on a pod's veth, a pod on this node;
        /// on the uplink, a client outside.
        #[arg(long, value_name = "ADDR[:PORT]", required_unless_present = "pcap")]
        from: Option<String>,
        /// The destination.
        #[arg(long, value_name = "ADDR:PORT", required_unless_present = "pcap")]
        to: Option<String>,
        #[arg(long, value_enum, default_value = "tcp")]
        proto: TraceProtocol,
        /// TCP flags, any of S, A, F, R, P (default S: a connection's
        /// first packet).
        #[arg(long, default_value = "S")]
        flags: String,
        /// The hook: the sending pod's veth, the node's uplink (tc), or the
        /// uplink's XDP program.
        #[arg(long, value_enum, default_value = "pod")]
        on: TraceHook,
        /// With --on uplink or xdp: the uplink device (default: the one the
        /// agent attached its program to).
        #[arg(long, value_name = "IFACE")]
        dev: Option<String>,
        /// Trace every packet of this capture (pcap or pcapng, Ethernet or
        /// raw IPv4, as `tcpdump -i IFACE -w FILE` writes) instead of a
        /// described one.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["from", "to"])]
        pcap: Option<PathBuf>,
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Datapath events as they happen: drops and rejects with their reason,
    /// new flows from pods with their translation. Switched on while this
    /// runs, off when it stops.
    Monitor {
        #[arg(long = "type", value_enum, default_value = "all")]
        kind: MonitorKind,
        /// Events of this Service only: namespace/name or namespace/name:port.
        #[arg(long)]
        service: Option<String>,
        /// Events to or from this address only.
        #[arg(long)]
        pod: Option<std::net::Ipv4Addr>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<u64>,
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Debug lines from the programs: one per packet a tc hook settles
    /// (interface, length, outcome, action, frontend), printed by the
    /// running agent in its log (target ferry::datapath). Off at agent
    /// start; costs a load and a branch per packet while off.
    Debug {
        #[arg(value_enum)]
        switch: DebugSwitch,
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Load the kernel programs and pin their maps (adopting maps already
    /// pinned there), then exit.
    Load {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        #[command(flatten)]
        map_sizes: ferry_agent::config::MapSizeArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum DebugSwitch {
    On,
    Off,
    Status,
}

#[derive(Clone, Copy, ValueEnum)]
enum MonitorKind {
    Drop,
    Flow,
    All,
}

#[derive(Clone, Copy, ValueEnum)]
enum TraceHook {
    Pod,
    Uplink,
    Xdp,
}

#[derive(Clone, Copy, ValueEnum)]
enum TraceProtocol {
    Tcp,
    Udp,
    Icmp,
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    ferry_agent::alloc::return_freed_memory_promptly();
    match Cli::parse().command {
        Command::Run(args) => {
            let dry_run = args.dry_run;
            let cfg = RunConfig::try_from(args)?;
            init_logs(cfg.log_format);
            if dry_run {
                println!("{cfg:#?}");
                return Ok(());
            }
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(run::run(cfg))
        }
        Command::Inspect {
            what,
            pin_dir,
            json,
        } => {
            let table = match what {
                What::Maps => inspect::maps(&pin_dir),
                What::Services => inspect::services(&pin_dir),
                What::Backends => inspect::backends(&pin_dir),
                What::Conntrack => inspect::conntrack(&pin_dir, json),
                What::Endpoints => inspect::endpoints(&pin_dir),
                What::Counters => inspect::counters(&pin_dir),
                What::ServiceCidrs => inspect::service_cidrs(&pin_dir),
                What::Affinity => inspect::affinity(&pin_dir),
            }?;
            let out = if json {
                serde_json::to_string_pretty(&table.json)? + "\n"
            } else {
                table.render()
            };
            write_stdout(&out)
        }
        Command::Trace {
            from,
            to,
            proto,
            flags,
            on,
            dev,
            pcap,
            pin_dir,
            json,
        } => {
            use ferry_agent::trace::{self, On};
            let on = match on {
                TraceHook::Pod => On::Pod,
                TraceHook::Uplink => On::Uplink {
                    ifindex: trace::uplink_ifindex(&pin_dir, dev.as_deref())?,
                },
                TraceHook::Xdp => On::Xdp {
                    ifindex: trace::uplink_ifindex(&pin_dir, dev.as_deref())?,
                },
            };
            let from_capture = pcap.is_some();
            let reports = match (pcap, from, to) {
                (Some(file), _, _) => {
                    let frames = ferry_agent::pcap::frames(&file)?;
                    if frames.len() == ferry_agent::pcap::MAX_FRAMES {
                        eprintln!(
                            "tracing the first {} packets of {} only",
                            frames.len(),
                            file.display()
                        );
                    }
                    frames
                        .iter()
                        .enumerate()
                        .map(|(i, f)| {
                            trace::trace_frame(&pin_dir, f, on)
                                .with_context(|| format!("packet {} of {}", i + 1, file.display()))
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?
                }
                (None, Some(from), Some(to)) => {
                    let probe = trace_probe(&from, &to, proto, &flags)?;
                    vec![trace::trace(&pin_dir, &probe, on)?]
                }
                _ => anyhow::bail!("give --from and --to, or --pcap"),
            };
            // A capture's reports are a list, whatever its length.
            let out = match (json, reports.as_slice()) {
                (true, [one]) if !from_capture => serde_json::to_string_pretty(one)? + "\n",
                (true, all) => serde_json::to_string_pretty(all)? + "\n",
                (false, all) => all
                    .iter()
                    .map(|r| r.render())
                    .collect::<Vec<_>>()
                    .join("\n"),
            };
            write_stdout(&out)
        }
        Command::Debug { switch, pin_dir } => {
            let on = match switch {
                DebugSwitch::On => {
                    ferry_agent::debug::set(&pin_dir, true)?;
                    true
                }
                DebugSwitch::Off => {
                    ferry_agent::debug::set(&pin_dir, false)?;
                    false
                }
                DebugSwitch::Status => ferry_agent::debug::is_on(&pin_dir)?,
            };
            let out = if on {
                "debug lines on: the agent prints one line per packet in its log (target ferry::datapath); `ferry-agent debug off` stops them\n"
            } else {
                "debug lines off\n"
            };
            write_stdout(out)
        }
        Command::Monitor {
            kind,
            service,
            pod,
            count,
            seconds,
            pin_dir,
            json,
        } => {
            let filter = ferry_agent::monitor::Filter {
                kind: match kind {
                    MonitorKind::Drop => ferry_agent::monitor::Kind::Drop,
                    MonitorKind::Flow => ferry_agent::monitor::Kind::Flow,
                    MonitorKind::All => ferry_agent::monitor::Kind::All,
                },
                service,
                pod,
                count,
                duration: seconds.map(std::time::Duration::from_secs),
            };
            let mut out = |line: &str| {
                use std::io::Write;
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(line.as_bytes())?;
                stdout.flush()
            };
            ferry_agent::monitor::run(&pin_dir, &filter, json, &mut out)?;
            Ok(())
        }
        Command::Load { pin_dir, map_sizes } => {
            let mut dp = Dataplane::load_sized(&pin_dir, &map_sizes.sizes()?)
                .with_context(|| format!("loading ferry with maps in {}", pin_dir.display()))?;
            dp.pin_programs()?;
            let memory: u64 = ferry_agent::maps::memory::pinned(&pin_dir)
                .iter()
                .map(|m| m.memory_bytes)
                .sum();
            println!(
                "maps and program pinned under {} ({:.1} MiB of kernel memory in maps; `ferry-agent inspect maps` for each)",
                pin_dir.display(),
                memory as f64 / 1048576.0
            );
            Ok(())
        }
    }
}

/// The packet `trace` is asked about.
fn trace_probe(
    from: &str,
    to: &str,
    proto: TraceProtocol,
    flags: &str,
) -> anyhow::Result<ferry_agent::trace::Probe> {
    use ferry_common::conntrack::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
    let from = match from.parse::<std::net::SocketAddrV4>() {
        Ok(a) => a,
        // No port: an ephemeral one, as a client's.
        Err(_) => std::net::SocketAddrV4::new(
            from.parse()
                .with_context(|| format!("--from {from}: expected ADDR or ADDR:PORT"))?,
            40000,
        ),
    };
    let to = to
        .parse()
        .with_context(|| format!("--to {to}: expected ADDR:PORT"))?;
    let mut tcp_flags = 0;
    for c in flags.chars() {
        tcp_flags |= match c.to_ascii_uppercase() {
            'S' => TCP_SYN,
            'A' => TCP_ACK,
            'F' => TCP_FIN,
            'R' => TCP_RST,
            'P' => 0x08,
            _ => anyhow::bail!("--flags {flags}: use the letters S, A, F, R, P"),
        };
    }
    Ok(ferry_agent::trace::Probe {
        from,
        to,
        protocol: match proto {
            TraceProtocol::Tcp => ferry_common::PROTO_TCP,
            TraceProtocol::Udp => ferry_common::PROTO_UDP,
            TraceProtocol::Icmp => ferry_common::PROTO_ICMP,
        },
        tcp_flags,
    })
}

/// Print `out`; a reader that went away (`inspect services | head -2`) is
/// not an error: the output was wanted no further.
fn write_stdout(out: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => Ok(written?),
    }
}
