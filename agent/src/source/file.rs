//! The file source: Service, EndpointSlice, Node and ServiceCIDR objects as a
//! multi-document YAML manifest (what `kubectl get -o yaml` prints, or a
//! hand-written file), re-read whenever it changes. For standalone use,
//! demos and tests.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use serde_json::Value;

use super::{Snapshot, Source};
use crate::plan::{Changed, Objects, Problem};

/// A manifest that is not YAML at all: nothing of it can be trusted, so the
/// agent keeps what it has (a half-written file must not flush Services).
#[derive(Debug, thiserror::Error)]
#[error(
    "the manifest is not valid YAML ({0}); keeping the current dataplane state until it is fixed"
)]
pub struct NotYaml(String);

/// YAML 1.2's core schema, as serde_yaml read it: only `true`/`false` are
/// booleans, so a Node named `n` or a label value `no` stays a string.
/// serde-saphyr's default budget (1,024 documents, 250,000 nodes, a
/// million events, 64 MiB of scalars) guards against hostile input; a
/// manifest is the operator's own and holds two documents per Service (the
/// Service and its EndpointSlice): the bench's 10,000 Services of 10
/// endpoints each are 20,000 documents, about 1.5 million nodes, 2.5
/// million events and 16 MB. The budget allows 100 times that.
///
/// What aliases can add is bounded apart, as it does not grow with the
/// text: a manifest of `text_len` bytes holds at most that many bytes of
/// scalars (a few escapes and tag shorthands expand, hence 4 times), so
/// scalars replayed through aliases may add no more than 64 MiB on top;
/// and 200,000 events replayed or recorded for anchors, 1,000 merge keys.
/// The library's defaults (a million events; 1 GiB of scalars under the
/// budget above) let 547 bytes of nested aliases cost 200 MB and seconds,
/// and one 4 MiB anchor replayed 256 times cost 1 GiB (`tests/parser_fuzz.rs`).
/// kubectl writes no anchors; a hand-written manifest sharing labels
/// through a few stays far below.
pub fn yaml_options(text_len: usize) -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        budget: serde_saphyr::budget! {
            max_documents: 2_000_000,
            max_nodes: 150_000_000,
            max_events: 250_000_000,
            max_total_scalar_bytes: text_len.saturating_mul(4).saturating_add(64 << 20),
            max_reader_input_bytes: Some(1 << 30),
            max_recorded_anchor_events: 200_000,
            max_recorded_anchor_bytes: 16 << 20,
            max_merge_keys: 1_000,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: 200_000,
        },
    }
}

/// Parse a manifest with serde-saphyr (maintained; serde_yaml is archived
/// and its multi-document iterator repeats a syntax error forever). Unknown
/// kinds and documents that do not decode are reported and skipped; a YAML
/// syntax error anywhere rejects the whole file. A `kind: List` (as
/// `kubectl get -o yaml` writes) is unpacked.
pub fn parse_manifest(text: &str) -> Result<(Objects, Vec<Problem>), NotYaml> {
    let docs: Vec<Value> = serde_saphyr::from_multiple_with_options(text, yaml_options(text.len()))
        .map_err(|e| NotYaml(e.to_string()))?;
    let mut objects = Objects::default();
    let mut problems = Vec::new();
    for (i, value) in docs.into_iter().enumerate() {
        if !value.is_null() {
            add_value(value, i, &mut objects, &mut problems);
        }
    }
    Ok((objects, problems))
}

/// `value` as a `T`, or the error with the path of the field at fault.
fn decode<T: serde::de::DeserializeOwned>(
    value: Value,
) -> Result<T, serde_path_to_error::Error<serde_json::Error>> {
    serde_path_to_error::deserialize(value)
}

