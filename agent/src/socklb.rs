//! Socket-level load balancing: where ferry's cgroup v2 socket programs
//! attach (`--cgroup-root`), for whom they translate (`--socket-lb`), and
//! how the agent tells them which network namespace is the node's own.
//!
//! The four links (connect4, sendmsg4, recvmsg4, getpeername4) are pinned
//! under `links-cgroup/` in the pin directory, like the tc links: they
//! outlive the agent, and a restarted agent points them at the programs it
//! loaded (BPF_LINK_UPDATE: no connect() goes untranslated in between).
use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, MapData},
    programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink},
};
use aya_obj::programs::CgroupSockAddrAttachType;
use ferry_common::{
    MAP_SOCK_CONFIG, PIN_CGROUP_LINKS_DIR, PIN_PROG_SOCK_CONNECT4, PIN_PROG_SOCK_GETPEERNAME4,
    PIN_PROG_SOCK_RECVMSG4, PIN_PROG_SOCK_SENDMSG4, SOCK_FLAG_PODS, SockConfig,
};

use crate::maps::{OpenError, open_pinned};

/// `--socket-lb`: whose sockets are translated at connect().
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SocketLb {
    /// The node's own processes and pods.
    On,
    /// No socket programs attached: tc translates pods' packets, and the
    /// node's own traffic to Services is not translated.
    Off,
    /// Only the node's own network namespace (host-network pods, the
    /// kubelet, the agent); pods keep the tc path.
    HostOnly,
}

impl SocketLb {
    pub fn name(self) -> &'static str {
        match self {
            SocketLb::On => "on",
            SocketLb::Off => "off",
            SocketLb::HostOnly => "host-only",
        }
    }
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// Where the agent mounts a cgroup2 hierarchy of its own when the host has
/// none mounted (Cilium does the same at /run/cilium/cgroupv2).
pub const OWN_CGROUP2_MOUNT: &str = "/run/ferry/cgroupv2";

#[derive(Debug, thiserror::Error)]
pub enum SockLbError {
    #[error(
        "--cgroup-root {path} is not a cgroup v2 directory; give the cgroup2 mount (see `mount -t cgroup2`) or a cgroup below it"
    )]
    NotCgroup2 { path: String },
    #[error(
        "no cgroup v2 hierarchy is mounted and mounting one at {path} failed: {source}; mount one (`mount -t cgroup2 none PATH`) and pass --cgroup-root PATH, or run with --socket-lb off"
    )]
    Mount { path: String, source: io::Error },
    #[error(
        "cannot read the node's network namespace cookie (SO_NETNS_COOKIE): {0}; socket LB needs Linux >= 5.14, or run with --socket-lb off"
    )]
    NetnsCookie(io::Error),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("writing {MAP_SOCK_CONFIG}: {0}; the pinned map may be damaged: remove it and restart")]
    Config(aya::maps::MapError),
    #[error("cannot open the cgroup {path}: {source}")]
    Cgroup { path: String, source: io::Error },
    #[error(
        "cannot open the pinned program {path}: {detail}; is ferry-agent running with this --pin-dir?"
    )]
    Program { path: String, detail: String },
    #[error(
        "attaching {program} to the cgroup {cgroup} failed: {detail}; the agent needs CAP_BPF and CAP_NET_ADMIN, and CAP_SYS_ADMIN where the kernel is older than 5.7"
    )]
    Attach {
        program: &'static str,
        cgroup: String,
        detail: String,
    },
    #[error("removing the pinned link {path}: {source}; remove it by hand to detach")]
    Unpin { path: String, source: io::Error },
    #[error(transparent)]
    Link(#[from] crate::tc::AttachError),
}

fn is_cgroup2(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) }) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC
}

/// The cgroup the programs attach to: `given` if it is cgroup v2 (or its
/// `unified/` is: a hybrid hierarchy mounted whole); else the host's
/// cgroup2 mount (/sys/fs/cgroup/unified on a hybrid hierarchy,
/// /sys/fs/cgroup on a unified one); else one the agent mounts itself.
pub fn resolve_cgroup_root(given: Option<&Path>) -> Result<PathBuf, SockLbError> {
    if let Some(path) = given {
        let unified = path.join("unified");
        if !is_cgroup2(path) && is_cgroup2(&unified) {
            return Ok(unified);
        }
        if !is_cgroup2(path) {
            return Err(SockLbError::NotCgroup2 {
                path: path.display().to_string(),
            });
        }
        return Ok(path.to_path_buf());
    }
    for candidate in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        if is_cgroup2(Path::new(candidate)) {
            return Ok(candidate.into());
        }
    }
    let own = Path::new(OWN_CGROUP2_MOUNT);
    if is_cgroup2(own) {
        return Ok(own.into());
    }
    let mount_err = |source| SockLbError::Mount {
        path: OWN_CGROUP2_MOUNT.into(),
        source,
    };
    std::fs::create_dir_all(own).map_err(mount_err)?;
    let target = CString::new(OWN_CGROUP2_MOUNT).expect("no NUL");
    // SAFETY: NUL-terminated strings that outlive the call; no data.
    let rc = unsafe {
        libc::mount(
            c"none".as_ptr(),
            target.as_ptr(),
            c"cgroup2".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(mount_err(io::Error::last_os_error()));
    }
    Ok(own.into())
}

