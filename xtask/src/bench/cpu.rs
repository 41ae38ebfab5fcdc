//! The agent's CPU while traffic runs, in 1-second windows: issue 15 asks
//! that no window take more than 10% of a core (a burst of background
//! work lands inside some measurement and costs every path).
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Samples one process's CPU time once a second until finished.
pub struct CpuSampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<f64>>,
}

/// The process's user + system CPU time, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: the fields count from its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

impl CpuSampler {
    pub fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let handle = std::thread::spawn(move || {
            let mut windows = Vec::new();
            let (mut at, mut ticks) = (Instant::now(), cpu_ticks(pid));
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                let (now, now_ticks) = (Instant::now(), cpu_ticks(pid));
                if let (Some(a), Some(b)) = (ticks, now_ticks) {
                    let cpu = (b.saturating_sub(a)) as f64 / hz;
                    windows.push(cpu / (now - at).as_secs_f64());
                }
                (at, ticks) = (now, now_ticks);
            }
            windows
        });
        Self { stop, handle }
    }

    /// Each 1-second window's CPU, as a fraction of one core.
    pub fn finish(self) -> Vec<f64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// "max X% of a core over N 1-s windows (mean Y%)".
pub fn describe(windows: &[f64]) -> String {
    if windows.is_empty() {
        return "not sampled".into();
    }
    let max = windows.iter().copied().fold(0.0, f64::max);
    let mean = windows.iter().sum::<f64>() / windows.len() as f64;
    format!(
        "max {:.1}% of a core over {} 1-s windows (mean {:.1}%)",
        max * 100.0,
        windows.len(),
        mean * 100.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_thread_shows_in_every_window() {
        let me = std::process::id();
        let spin = Arc::new(AtomicBool::new(true));
        let flag = spin.clone();
        let busy = std::thread::spawn(move || {
            while flag.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        let sampler = CpuSampler::start(me);
        std::thread::sleep(Duration::from_millis(2500));
        let windows = sampler.finish();
        spin.store(false, Ordering::Relaxed);
        busy.join().unwrap();
        assert!(windows.len() >= 2, "{windows:?}");
        // Far from a whole core on a loaded 2-CPU machine, but far from
        // nothing too.
        assert!(
            windows.iter().all(|w| *w > 0.05),
            "a spinning thread: {windows:?}"
        );
        assert!(describe(&windows).starts_with("max "));
        assert_eq!(describe(&[]), "not sampled");
    }
}
