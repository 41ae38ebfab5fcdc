use std::path::PathBuf;

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
    /// Load the kernel programs and pin their maps (adopting maps already
    /// pinned there), then exit.
    Load {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
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
                What::Services => inspect::services(&pin_dir),
                What::Backends => inspect::backends(&pin_dir),
                What::Conntrack => inspect::conntrack(&pin_dir),
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
        Command::Load { pin_dir } => {
            let mut dp = Dataplane::load(&pin_dir)
                .with_context(|| format!("loading ferry with maps in {}", pin_dir.display()))?;
            dp.pin_programs()?;
            println!("maps and program pinned under {}", pin_dir.display());
            Ok(())
        }
    }
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
