//! Keeping the node's own sockets off ferry's ports.
//!
//! ferry rewrites external flows to `node address:port` with ports from
//! `--snat-ports`, and answers NodePorts on their ports. A socket of the
//! node (kubelet, an image pull, a hostNetwork pod) whose ephemeral port
//! fell in either range would have its replies taken for ferry's. The
//! kernel's `net.ipv4.ip_local_reserved_ports` keeps automatic port choice
//! (connect, bind to port 0) off listed ports, while explicit binds still
//! work; Cilium reserves its NodePort range the same way.
//!
//! The agent only adds ranges: entries someone else reserved stay, and
//! ranges of an earlier configuration are not removed (the agent cannot
//! tell them from an operator's own).
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The sysctl under a `/proc/sys`-like root.
pub const SYSCTL: &str = "net/ipv4/ip_local_reserved_ports";

#[derive(Debug, Error)]
pub enum ReservedPortsError {
    #[error(
        "cannot read {path}: {source}; mount the node's /proc/sys/net where --proc-sys points (see deploy/daemonset.yaml)"
    )]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds {text:?}, which is not a port list; fix the sysctl on the node")]
    Parse { path: String, text: String },
    #[error(
        "cannot write {path}: {source}; mount the node's /proc/sys/net read-write where --proc-sys points (needs CAP_NET_ADMIN), or run `sysctl -w net.ipv4.ip_local_reserved_ports={wanted}` on the node"
    )]
    Write {
        path: String,
        wanted: String,
        source: std::io::Error,
    },
}

/// A set of ports, one bit each.
#[derive(Clone, PartialEq, Eq)]
pub struct PortSet(Box<[u64; 1024]>);

impl Default for PortSet {
    fn default() -> Self {
        Self(Box::new([0; 1024]))
    }
}

impl std::fmt::Debug for PortSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PortSet({:?})", self.to_string())
    }
}

impl PortSet {
    pub fn insert_range(&mut self, from: u16, to: u16) {
        for port in from..=to {
            self.0[usize::from(port) / 64] |= 1 << (port % 64);
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0[usize::from(port) / 64] & (1 << (port % 64)) != 0
    }

    /// Every port of `other` is in `self`.
    pub fn covers(&self, other: &PortSet) -> bool {
        self.0.iter().zip(other.0.iter()).all(|(a, b)| a & b == *b)
    }

    pub fn union(&self, other: &PortSet) -> PortSet {
        let mut out = self.clone();
        for (a, b) in out.0.iter_mut().zip(other.0.iter()) {
            *a |= b;
        }
        out
    }

    /// The sysctl's syntax: comma-separated ports and FROM-TO ranges.
    pub fn parse(text: &str) -> Option<PortSet> {
        let mut set = PortSet::default();
        for item in text
            .trim()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let (from, to) = match item.split_once('-') {
                Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
                None => {
                    let p = item.parse().ok()?;
                    (p, p)
                }
            };
            if from > to {
                return None;
            }
            set.insert_range(from, to);
        }
        Some(set)
    }
}

impl std::fmt::Display for PortSet {
    /// Ranges in the sysctl's syntax, as the kernel prints them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        let mut port: u32 = 0;
        while port <= 65535 {
            if !self.contains(port as u16) {
                port += 1;
                continue;
            }
            let from = port;
            while port < 65535 && self.contains(port as u16 + 1) {
                port += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if from == port {
                write!(f, "{from}")?;
            } else {
                write!(f, "{from}-{port}")?;
            }
            port += 1;
        }
        Ok(())
    }
}

/// What `reserve` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reserved {
    /// Every wanted port was reserved already.
    Already,
    /// The sysctl now reads this.
    Added(String),
}

/// Add `ranges` to the reserved ports of the network namespace whose
/// `/proc/sys` is at `proc_sys`.
pub fn reserve(proc_sys: &Path, ranges: &[(u16, u16)]) -> Result<Reserved, ReservedPortsError> {
    let path: PathBuf = proc_sys.join(SYSCTL);
    let display = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|source| ReservedPortsError::Read {
        path: display.clone(),
        source,
    })?;
    let current = PortSet::parse(&text).ok_or_else(|| ReservedPortsError::Parse {
        path: display.clone(),
        text: text.clone(),
    })?;
    let mut wanted = PortSet::default();
    for &(from, to) in ranges {
        wanted.insert_range(from, to);
    }
    if current.covers(&wanted) {
        return Ok(Reserved::Already);
    }
    let new = current.union(&wanted).to_string();
    std::fs::write(&path, &new).map_err(|source| ReservedPortsError::Write {
        path: display,
        wanted: new.clone(),
        source,
    })?;
    Ok(Reserved::Added(new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_kernels_syntax() {
        for (text, printed) in [
            ("", ""),
            ("\n", ""),
            ("8080\n", "8080"),
            ("30000-32767,61000-65535\n", "30000-32767,61000-65535"),
            ("5,1-3,4", "1-5"),
            ("0-65535", "0-65535"),
            ("65535", "65535"),
        ] {
            assert_eq!(
                PortSet::parse(text).unwrap().to_string(),
                printed,
                "{text:?}"
            );
        }
        for bad in ["x", "3-1", "70000", "1-", "1,,x"] {
            assert!(PortSet::parse(bad).is_none(), "{bad:?}");
        }
    }

    /// A scratch `/proc/sys` stand-in, removed when dropped.
    struct ScratchDir(PathBuf);

    impl ScratchDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "ferry-reserved-ports-{}-{name}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for ScratchDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn proc_sys_with(name: &str, content: &str) -> ScratchDir {
        let dir = ScratchDir::new(name);
        let file = dir.path().join(SYSCTL);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, content).unwrap();
        dir
    }

    #[test]
    fn adds_its_ranges_and_keeps_everyone_elses() {
        let dir = proc_sys_with("adds", "8080,61000-61010\n");
        let got = reserve(dir.path(), &[(30000, 32767), (61000, 65535)]).unwrap();
        assert_eq!(got, Reserved::Added("8080,30000-32767,61000-65535".into()));
        let text = std::fs::read_to_string(dir.path().join(SYSCTL)).unwrap();
        assert_eq!(text, "8080,30000-32767,61000-65535");
        // A second run (an agent restart) changes nothing.
        assert_eq!(
            reserve(dir.path(), &[(30000, 32767), (61000, 65535)]).unwrap(),
            Reserved::Already
        );
    }

    #[test]
    fn says_what_to_do_when_it_cannot_read() {
        let dir = ScratchDir::new("unreadable");
        let err = reserve(dir.path(), &[(1, 2)]).unwrap_err().to_string();
        assert!(err.contains("--proc-sys"), "{err}");
    }
}
