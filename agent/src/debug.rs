//! `ferry-agent debug on|off`: the programs' debug lines (aya-log), one
//! per packet a tc hook settles, printed by the running agent through its
//! own logs (target `ferry::datapath`). Off when the programs are loaded;
//! the switch is the pinned `ferry_debug` (see dataplane-ebpf's `debug`).
use std::path::Path;

use aya::{
    Ebpf,
    maps::{Array, Map, MapData},
};
use aya_log::EbpfLogger;
use ferry_common::{PIN_DEBUG, outcome};
use tokio::io::{Interest, unix::AsyncFd};

#[derive(Debug, thiserror::Error)]
pub enum DebugError {
    #[error(
        "cannot open the debug switch {path}: {detail}; is the agent running on this node, with this --pin-dir?"
    )]
    Open { path: String, detail: String },
    #[error("cannot write the debug switch {path}: {detail}")]
    Write { path: String, detail: String },
    #[error("cannot read the programs' log ring buffer: {0}; debug lines will not be printed")]
    Logger(#[from] aya_log::Error),
    #[error("cannot watch the programs' log ring buffer: {0}; debug lines will not be printed")]
    Watch(#[from] std::io::Error),
}

fn switch(pin_dir: &Path) -> Result<Array<MapData, u32>, DebugError> {
    let path = pin_dir.join(PIN_DEBUG);
    let open_failed = |detail: String| DebugError::Open {
        path: path.display().to_string(),
        detail,
    };
    let data = MapData::from_pin(&path).map_err(|e| open_failed(e.to_string()))?;
    Array::try_from(Map::Array(data)).map_err(|e| open_failed(e.to_string()))
}

/// Switch the debug lines on or off.
pub fn set(pin_dir: &Path, on: bool) -> Result<(), DebugError> {
    switch(pin_dir)?
        .set(0, u32::from(on), 0)
        .map_err(|e| DebugError::Write {
            path: pin_dir.join(PIN_DEBUG).display().to_string(),
            detail: e.to_string(),
        })
}

/// Are the debug lines on?
pub fn is_on(pin_dir: &Path) -> Result<bool, DebugError> {
    let value = switch(pin_dir)?.get(&0, 0).map_err(|e| DebugError::Open {
        path: pin_dir.join(PIN_DEBUG).display().to_string(),
        detail: e.to_string(),
    })?;
    Ok(value != 0)
}

/// Print the programs' debug lines through tracing for as long as the
/// agent runs. Takes the log ring buffer out of `ebpf`: the handle holds
/// it, so it must live as long as the programs are the agent's.
pub fn spawn_printer(ebpf: &mut Ebpf) -> Result<tokio::task::JoinHandle<()>, DebugError> {
    let logger = EbpfLogger::init_with_logger(ebpf, &TRACING_LOG)?;
    // SAFETY: the logger owns its ring buffer's fd, which stays open and
    // the same until the AsyncFd (which owns the logger) is dropped.
    let mut logger = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(|e| DebugError::Watch(e.into()))?;
    Ok(tokio::spawn(async move {
        loop {
            let mut ready = match logger.readable_mut().await {
                Ok(ready) => ready,
                Err(error) => {
                    tracing::warn!(%error, "the programs' log ring buffer failed; debug lines stop");
                    return;
                }
            };
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    }))
}

/// Hands aya-log's records to tracing.
struct TracingLog;

static TRACING_LOG: TracingLog = TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        // Someone asked for these lines (`debug on`): at INFO, so the
        // default filter shows them.
        tracing::info!(target: "ferry::datapath", "{}", readable(&record.args().to_string()));
    }

    fn flush(&self) {}
}

/// A program's line with its numbers named: `outcome=0` becomes
/// `outcome=translated`.
pub fn readable(line: &str) -> String {
    let prefix = "outcome=";
    let Some(at) = line.find(prefix) else {
        return line.to_string();
    };
    let start = at + prefix.len();
    let digits = line[start..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(line.len(), |n| start + n);
    match line[start..digits]
        .parse::<usize>()
        .ok()
        .and_then(|n| outcome::NAMES.get(n))
    {
        Some(name) => format!("{}{}{}", &line[..start], name, &line[digits..]),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::readable;

    #[test]
    fn outcomes_are_named() {
        assert_eq!(
            readable("from_pod ifindex=7 len=74 outcome=0 action=0 service_id=3"),
            "from_pod ifindex=7 len=74 outcome=translated action=0 service_id=3"
        );
        assert_eq!(
            readable("from_network ifindex=2 len=60 outcome=31 action=2 service_id=0"),
            "from_network ifindex=2 len=60 outcome=drop_spoofed_source action=2 service_id=0"
        );
        // Unknown numbers and lines without one stay as they are.
        assert_eq!(readable("x outcome=999 y"), "x outcome=999 y");
        assert_eq!(readable("no outcome here"), "no outcome here");
    }
}