/// The cookie of the network namespace this process runs in, as
/// `bpf_get_netns_cookie` reports it for its sockets.
pub fn netns_cookie() -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = std::net::UdpSocket::bind(("127.0.0.1", 0))?;
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket and an out-buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// What the socket programs are told: nothing is translated with `off`
/// (cookie 0), pods only with `on`.
pub fn sock_config(mode: SocketLb, host_netns_cookie: u64) -> SockConfig {
    match mode {
        SocketLb::Off => SockConfig::default(),
        SocketLb::HostOnly => SockConfig {
            host_netns_cookie,
            ..SockConfig::default()
        },
        SocketLb::On => SockConfig {
            host_netns_cookie,
            flags: SOCK_FLAG_PODS,
            pad: 0,
        },
    }
}

/// The socket programs' pins and their hooks.
const HOOKS: [(&str, CgroupSockAddrAttachType); 4] = [
    (PIN_PROG_SOCK_CONNECT4, CgroupSockAddrAttachType::Connect4),
    (
        PIN_PROG_SOCK_SENDMSG4,
        CgroupSockAddrAttachType::UDPSendMsg4,
    ),
    (
        PIN_PROG_SOCK_RECVMSG4,
        CgroupSockAddrAttachType::UDPRecvMsg4,
    ),
    (
        PIN_PROG_SOCK_GETPEERNAME4,
        CgroupSockAddrAttachType::GetPeerName4,
    ),
];

/// Where the link of the program pinned as `program_pin` is pinned.
pub fn link_path(pin_dir: &Path, program_pin: &str) -> PathBuf {
    pin_dir.join(PIN_CGROUP_LINKS_DIR).join(program_pin)
}

/// Make the node's sockets follow `mode`: the netns cookie and flags into
/// `ferry_sock_cfg` first (so a fresh link never runs on a stale config),
/// then the links: made or pointed at this agent's programs, or, with
/// `off`, removed (the programs detach; sockets already translated keep
/// their backend).
pub fn apply(
    pin_dir: &Path,
    mode: SocketLb,
    cgroup_root: Option<&Path>,
) -> Result<(), SockLbError> {
    let cookie = match mode {
        SocketLb::Off => 0,
        _ => netns_cookie().map_err(SockLbError::NetnsCookie)?,
    };
    let mut config: Array<MapData, SockConfig> = open_pinned(pin_dir, MAP_SOCK_CONFIG)?;
    config
        .set(0, sock_config(mode, cookie), 0)
        .map_err(SockLbError::Config)?;
    if mode == SocketLb::Off {
        for (pin, _) in HOOKS {
            let path = link_path(pin_dir, pin);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(SockLbError::Unpin {
                        path: path.display().to_string(),
                        source: e,
                    });
                }
                _ => {}
            }
        }
        return Ok(());
    }
    let root = resolve_cgroup_root(cgroup_root)?;
    for (pin, attach_type) in HOOKS {
        let path = link_path(pin_dir, pin);
        if path.exists() {
            match crate::tc::update_pinned_link(pin_dir, pin, &path) {
                Ok(()) => continue,
                Err(e) => tracing::info!(error = %e, "re-attaching the socket program"),
            }
            let _ = std::fs::remove_file(&path);
        }
        attach(pin_dir, pin, attach_type, &root, &path)?;
    }
    tracing::info!(mode = mode.name(), cgroup = %root.display(), "socket LB attached");
    Ok(())
}

fn attach(
    pin_dir: &Path,
    pin: &'static str,
    attach_type: CgroupSockAddrAttachType,
    root: &Path,
    link_path: &Path,
) -> Result<(), SockLbError> {
    let program_path = pin_dir.join(pin);
    let mut prog =
        CgroupSockAddr::from_pin(&program_path, attach_type).map_err(|e| SockLbError::Program {
            path: program_path.display().to_string(),
            detail: e.to_string(),
        })?;
    let cgroup = std::fs::File::open(root).map_err(|source| SockLbError::Cgroup {
        path: root.display().to_string(),
        source,
    })?;
    let attach_err = |detail: String| SockLbError::Attach {
        program: pin,
        cgroup: root.display().to_string(),
        detail,
    };
    // A BPF link (Linux >= 5.7) always runs alongside other programs on
    // the cgroup, and the kernel refuses any attach flag for it, so the
    // mode must be the one without flags. Other tools' socket programs
    // keep running: a socket another one already redirected matches no
    // frontend here.
    let id = prog
        .attach(&cgroup, CgroupAttachMode::Single)
        .map_err(|e| attach_err(chain(&e)))?;
    let link = prog.take_link(id).map_err(|e| attach_err(e.to_string()))?;
    let link: FdLink = link
        .try_into()
        .map_err(|e: aya::programs::links::LinkError| attach_err(e.to_string()))?;
    crate::tc::pin_link(link, link_path)?;
    Ok(())
}

/// An error with its causes, for errors whose Display leaves out the
/// system call's errno.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s += &format!(": {cause}");
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_on_translates_pods_and_off_translates_nothing() {
        assert_eq!(sock_config(SocketLb::Off, 7).host_netns_cookie, 0);
        let host = sock_config(SocketLb::HostOnly, 7);
        assert_eq!((host.host_netns_cookie, host.flags), (7, 0));
        let on = sock_config(SocketLb::On, 7);
        assert_eq!((on.host_netns_cookie, on.flags), (7, SOCK_FLAG_PODS));
    }

    #[test]
    fn a_path_that_is_no_cgroup2_is_refused_with_what_to_give() {
        let e = resolve_cgroup_root(Some(Path::new("/"))).unwrap_err();
        assert!(e.to_string().contains("not a cgroup v2 directory"), "{e}");
    }
}
