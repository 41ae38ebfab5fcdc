//! Where each local pod's network namespace is: ferry-cni records it, the
//! agent reads it.
//!
//! With `--socket-lb on`, pods' sockets are translated at `connect()`, so
//! the agent must reach into each pod's network namespace to terminate a
//! connected UDP socket whose backend left (`crate::sockterm`). The
//! runtime tells only the CNI plugin where that namespace is (`CNI_NETNS`
//! on ADD: a bind mount such as `/var/run/netns/cni-…`, or
//! `/proc/PID/ns/net`), so ADD records it, one small JSON file per pod
//! interface in `netns/` of the plugin's IPAM store (`DATA_DIR/NETWORK/`,
//! a directory the agent already shares with the plugin), named after the
//! pod's host-side veth; DEL removes it.
//!
//! Why a record and not a scan of `/proc/*/ns/net`: the scan needs the
//! host's PID namespace (`hostPID`) and visits every namespace of the
//! machine — other runtimes', other tools', in the test harness other
//! nodes' — where the record names exactly the pods ferry wired, and
//! costs one directory read per sync that has a departed UDP backend.
//!
//! Robustness: a record is written to a temporary file and renamed into
//! place, so the agent never reads half of one. It holds the namespace's
//! identity (the nsfs device and inode that `stat` of the path reported at
//! ADD), and the agent enters a namespace only through a file descriptor
//! whose identity matches: a path that went away, or now names another
//! namespace (a `/proc/PID/ns/net` whose PID was reused, a bind mount
//! recreated), is skipped, never entered by mistake.
use std::{
    fs::{self, File},
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// The records' directory inside the IPAM store of a network.
pub const DIR: &str = "netns";

/// The records' directory for `network`'s IPAM store under `data_dir`.
pub fn records_dir(data_dir: &Path, network: &str) -> PathBuf {
    data_dir.join(network).join(DIR)
}

/// A network namespace's identity: the nsfs device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

impl NetnsId {
    pub fn of_metadata(m: &fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
        }
    }

    /// The identity of the namespace `path` names (following the
    /// `/proc/PID/ns/net` magic link).
    pub fn of_path(path: &Path) -> io::Result<Self> {
        fs::metadata(path).map(|m| Self::of_metadata(&m))
    }

    /// The calling thread's own network namespace.
    pub fn own() -> io::Result<Self> {
        Self::of_path(Path::new("/proc/thread-self/ns/net"))
    }
}

/// One pod interface's network namespace, as ADD saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodNetns {
    pub container_id: String,
    pub ifname: String,
    /// `CNI_NETNS`.
    pub netns: PathBuf,
    /// What `netns` named at ADD.
    pub id: NetnsId,
}

/// Record `pod` as `name` (the host-side veth's name) in `dir`, atomically.
pub fn write(dir: &Path, name: &str, pod: &PodNetns) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let json = serde_json::to_vec(pod).map_err(io::Error::other)?;
    fs::write(&tmp, json)?;
    fs::rename(&tmp, dir.join(name)).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Remove the record `name`; none is fine (DEL is idempotent).
pub fn remove(dir: &Path, name: &str) -> io::Result<()> {
    match fs::remove_file(dir.join(name)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A record that could not be read (logged by the caller, skipped).
#[derive(Debug, thiserror::Error)]
#[error("pod network namespace record {path}: {why}")]
pub struct BadRecord {
    pub path: PathBuf,
    pub why: String,
}

/// Parse one record's content.
pub fn parse(path: &Path, content: &[u8]) -> Result<PodNetns, BadRecord> {
    serde_json::from_slice(content).map_err(|e| BadRecord {
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

/// Every record in `dir` (none when it does not exist), and those that
/// could not be read. Temporary files (a name starting with `.`) are not
/// records.
pub fn read_all(dir: &Path) -> io::Result<(Vec<PodNetns>, Vec<BadRecord>)> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(e),
    };
    let mut pods = Vec::new();
    let mut bad = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        match fs::read(&path) {
            Ok(content) => match parse(&path, &content) {
                Ok(pod) => pods.push(pod),
                Err(e) => bad.push(e),
            },
            // Removed by a DEL meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => bad.push(BadRecord {
                path,
                why: e.to_string(),
            }),
        }
    }
    Ok((pods, bad))
}

/// The namespaces to enter: one per identity (a pod with two interfaces
/// has two records of one namespace), in a stable order, without `own`
/// (the agent's namespace, whose sockets it handles itself).
pub fn to_visit(records: &[PodNetns], own: Option<NetnsId>) -> Vec<&PodNetns> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out: Vec<&PodNetns> = records.iter().filter(|r| Some(r.id) != own).collect();
    out.sort_by(|a, b| (a.id, &a.netns).cmp(&(b.id, &b.netns)));
    out.retain(|r| seen.insert(r.id));
    out
}

#[derive(Debug, thiserror::Error)]
pub enum OpenNetnsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} now names another network namespace ({now:?}, recorded {recorded:?}): the pod is gone"
    )]
    Replaced {
        path: PathBuf,
        recorded: NetnsId,
        now: NetnsId,
    },
}

