//! Attaching ferry's pinned tc programs to interfaces with tcx links that
//! are themselves pinned, so an attachment outlives the process that made
//! it (the CNI plugin exits at once; the agent may restart).
use std::path::{Path, PathBuf};

use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, links::FdLink, tc::TcAttachOptions};
use ferry_common::PIN_LINKS_DIR;

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(
        "cannot open the pinned program {path}: {detail}; is ferry-agent running with this --pin-dir?"
    )]
    Program { path: String, detail: String },
    #[error("attaching ferry's program to {ifname} failed: {detail}")]
    Attach { ifname: String, detail: String },
    #[error("pinning the tc link at {path} failed: {detail}")]
    PinLink { path: String, detail: String },
    #[error("cannot point the tc link {path} at the new program: {detail}")]
    Update { path: String, detail: String },
}

/// Where the tcx link of `ifname` is pinned.
pub fn link_pin_path(pin_dir: &Path, ifname: &str) -> PathBuf {
    pin_dir.join(PIN_LINKS_DIR).join(ifname)
}

/// Attach the program pinned as `program_pin` to `ifname`'s tc ingress and
/// pin the link at `link_pin_path(pin_dir, ifname)`.
pub fn attach_pinned(pin_dir: &Path, program_pin: &str, ifname: &str) -> Result<(), AttachError> {
    attach_pinned_at(
        pin_dir,
        program_pin,
        ifname,
        &link_pin_path(pin_dir, ifname),
    )
}

/// How a link attaches its program to an interface.
#[derive(Clone, Copy, Debug)]
pub enum Hook {
    /// tc ingress (tcx).
    TcIngress,
    /// XDP, in the given mode.
    Xdp(aya::programs::XdpMode),
}

/// Make `ifname` run `program_pin` through the link pinned at `link_path`:
/// a link already pinned there is pointed at the program in place (a
/// restarted or upgraded agent; no packet goes unprocessed in between); one
/// that cannot be (its interface was deleted) is replaced by a new link.
pub fn ensure_attached(
    pin_dir: &Path,
    program_pin: &str,
    ifname: &str,
    link_path: &Path,
    hook: Hook,
) -> Result<(), AttachError> {
    if link_path.exists() {
        match update_pinned_link(pin_dir, program_pin, link_path) {
            Ok(()) => return Ok(()),
            Err(e) => tracing::info!(error = %e, "re-attaching"),
        }
        let _ = std::fs::remove_file(link_path);
    }
    match hook {
        Hook::TcIngress => attach_pinned_at(pin_dir, program_pin, ifname, link_path),
        Hook::Xdp(mode) => attach_xdp_at(pin_dir, program_pin, ifname, link_path, mode),
    }
}

/// Point the tcx link pinned at `link_path` at the program pinned as
/// `program_pin` (BPF_LINK_UPDATE: atomic).
pub fn update_pinned_link(
    pin_dir: &Path,
    program_pin: &str,
    link_path: &Path,
) -> Result<(), AttachError> {
    let err = |detail: String| AttachError::Update {
        path: link_path.display().to_string(),
        detail,
    };
    let link = bpf_obj_get(link_path).map_err(|e| err(e.to_string()))?;
    let prog = bpf_obj_get(&pin_dir.join(program_pin)).map_err(|e| err(e.to_string()))?;
    bpf_link_update(&link, &prog).map_err(|e| err(e.to_string()))
}

// aya 0.14 keeps these two commands to itself; they are small enough to
// issue directly. Layouts from include/uapi/linux/bpf.h (union bpf_attr).
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

fn bpf_obj_get(path: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let attr = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: attr is a valid bpf_attr prefix for BPF_OBJ_GET; the path
    // outlives the call.
    let fd = unsafe { crate::bpffs::sys_bpf(BPF_OBJ_GET, &attr) }?;
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

fn bpf_link_update(
    link: &std::os::fd::OwnedFd,
    prog: &std::os::fd::OwnedFd,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    // SAFETY: attr is a valid bpf_attr prefix for BPF_LINK_UPDATE.
    unsafe { crate::bpffs::sys_bpf(BPF_LINK_UPDATE, &attr) }.map(|_| ())
}

/// Open the program pinned as `program_pin` with `open`.
fn pinned_program<P, E: std::fmt::Display>(
    pin_dir: &Path,
    program_pin: &str,
    open: impl FnOnce(&Path) -> Result<P, E>,
) -> Result<P, AttachError> {
    let path = pin_dir.join(program_pin);
    open(&path).map_err(|e| AttachError::Program {
        path: path.display().to_string(),
        detail: e.to_string(),
    })
}

/// Turn an attachment's link into an owned link pinned at `path`.
fn pin_attached<L, E1, E2>(
    ifname: &str,
    link: Result<L, E1>,
    path: &Path,
) -> Result<(), AttachError>
where
    L: TryInto<FdLink, Error = E2>,
    E1: std::fmt::Display,
    E2: std::fmt::Display,
{
    let attach_err = |detail: String| AttachError::Attach {
        ifname: ifname.to_string(),
        detail,
    };
    let link = link.map_err(|e| attach_err(e.to_string()))?;
    let fd_link: FdLink = link.try_into().map_err(|e| attach_err(e.to_string()))?;
    pin_link(fd_link, path)
}

fn attach_pinned_at(
    pin_dir: &Path,
    program_pin: &str,
    ifname: &str,
    path: &Path,
) -> Result<(), AttachError> {
    let mut prog = pinned_program(pin_dir, program_pin, |p| SchedClassifier::from_pin(p))?;
    let link = prog
        .attach_with_options(
            ifname,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .and_then(|id| prog.take_link(id));
    pin_attached(ifname, link, path)
}
/// Pin `link` at `path`, replacing whatever is pinned there.
pub(crate) fn pin_link(link: FdLink, path: &Path) -> Result<(), AttachError> {
    let pin_err = |detail: String| AttachError::PinLink {
        path: path.display().to_string(),
        detail,
    };
    std::fs::create_dir_all(path.parent().expect("has parent"))
        .map_err(|e| pin_err(e.to_string()))?;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(pin_err(e.to_string())),
        _ => {}
    }
    link.pin(path).map_err(|e| pin_err(e.to_string()))?;
    Ok(())
}

/// Attach the XDP program pinned as `program_pin` to `ifname` in `mode` and
/// pin the link at `link_path`.
fn attach_xdp_at(
    pin_dir: &Path,
    program_pin: &str,
    ifname: &str,
    link_path: &Path,
    mode: aya::programs::XdpMode,
) -> Result<(), AttachError> {
    use aya::programs::Xdp;
    use aya_obj::programs::XdpAttachType;
    let mut prog = pinned_program(pin_dir, program_pin, |p| {
        Xdp::from_pin(p, XdpAttachType::Interface)
    })?;
    let link = prog.attach(ifname, mode).and_then(|id| prog.take_link(id));
    pin_attached(ifname, link, link_path)
}
