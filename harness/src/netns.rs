//! Named network namespaces and running code inside them.
use std::{
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> Result<Self> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self {
            name: name.to_string(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// A command that runs inside this namespace. nsenter, not `ip netns
    /// exec`: the latter remounts /sys, which would hide /sys/fs/bpf.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(nsenter());
        cmd.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Start a background process (a server) inside the namespace; its
    /// output is discarded but for errors.
    pub fn spawn(&self, program: &Path, args: &[&str]) -> Result<std::process::Child> {
        self.spawn_in(program, args, None)
    }

    /// `spawn`, the process placed in `cgroup` before it runs.
    pub fn spawn_in(
        &self,
        program: &Path,
        args: &[&str],
        cgroup: Option<&crate::Cgroup>,
    ) -> Result<std::process::Child> {
        let mut cmd = self.command(program);
        if let Some(cgroup) = cgroup {
            cgroup.enter_on_spawn(&mut cmd);
        }
        cmd.args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} in {}", program.display(), self.name))
    }

    /// Run a command inside the namespace and return its stdout.
    pub fn exec(&self, argv: &[&str]) -> Result<String> {
        let mut cmd = self.command(argv[0]);
        cmd.args(&argv[1..]);
        run(&mut cmd)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// nsenter as found on the harness's own PATH. Named by its full path
/// because a command given another PATH (`Cluster::without_node_tools`)
/// is looked up on that one.
pub fn nsenter() -> &'static Path {
    static NSENTER: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    NSENTER.get_or_init(|| {
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join("nsenter"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("nsenter"))
    })
}

pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run `f` on a thread that has entered the namespace at `path`. Sockets
/// created inside `f` belong to that namespace for their whole life.
pub fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let ns = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let handle = std::thread::spawn(move || {
        // SAFETY: setns on an fd we own; it affects this thread only.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(anyhow::anyhow!(
                "setns: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(f())
    });
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("thread in netns panicked"))?
}
