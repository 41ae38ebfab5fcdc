//! cgroup v2 directories the harness creates for a test: a node's own
//! processes and each pod's go into cgroups below one per node, which is
//! where that node's agent attaches its socket programs. Never the
//! machine's root cgroup; everything is removed on drop, after its
//! processes are killed.
use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt, process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

fn is_cgroup2(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) }) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC
}

/// The machine's cgroup2 mount: /sys/fs/cgroup/unified on a hybrid
/// hierarchy, /sys/fs/cgroup on a unified one.
pub fn cgroup2_mount() -> Result<PathBuf> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| is_cgroup2(p))
        .context("no cgroup v2 hierarchy at /sys/fs/cgroup/unified or /sys/fs/cgroup; mount one (`mount -t cgroup2 none /sys/fs/cgroup/unified`)")
}

/// A cgroup the harness made; removed with its descendants on drop, after
/// killing every process in them.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    /// `NAME` directly below the cgroup2 mount.
    pub fn top(name: &str) -> Result<Self> {
        Self::create(cgroup2_mount()?.join(name))
    }

    pub fn create(path: PathBuf) -> Result<Self> {
        std::fs::create_dir(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Self { path })
    }

    /// A child cgroup, removed with it (and on its own drop).
    pub fn child(&self, name: &str) -> Result<Self> {
        Self::create(self.path.join(name))
    }

    /// Make `cmd`'s process join this cgroup before it execs, so it and
    /// everything it starts belong to it from the first instruction
    /// (cgroup membership is per process, not per thread of the harness).
    pub fn enter_on_spawn(&self, cmd: &mut Command) {
        let procs = CString::new(self.path.join("cgroup.procs").as_os_str().as_bytes())
            .expect("a cgroup path without NUL");
        // SAFETY: only open/write/close between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// The processes in this cgroup (not its children).
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Kill every process in this cgroup and its descendants, and remove
    /// them all, deepest first.
    pub fn remove(&self) -> Result<()> {
        if !self.path.exists() {
            return Ok(());
        }
        // cgroup.kill (Linux 5.14) reaches every descendant at once.
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        remove_tree(&self.path)
    }
}

fn remove_tree(path: &Path) -> Result<()> {
    for entry in std::fs::read_dir(path)?.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&entry.path())?;
        }
    }
    // The killed processes leave the cgroup once they are reaped.
    let start = Instant::now();
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if start.elapsed() > Duration::from_secs(5) => {
                bail!("removing cgroup {}: {e}", path.display())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("harness: {e:#}");
        }
    }
}
