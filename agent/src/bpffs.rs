//! The BPF filesystem that pinned maps live on.
use std::{ffi::CString, io, os::unix::ffi::OsStrExt, path::Path};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error(
        "{path} is not on a BPF filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf` (or run `cargo xtask setup`). Under `ip netns exec`, which remounts /sys without it, use `nsenter --net=/run/netns/NAME` instead"
    )]
    NotBpffs { path: String },
    #[error(
        "{path} is owned by uid {owner} or writable by others (mode {mode:o}): whoever can write it can rename or remove ferry's maps and links, which detaches ferry. Make it root's and not group/other-writable (`chown root: {path} && chmod go-w {path}`), or remove it"
    )]
    NotPrivate { path: String, owner: u32, mode: u32 },
    #[error("cannot inspect {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// Is `dir` (or, when it does not exist yet, its nearest existing ancestor)
/// on a BPF filesystem?
pub fn ensure_on_bpffs(dir: &Path) -> Result<(), BpffsError> {
    let mut probe = dir;
    while !probe.exists() {
        match probe.parent() {
            Some(p) => probe = p,
            None => break,
        }
    }
    let c = CString::new(probe.as_os_str().as_bytes()).map_err(|e| BpffsError::Io {
        path: probe.display().to_string(),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(BpffsError::Io {
            path: probe.display().to_string(),
            source: io::Error::last_os_error(),
        });
    }
    if st.f_type as i64 != BPF_FS_MAGIC {
        return Err(BpffsError::NotBpffs {
            path: dir.display().to_string(),
        });
    }
    Ok(())
}

/// Is `dir` ferry's alone: owned by this (root) process's user and not
/// writable by group or others? bpffs is often mounted world-writable (mode
/// 1777), so a pin directory someone else made first would hand them
/// ferry's maps and links.
pub fn ensure_private(dir: &Path) -> Result<(), BpffsError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).map_err(|source| BpffsError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(BpffsError::NotPrivate {
            path: dir.display().to_string(),
            owner: meta.uid(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

/// The bpf(2) system call for the few commands aya 0.14 keeps to itself.
///
/// # Safety
/// `attr` must be a valid `union bpf_attr` prefix for `cmd` (layouts from
/// include/uapi/linux/bpf.h), and every pointer in it must be valid for
/// the call.
pub unsafe fn sys_bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: the caller vouches for attr; its size is passed along.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, size_of::<T>()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// `sys_bpf` for the commands that write results back into `attr` (the
/// batch commands' `count`).
///
/// # Safety
/// As `sys_bpf`.
pub unsafe fn sys_bpf_mut<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the caller vouches for attr; its size is passed along, and
    // the kernel may write into it, which the exclusive borrow allows.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}
