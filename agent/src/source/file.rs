//! The file source: Service, EndpointSlice, Node and ServiceCIDR objects as a
//! multi-document YAML manifest (what `kubectl get -o yaml` prints, or a
//! hand-written file), re-read whenever it changes. For standalone use,
//! demos and tests.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use serde::Deserialize;

use super::{Snapshot, Source};
use crate::plan::{Objects, Problem};

/// Parse a manifest. Unknown kinds and documents that do not decode are
/// reported and skipped. A `kind: List` (as `kubectl get -o yaml` writes)
/// is unpacked.
pub fn parse_manifest(text: &str) -> (Objects, Vec<Problem>) {
    let mut objects = Objects::default();
    let mut problems = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => {}
            Ok(value) => add_value(value, i, &mut objects, &mut problems),
            Err(e) => problems.push(Problem {
                object: format!("document {i}"),
                field: String::new(),
                message: format!("not YAML: {e}"),
            }),
        }
    }
    (objects, problems)
}

fn add_value(
    value: serde_yaml::Value,
    doc: usize,
    objects: &mut Objects,
    problems: &mut Vec<Problem>,
) {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("")
        .to_string();
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("?")
        .to_string();
    let problem = |message: String| Problem {
        object: format!("{kind} {name} (document {doc})"),
        field: String::new(),
        message,
    };
    match kind.as_str() {
        "Service" => match serde_yaml::from_value(value) {
            // The same Services as the kube source's label selector.
            Ok(s) if super::is_not_proxied(&s) => {}
            Ok(s) => objects.services.push(s),
            Err(e) => problems.push(problem(e.to_string())),
        },
        "EndpointSlice" => match serde_yaml::from_value(value) {
            Ok(s) => objects.slices.push(s),
            Err(e) => problems.push(problem(e.to_string())),
        },
        "Node" => match serde_yaml::from_value(value) {
            Ok(n) => objects.nodes.push(n),
            Err(e) => problems.push(problem(e.to_string())),
        },
        "ServiceCIDR" => match serde_yaml::from_value(value) {
            Ok(c) => objects.service_cidrs.push(c),
            Err(e) => problems.push(problem(e.to_string())),
        },
        "List" => {
            if let Some(items) = value.get("items").and_then(|i| i.as_sequence()) {
                for item in items.clone() {
                    add_value(item, doc, objects, problems);
                }
            }
        }
        // Pods, Deployments and the like may share the file; not ours.
        _ => {}
    }
}

/// Watches one manifest file by polling its metadata (robust to editors
/// that replace the file, and to files on any filesystem).
pub struct FileSource {
    path: PathBuf,
    last: Option<(SystemTime, u64, u64)>,
    pub poll: Duration,
}

impl FileSource {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            last: None,
            poll: Duration::from_millis(100),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's content if it changed since the last call (or on the first
    /// call). A file that cannot be read is an error; the caller keeps what
    /// it has.
    pub fn changed(&mut self) -> std::io::Result<Option<String>> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&self.path)?;
        let stamp = (meta.modified()?, meta.len(), meta.ino());
        if self.last == Some(stamp) {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&self.path)?;
        self.last = Some(stamp);
        Ok(Some(text))
    }
}

impl Source for FileSource {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    async fn next(&mut self) -> Snapshot {
        loop {
            match self.changed() {
                Ok(Some(text)) => {
                    let seen = Instant::now();
                    let (objects, problems) = parse_manifest(&text);
                    return Snapshot {
                        objects,
                        problems,
                        seen,
                    };
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    source = %self.path.display(),
                    error = %e,
                    "cannot read the manifest; keeping the current dataplane state"
                ),
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_another_proxy_serves_or_headless_ones_are_left_out_as_by_the_kube_source() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: ours, namespace: default}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: theirs, namespace: default, labels: {service.kubernetes.io/service-proxy-name: other}}
spec: {clusterIP: 10.96.0.2, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: headless-label, namespace: default, labels: {service.kubernetes.io/headless: ""}}
spec: {clusterIP: 10.96.0.3, ports: [{port: 80}]}
"#;
        let (objects, problems) = parse_manifest(yaml);
        assert!(problems.is_empty(), "{problems:?}");
        let names: Vec<_> = objects
            .services
            .iter()
            .filter_map(|s| s.metadata.name.as_deref())
            .collect();
        assert_eq!(names, ["ours"]);
    }
}