fn add_value(value: Value, doc: usize, objects: &mut Objects, problems: &mut Vec<Problem>) {
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
    let problem = |e: serde_path_to_error::Error<serde_json::Error>| Problem {
        object: format!("{kind} {name} (document {doc})"),
        // The path of the field that did not decode ("." is the object).
        field: e.path().to_string(),
        message: e.into_inner().to_string(),
    };
    match kind.as_str() {
        "Service" => match decode(value) {
            // The same Services as the kube source's label selector.
            Ok(s) if super::is_not_proxied(&s) => {}
            Ok(s) => objects.add_service(&s),
            Err(e) => problems.push(problem(e)),
        },
        "EndpointSlice" => match decode(value) {
            Ok(s) => objects.add_slice(&s),
            Err(e) => problems.push(problem(e)),
        },
        "Node" => match decode(value) {
            Ok(n) => objects.nodes.push(n),
            Err(e) => problems.push(problem(e)),
        },
        "ServiceCIDR" => match decode(value) {
            Ok(c) => objects.service_cidrs.push(c),
            Err(e) => problems.push(problem(e)),
        },
        "List" => {
            if let Some(items) = value.get("items").and_then(|i| i.as_array()) {
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
    /// The (mtime, size, inode) of the content last read.
    last: Option<Stamp>,
    /// A change seen at the previous poll, read once it holds still.
    pending: Option<Stamp>,
    /// The last failure logged (not read, not YAML), so it is said once
    /// until it changes or goes away.
    last_failure: Option<String>,
    pub poll: Duration,
    /// A fingerprint of the last snapshot's objects, to say what the next
    /// one changed (the objects themselves go once they are planned).
    digest: Option<super::Digest>,
}

type Stamp = (SystemTime, u64, u64);

impl FileSource {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            last: None,
            pending: None,
            last_failure: None,
            poll: Duration::from_millis(100),
            digest: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's content if it changed since it was last read (or was never
    /// read) and has held still for one poll since: a file being copied over
    /// the watched one (`cp` truncates, then writes) is read once the copy
    /// has stopped, not half-way. A file that cannot be read is an error;
    /// the caller keeps what it has.
    pub fn changed(&mut self) -> std::io::Result<Option<String>> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&self.path)?;
        let stamp = (meta.modified()?, meta.len(), meta.ino());
        if self.last == Some(stamp) {
            self.pending = None;
            return Ok(None);
        }
        if self.pending != Some(stamp) {
            self.pending = Some(stamp);
            return Ok(None);
        }
        let text = std::fs::read_to_string(&self.path)?;
        self.last = Some(stamp);
        self.pending = None;
        Ok(Some(text))
    }

    /// Log `failure` unless it is the one logged last.
    fn fail_once(&mut self, failure: String) {
        if self.last_failure.as_deref() != Some(failure.as_str()) {
            tracing::warn!(source = %self.path.display(), "{failure}");
            self.last_failure = Some(failure);
        }
    }
}

/// What a change hands the planner: the objects it lists (the changed
/// Services with their slices; the Nodes, the ServiceCIDRs if they
/// changed), as the kube source does, so that planning one changed
/// endpoint among 100,000 Services reads one Service, not all of them.
fn only_changed(mut objects: Objects, changed: &Changed) -> Objects {
    let Changed::Some {
        services,
        nodes,
        service_cidrs,
    } = changed
    else {
        return objects;
    };
    let listed: std::collections::HashSet<(&str, &str)> = services
        .iter()
        .map(|(ns, name)| (ns.as_str(), name.as_str()))
        .collect();
    objects
        .services
        .retain(|s| listed.contains(&(s.id.0.as_str(), s.id.1.as_str())));
    objects
        .slices
        .retain(|s| listed.contains(&(&*s.namespace, &*s.service)));
    if !nodes {
        objects.nodes.clear();
    }
    if !service_cidrs {
        objects.service_cidrs.clear();
    }
    objects
}

impl Source for FileSource {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    /// The manifest read and parsed again: kept objects would double the
    /// agent's memory for an event this rare (this node's own address or
    /// zone changed).
    fn everything(&self) -> Option<Arc<Objects>> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        parse_manifest(&text)
            .ok()
            .map(|(objects, _)| Arc::new(objects))
    }

    async fn next(&mut self) -> Snapshot {
        loop {
            match self.changed() {
                Ok(Some(text)) => {
                    let seen = Instant::now();
                    match parse_manifest(&text) {
                        Ok((objects, problems)) => {
                            if self.last_failure.take().is_some() {
                                tracing::info!(source = %self.path.display(), "the manifest is readable again");
                            }
                            let digest = super::Digest::of(&objects);
                            let changed = match &self.digest {
                                Some(old) => old.changes(&digest),
                                None => Changed::Everything,
                            };
                            self.digest = Some(digest);
                            let objects = Arc::new(only_changed(objects, &changed));
                            return Snapshot {
                                objects,
                                changed,
                                problems,
                                seen,
                            };
                        }
                        Err(e) => self.fail_once(e.to_string()),
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    // Read again once it is back, even if unchanged.
                    self.last = None;
                    self.fail_once(format!(
                        "cannot read the manifest ({e}); keeping the current dataplane state"
                    ));
                }
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
        let (objects, problems) = parse_manifest(yaml).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let names: Vec<_> = objects.services.iter().map(|s| s.id.1.as_str()).collect();
        assert_eq!(names, ["ours"]);
    }

    /// The manifest from issue 13: serde_yaml's iterator returned this
    /// syntax error forever, and the agent grew to gigabytes.
    const BROKEN: &str =
        "kind: Service\nmetadata: {name: a}\n---\nkind: Service\nmetadata: {name: b\n  bad: [x\n";

    #[test]
    fn a_yaml_syntax_error_is_one_error_not_an_endless_stream() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(parse_manifest(BROKEN).map(|(o, _)| o.services.len())));
        let parsed = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("parsing a broken manifest ends");
        let err = parsed.expect_err("a syntax error rejects the file");
        assert!(
            err.to_string()
                .contains("keeping the current dataplane state"),
            "{err}"
        );
    }

    fn temp_file(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("ferry-file-source-{tag}-{}", std::process::id()))
    }

    #[test]
    fn a_file_is_read_once_it_holds_still_so_a_copy_in_progress_is_not() {
        let path = temp_file("settle");
        let mut source = FileSource::new(&path);
        std::fs::write(&path, "kind: Service\n").unwrap();
        assert_eq!(source.changed().unwrap(), None, "just written: wait a poll");
        assert_eq!(
            source.changed().unwrap().as_deref(),
            Some("kind: Service\n")
        );
        assert_eq!(source.changed().unwrap(), None, "unchanged");
        // `cp` over it: truncated, then written in pieces between polls.
        std::fs::write(&path, "kind: Ser").unwrap();
        assert_eq!(source.changed().unwrap(), None, "half-written: not read");
        std::fs::write(&path, "kind: Service\nmetadata: {name: b}\n").unwrap();
        assert_eq!(source.changed().unwrap(), None, "still moving: not read");
        let whole = source.changed().unwrap();
        assert_eq!(
            whole.as_deref(),
            Some("kind: Service\nmetadata: {name: b}\n")
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_broken_manifest_yields_no_snapshot_and_a_fixed_one_does() {
        let path = temp_file("broken");
        std::fs::write(&path, BROKEN).unwrap();
        let mut source = FileSource::new(&path);
        source.poll = Duration::from_millis(10);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let waited = tokio::time::timeout(Duration::from_millis(300), source.next()).await;
            assert!(
                waited.is_err(),
                "a broken manifest must not replace the state"
            );
            assert!(source.last_failure.is_some());
            std::fs::write(&path, "kind: Node\nmetadata: {name: n1}\n").unwrap();
            let snapshot = tokio::time::timeout(Duration::from_secs(2), source.next())
                .await
                .expect("the fixed manifest is read");
            assert_eq!(snapshot.objects.nodes.len(), 1);
            assert!(source.last_failure.is_none());
        });
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_field_of_the_wrong_type_is_reported_with_its_path() {
        let yaml = "kind: Service\nmetadata: {name: web, namespace: default}\nspec: {clusterIP: 10.96.0.1, ports: [{port: eighty}]}\n";
        let (objects, problems) = parse_manifest(yaml).unwrap();
        assert!(objects.services.is_empty());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "spec.ports[0].port", "{problems:?}");
        assert!(problems[0].object.contains("Service web"), "{problems:?}");
    }

    #[test]
    fn a_manifest_of_five_thousand_services_of_ten_endpoints_is_read() {
        // The bench's large manifest, in the harness's own layout, half its
        // size (beyond each default limit still: 10,000 documents, 750,000
        // nodes, 1.25 million events; the full 10,000 Services pass too, in
        // a minute of a debug build).
        let mut yaml = String::new();
        for i in 0..5_000u32 {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: s{i}\n  namespace: default\nspec:\n  type: ClusterIP\n  clusterIP: 10.96.{}.{}\n  clusterIPs: [10.96.{}.{}]\n  ports:\n  - name: http\n    port: 80\n    protocol: TCP\n    targetPort: 8080\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s{i}-slice\n  namespace: default\n  labels:\n    kubernetes.io/service-name: s{i}\naddressType: IPv4\nports:\n- name: http\n  port: 8080\n  protocol: TCP\nendpoints:\n",
                i / 256,
                i % 256,
                i / 256,
                i % 256
            ));
            for j in 0..10 {
                yaml.push_str(&format!(
                    "- addresses: [\"10.128.{}.{j}\"]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  nodeName: n1\n",
                    i % 256
                ));
            }
        }
        let (objects, problems) = parse_manifest(&yaml).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(objects.services.len(), 5_000);
        assert_eq!(objects.slices.len(), 5_000);
    }

    #[test]
    fn yaml_1_1_boolean_spellings_stay_strings() {
        let yaml = "kind: Node\nmetadata: {name: n, labels: {zone: no, on: off}}\n";
        let (objects, problems) = parse_manifest(yaml).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let meta = &objects.nodes[0].metadata;
        assert_eq!(meta.name.as_deref(), Some("n"));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels["zone"], "no");
        assert_eq!(labels["on"], "off");
    }
}
