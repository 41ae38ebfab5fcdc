//! Host-local IPAM over the node's pod CIDR, persisted on disk like the
//! reference host-local plugin: one file per allocated address holding the
//! owner (container id and interface), a cursor for round-robin reuse, and an
//! flock around every change, so concurrent ADDs never hand out an address
//! twice and a crashed runtime's allocations survive a reboot of the agent.
use std::{
    fs::{self, File, OpenOptions},
    io,
    net::Ipv4Addr,
    os::unix::io::AsRawFd,
    path::{Path, PathBuf},
};

use crate::net::Ipv4Net;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error(
        "no free address left in {subnet} ({reserved} reserved); delete unused pods or give the node a larger podCIDR"
    )]
    Exhausted { subnet: Ipv4Net, reserved: usize },
    #[error("pod CIDR {subnet} has no room for pods (need at least a /30)")]
    TooSmall { subnet: Ipv4Net },
    #[error("IPAM store {path}: {source}; check that the directory is writable")]
    Io { path: PathBuf, source: io::Error },
}

/// The owner of an address entry that is no record ferry wrote.
const FOREIGN: &str = "\0foreign";

pub struct Ipam {
    dir: PathBuf,
    subnet: Ipv4Net,
}

/// Held while the store is being changed.
struct Lock(File);

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: flock on a file descriptor we own.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl Ipam {
    /// The store for `subnet` under `data_dir/network`.
    pub fn new(data_dir: &Path, network: &str, subnet: Ipv4Net) -> Self {
        Self {
            dir: data_dir.join(network),
            subnet,
        }
    }

    fn io<T>(&self, path: &Path, r: io::Result<T>) -> Result<T, IpamError> {
        r.map_err(|source| IpamError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    fn lock(&self) -> Result<Lock, IpamError> {
        self.io(&self.dir, fs::create_dir_all(&self.dir))?;
        let path = self.dir.join("lock");
        let f = self.io(
            &path,
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path),
        )?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(IpamError::Io {
                path,
                source: io::Error::last_os_error(),
            });
        }
        Ok(Lock(f))
    }

    /// The owner record. Container ids and interface names cannot hold a
    /// newline (the plugin checks both), so the record is unambiguous.
    fn owner(container_id: &str, ifname: &str) -> String {
        format!("{container_id}\n{ifname}\n")
    }

    /// Addresses given to pods: the subnet without its network address, the
    /// first host address (kept for the node) and the broadcast address.
    fn range(&self) -> Result<(u32, u32), IpamError> {
        let first = u32::from(self.subnet.network()) + 2;
        let last = u32::from(self.subnet.broadcast()).saturating_sub(1);
        if self.subnet.prefix > 30 || first > last {
            return Err(IpamError::TooSmall {
                subnet: self.subnet,
            });
        }
        Ok((first, last))
    }

    /// Every address held, with its owner record. An entry that is no
    /// readable file (a directory named like an address, bytes that are not
    /// UTF-8) is held by nobody ferry knows: it keeps its address out of
    /// use but blocks no other call. An empty file is a crash between
    /// creating and writing it (before records were written whole): its
    /// owner is empty and `allocate` takes the address back.
    fn allocated(&self) -> Result<Vec<(Ipv4Addr, String)>, IpamError> {
        let mut out = Vec::new();
        for entry in self.io(&self.dir, fs::read_dir(&self.dir))? {
            let entry = self.io(&self.dir, entry)?;
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            let owner = match fs::read(entry.path()) {
                Ok(bytes) => String::from_utf8(bytes).unwrap_or_else(|_| FOREIGN.to_string()),
                Err(_) => FOREIGN.to_string(),
            };
            out.push((ip, owner));
        }
        Ok(out)
    }

    /// Write `owner` as the record of `ip`, whole or not at all: the record
    /// is written to a file of its own, then linked under the address's
    /// name, which fails if the address is taken.
    fn claim(&self, ip: Ipv4Addr, owner: &str) -> Result<bool, IpamError> {
        let path = self.dir.join(ip.to_string());
        let tmp = self.dir.join(format!(".claim-{}", std::process::id()));
        self.io(&tmp, fs::write(&tmp, owner))?;
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(source) => Err(IpamError::Io { path, source }),
        }
    }

    /// The address of `container_id`/`ifname`, allocating one if it has none.
    pub fn allocate(&self, container_id: &str, ifname: &str) -> Result<Ipv4Addr, IpamError> {
        let _lock = self.lock()?;
        let owner = Self::owner(container_id, ifname);
        let allocated = self.allocated()?;
        if let Some((ip, _)) = allocated.iter().find(|(_, o)| *o == owner) {
            return Ok(*ip);
        }
        let (first, last) = self.range()?;
        let cursor_path = self.dir.join("last_reserved_ip");
        let cursor = fs::read_to_string(&cursor_path)
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok())
            .map(u32::from)
            .filter(|c| (first..=last).contains(c))
            .unwrap_or(last);
        let size = last - first + 1;
        // Empty records left by a crash (under the lock, no writer is mid-way).
        for (ip, _) in allocated.iter().filter(|(_, o)| o.is_empty()) {
            let path = self.dir.join(ip.to_string());
            if fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == 0) {
                self.io(&path, fs::remove_file(&path))?;
            }
        }
        for step in 1..=size {
            let candidate = first + (cursor - first + step) % size;
            let ip = Ipv4Addr::from(candidate);
            if self.claim(ip, &owner)? {
                self.io(&cursor_path, fs::write(&cursor_path, ip.to_string()))?;
                return Ok(ip);
            }
        }
        Err(IpamError::Exhausted {
            subnet: self.subnet,
            reserved: allocated.len(),
        })
    }

    /// The address held by `container_id`/`ifname`, if any.
    pub fn lookup(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        if !self.dir.exists() {
            return Ok(None);
        }
        let _lock = self.lock()?;
        let owner = Self::owner(container_id, ifname);
        Ok(self
            .allocated()?
            .into_iter()
            .find(|(_, o)| *o == owner)
            .map(|(ip, _)| ip))
    }

    /// Release what `container_id`/`ifname` holds; nothing held is fine.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        if !self.dir.exists() {
            return Ok(None);
        }
        let _lock = self.lock()?;
        let owner = Self::owner(container_id, ifname);
        let mut released = None;
        for (ip, o) in self.allocated()? {
            if o == owner {
                let path = self.dir.join(ip.to_string());
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(IpamError::Io { path, source: e });
                    }
                    _ => released = Some(ip),
                }
            }
        }
        Ok(released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(prefix: &str) -> (tempdir::TempDir, Ipam) {
        let dir = tempdir::TempDir::new();
        let ipam = Ipam::new(dir.path(), "ferry", prefix.parse().unwrap());
        (dir, ipam)
    }

    mod tempdir {
        pub struct TempDir(std::path::PathBuf);
        impl TempDir {
            pub fn new() -> Self {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "ferry-ipam-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Self(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for TempDir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn allocates_distinct_addresses_and_is_idempotent() {
        let (_d, ipam) = store("10.244.1.0/24");
        let a = ipam.allocate("c1", "eth0").unwrap();
        let b = ipam.allocate("c2", "eth0").unwrap();
        assert_ne!(a, b);
        assert_eq!(a, Ipv4Addr::new(10, 244, 1, 2), "network and .1 are kept");
        assert_eq!(
            ipam.allocate("c1", "eth0").unwrap(),
            a,
            "ADD twice, same address"
        );
        assert_eq!(ipam.lookup("c2", "eth0").unwrap(), Some(b));
    }

    #[test]
    fn release_is_idempotent_and_addresses_are_not_reused_at_once() {
        let (_d, ipam) = store("10.244.1.0/24");
        let a = ipam.allocate("c1", "eth0").unwrap();
        assert_eq!(ipam.release("c1", "eth0").unwrap(), Some(a));
        assert_eq!(ipam.release("c1", "eth0").unwrap(), None);
        let b = ipam.allocate("c2", "eth0").unwrap();
        assert_ne!(a, b, "round robin: a just-freed address waits its turn");
    }

    #[test]
    fn exhaustion_is_reported_and_wraps_around() {
        let (_d, ipam) = store("10.244.1.0/29"); // .2 ..= .6: five pods
        let ips: Vec<_> = (0..5)
            .map(|i| ipam.allocate(&format!("c{i}"), "eth0").unwrap())
            .collect();
        assert_eq!(ips.last(), Some(&Ipv4Addr::new(10, 244, 1, 6)));
        let err = ipam.allocate("c5", "eth0").unwrap_err();
        assert!(err.to_string().contains("no free address"), "{err}");
        ipam.release("c2", "eth0").unwrap();
        assert_eq!(ipam.allocate("c5", "eth0").unwrap(), ips[2]);
    }

    #[test]
    fn survives_a_new_process() {
        let (d, ipam) = store("10.244.1.0/24");
        let a = ipam.allocate("c1", "eth0").unwrap();
        let again = Ipam::new(d.path(), "ferry", "10.244.1.0/24".parse().unwrap());
        assert_ne!(again.allocate("c2", "eth0").unwrap(), a);
    }

    #[test]
    fn concurrent_adds_never_share_an_address() {
        let (_d, ipam) = store("10.244.1.0/24");
        let ipam = std::sync::Arc::new(ipam);
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let ipam = ipam.clone();
                std::thread::spawn(move || {
                    (0..10)
                        .map(|i| ipam.allocate(&format!("c{t}-{i}"), "eth0").unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<_> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 80);
    }

    #[test]
    fn a_foreign_entry_blocks_no_call_and_keeps_its_address() {
        let (d, ipam) = store("10.244.1.0/29");
        let dir = d.path().join("ferry");
        std::fs::create_dir_all(dir.join("10.244.1.2")).unwrap();
        std::fs::write(dir.join("10.244.1.3"), [0xff, 0xfe, 0x00]).unwrap();
        let ip = ipam.allocate("c1", "eth0").unwrap();
        assert_eq!(
            ip,
            Ipv4Addr::new(10, 244, 1, 4),
            "neither foreign address is handed out"
        );
        assert_eq!(ipam.lookup("c1", "eth0").unwrap(), Some(ip));
        assert_eq!(ipam.release("c1", "eth0").unwrap(), Some(ip));
    }

    #[test]
    fn an_empty_record_left_by_a_crash_is_taken_back() {
        let (d, ipam) = store("10.244.1.0/30");
        // A /30 has one pod address; a crash left it with an empty record.
        let dir = d.path().join("ferry");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("10.244.1.2"), "").unwrap();
        assert_eq!(
            ipam.allocate("c1", "eth0").unwrap(),
            Ipv4Addr::new(10, 244, 1, 2)
        );
        let record = std::fs::read_to_string(dir.join("10.244.1.2")).unwrap();
        assert_eq!(record, "c1\neth0\n", "written whole");
    }
}