impl OpenNetnsError {
    /// The pod's namespace is gone (not an error worth a warning).
    pub fn is_gone(&self) -> bool {
        match self {
            OpenNetnsError::Io { source, .. } => source.kind() == io::ErrorKind::NotFound,
            OpenNetnsError::Replaced { .. } => true,
        }
    }
}

/// Open the namespace of `pod`, only if the path still names the one ADD
/// recorded (checked on the open descriptor, so there is no window between
/// the check and `setns`).
pub fn open(pod: &PodNetns) -> Result<File, OpenNetnsError> {
    let io = |source| OpenNetnsError::Io {
        path: pod.netns.clone(),
        source,
    };
    let file = File::open(&pod.netns).map_err(io)?;
    let now = NetnsId::of_metadata(&file.metadata().map_err(io)?);
    if now != pod.id {
        return Err(OpenNetnsError::Replaced {
            path: pod.netns.clone(),
            recorded: pod.id,
            now,
        });
    }
    Ok(file)
}

/// Move the calling thread into the network namespace `ns` for the rest
/// of its life: only a thread started for work in that namespace, which
/// ends with it, may call this (no tokio worker, nothing that goes on
/// working in the node's namespace). Needs CAP_SYS_ADMIN.
pub fn enter(ns: &File) -> io::Result<()> {
    // SAFETY: setns on a descriptor the caller keeps open; it changes the
    // calling thread's network namespace only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(container: &str, netns: &str, ino: u64) -> PodNetns {
        PodNetns {
            container_id: container.into(),
            ifname: "eth0".into(),
            netns: netns.into(),
            id: NetnsId { dev: 4, ino },
        }
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ferry-podns-test-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn one_visit_per_namespace_and_never_the_agents_own() {
        let records = [
            pod("c", "/var/run/netns/cni-c", 30),
            pod("a", "/var/run/netns/cni-a", 10),
            // A second interface of pod a: the same namespace.
            PodNetns {
                ifname: "net1".into(),
                ..pod("a", "/var/run/netns/cni-a", 10)
            },
            // A pod sharing the node's namespace (recorded by mistake).
            pod("h", "/proc/1/ns/net", 1),
            pod("b", "/proc/77/ns/net", 20),
        ];
        let own = Some(NetnsId { dev: 4, ino: 1 });
        let visit: Vec<&str> = to_visit(&records, own)
            .iter()
            .map(|r| r.container_id.as_str())
            .collect();
        assert_eq!(visit, ["a", "b", "c"]);
        assert_eq!(to_visit(&records, None).len(), 4);
    }

    #[test]
    fn records_round_trip_and_are_written_whole() {
        let dir = scratch("roundtrip");
        let a = pod("a", "/var/run/netns/cni-a", 10);
        write(&dir, "fry0000000000a", &a).unwrap();
        write(&dir, "fry0000000000b", &pod("b", "/proc/77/ns/net", 20)).unwrap();
        // Rewritten in place (a repeated ADD): still one record.
        write(&dir, "fry0000000000a", &a).unwrap();
        let tmp: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(tmp.is_empty(), "temporary files left: {tmp:?}");
        // Leftovers of an interrupted write and a damaged record.
        fs::write(dir.join(".fry0000000000c.1.tmp"), "{").unwrap();
        fs::write(dir.join("fry0000000000d"), "{\"containerId\":").unwrap();
        let (mut pods, bad) = read_all(&dir).unwrap();
        pods.sort_by(|x, y| x.container_id.cmp(&y.container_id));
        assert_eq!(pods.len(), 2, "{pods:?}");
        assert_eq!(pods[0], a);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(bad[0].path.ends_with("fry0000000000d"));
        remove(&dir, "fry0000000000a").unwrap();
        remove(&dir, "fry0000000000a").unwrap();
        let (pods, _) = read_all(&dir).unwrap();
        assert_eq!(pods.len(), 1);
        fs::remove_dir_all(&dir).unwrap();
        assert!(
            read_all(&dir).unwrap().0.is_empty(),
            "no directory, no pods"
        );
    }

    #[test]
    fn the_record_format_is_stable() {
        let json = serde_json::to_value(pod("a", "/var/run/netns/cni-a", 10)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "containerId": "a",
                "ifname": "eth0",
                "netns": "/var/run/netns/cni-a",
                "id": {"dev": 4, "ino": 10},
            })
        );
    }

    #[test]
    fn a_namespace_is_opened_only_while_its_path_names_the_recorded_one() {
        let own = NetnsId::own().unwrap();
        let here = PodNetns {
            id: own,
            ..pod("a", "/proc/thread-self/ns/net", 0)
        };
        assert!(open(&here).is_ok());
        let replaced = PodNetns {
            id: NetnsId {
                dev: own.dev,
                ino: own.ino + 1,
            },
            ..here.clone()
        };
        let e = open(&replaced).unwrap_err();
        assert!(e.is_gone(), "{e}");
        let gone = pod("g", "/var/run/netns/ferry-no-such-namespace", 1);
        let e = open(&gone).unwrap_err();
        assert!(e.is_gone(), "{e}");
    }
}
