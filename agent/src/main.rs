use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferry_agent::{DEFAULT_PIN_DIR, loader::Dataplane};

/// ferry's node agent.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the kernel programs and pin their maps (adopting maps already
    /// pinned there), then exit.
    Load {
        /// Directory on a BPF filesystem for ferry's pinned maps.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Load { pin_dir } => {
            Dataplane::load(&pin_dir)
                .with_context(|| format!("loading ferry with maps in {}", pin_dir.display()))?;
            println!("maps pinned under {}", pin_dir.display());
        }
    }
    Ok(())
}
