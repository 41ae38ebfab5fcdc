//! deploy/: every manifest parses into its k8s-openapi type, the RBAC grants
//! exactly what the agent reads, and the DaemonSet runs the agent with
//! arguments it accepts (checked by the real binary's `--dry-run`).
use std::{collections::BTreeMap, path::Path, process::Command};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Namespace, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};

#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
}

fn load() -> Manifests {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut m = Manifests::default();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("deploy/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple_with_options(
            &text,
            ferry_agent::source::file::yaml_options(text.len()),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for value in docs {
            if value.is_null() {
                continue;
            }
            let kind = value["kind"].as_str().unwrap_or_default().to_string();
            let what = format!("{} in {}", kind, file.display());
            fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value, what: &str) -> T {
                serde_json::from_value(v).unwrap_or_else(|e| panic!("{what}: {e}"))
            }
            match kind.as_str() {
                "Namespace" => m.namespaces.push(parse(value, &what)),
                "ServiceAccount" => m.service_accounts.push(parse(value, &what)),
                "ClusterRole" => m.cluster_roles.push(parse(value, &what)),
                "ClusterRoleBinding" => m.bindings.push(parse(value, &what)),
                "ConfigMap" => m.config_maps.push(parse(value, &what)),
                "DaemonSet" => m.daemon_sets.push(parse(value, &what)),
                other => panic!("unexpected kind {other:?} in {}", file.display()),
            }
        }
    }
    m
}

#[test]
fn every_manifest_parses_and_the_objects_refer_to_each_other() {
    let m = load();
    assert_eq!(
        (
            m.namespaces.len(),
            m.service_accounts.len(),
            m.cluster_roles.len()
        ),
        (1, 1, 1)
    );
    assert_eq!(
        (m.bindings.len(), m.config_maps.len(), m.daemon_sets.len()),
        (1, 1, 1)
    );
    let ns = m.namespaces[0].metadata.name.clone().unwrap();
    let sa = &m.service_accounts[0];
    assert_eq!(sa.metadata.namespace.as_deref(), Some(ns.as_str()));
    let binding = &m.bindings[0];
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        Some(&binding.role_ref.name),
        m.cluster_roles[0].metadata.name.as_ref()
    );
    let subject = &binding.subjects.as_ref().unwrap()[0];
    assert_eq!(
        (
            subject.kind.as_str(),
            Some(&subject.name),
            subject.namespace.as_ref()
        ),
        ("ServiceAccount", sa.metadata.name.as_ref(), Some(&ns))
    );
    let ds = &m.daemon_sets[0];
    assert_eq!(ds.metadata.namespace.as_deref(), Some(ns.as_str()));
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name, sa.metadata.name);
    assert_eq!(pod.host_network, Some(true));
    let volumes: Vec<&str> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        for mount in c.volume_mounts.iter().flatten() {
            assert!(
                volumes.contains(&mount.name.as_str()),
                "volume {} of {}",
                mount.name,
                c.name
            );
        }
    }
}

#[test]
fn rbac_grants_read_access_to_what_the_kube_source_watches_only() {
    let m = load();
    let mut granted = BTreeMap::new();
    for rule in &m.cluster_roles[0].rules.clone().unwrap() {
        let mut verbs = rule.verbs.clone();
        verbs.sort();
        assert_eq!(verbs, ["get", "list", "watch"], "read only: {rule:?}");
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                granted.insert(format!("{group}/{resource}"), ());
            }
        }
    }
    let granted: Vec<&String> = granted.keys().collect();
    let mut watched = ferry_agent::source::kube::watched_resources();
    watched.sort();
    assert_eq!(granted, watched.iter().collect::<Vec<_>>());
    assert!(watched.contains(&"networking.k8s.io/servicecidrs".to_string()));
}

/// The agent's arguments in the DaemonSet, `$(VAR)` expanded as the kubelet
/// does from `config` (the ConfigMap's data).
fn agent_args(m: &Manifests, config: &BTreeMap<String, String>) -> Vec<String> {
    let pod = m.daemon_sets[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .clone()
        .unwrap();
    let agent = pod.containers.iter().find(|c| c.name == "agent").unwrap();
    let mut env = BTreeMap::new();
    for e in agent.env.iter().flatten() {
        let value = match e
            .value_from
            .as_ref()
            .and_then(|v| v.config_map_key_ref.as_ref())
        {
            Some(r) => config
                .get(&r.key)
                .unwrap_or_else(|| panic!("ConfigMap has no key {}", r.key))
                .clone(),
            None => "node-a".to_string(),
        };
        env.insert(e.name.clone(), value);
    }
    agent
        .args
        .iter()
        .flatten()
        .map(|a| {
            let mut a = a.clone();
            for (k, v) in &env {
                a = a.replace(&format!("$({k})"), v);
            }
            assert!(!a.contains("$("), "unexpanded variable in {a}");
            a
        })
        .collect()
}

/// `ferry-agent <args> --dry-run`, as in the pod (no kubeconfig):
/// success, and stdout or stderr.
fn dry_run(args: &[String]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-agent"))
        .args(args)
        .arg("--dry-run")
        .env("NODE_NAME", "node-a")
        .env_remove("KUBECONFIG")
        .env_remove("FERRY_K8S_API_SERVER")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ),
    )
}

#[test]
fn the_daemonset_runs_the_agent_with_arguments_it_accepts_and_named_capabilities() {
    let m = load();
    let config = m.config_maps[0].data.clone().unwrap();
    let pod = m.daemon_sets[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .clone()
        .unwrap();
    let agent = pod.containers.iter().find(|c| c.name == "agent").unwrap();
    let args = agent_args(&m, &config);
    let (ok, stdout) = dry_run(&args);
    assert!(ok, "ferry-agent {args:?} --dry-run: {stdout}");
    assert!(stdout.contains("Kube("), "{stdout}");
    assert!(stdout.contains("node_name: \"node-a\""), "{stdout}");

    let sc = agent.security_context.as_ref().unwrap();
    assert_ne!(sc.privileged, Some(true));
    // Hardening the container allows for every container of the pod.
    for container in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        let sc = container.security_context.as_ref().unwrap();
        let what = &container.name;
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{what}");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{what}");
        let seccomp = sc.seccomp_profile.as_ref().map(|p| p.type_.as_str());
        assert_eq!(seccomp, Some("RuntimeDefault"), "{what}");
    }
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let mut add = caps.add.clone().unwrap();
    add.sort();
    assert_eq!(add, ["BPF", "NET_ADMIN", "PERFMON"]);
    let probes = (
        agent
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap(),
        agent
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap(),
    );
    assert_eq!(
        (probes.0.path.as_deref(), probes.1.path.as_deref()),
        (Some("/healthz"), Some("/readyz"))
    );
}

#[test]
fn the_configmap_sets_the_api_server_address_the_agent_dials() {
    let m = load();
    let config = m.config_maps[0].data.clone().unwrap();
    // Empty by default: the in-cluster `kubernetes` ClusterIP.
    assert_eq!(config.get("k8s-api-server").map(String::as_str), Some(""));
    let args = agent_args(&m, &config);
    assert!(
        args.iter().any(|a| a == "--k8s-api-server="),
        "the DaemonSet passes the key: {args:?}"
    );
    let (ok, out) = dry_run(&args);
    assert!(ok && out.contains("api_server: None"), "{out}");

    // Set: the agent takes it (host:port means https).
    let mut set = config.clone();
    set.insert("k8s-api-server".into(), "192.168.1.10:6443".into());
    let (ok, out) = dry_run(&agent_args(&m, &set));
    assert!(ok, "{out}");
    assert!(out.contains("https://192.168.1.10:6443/"), "{out}");

    // A mistyped value stops the agent at once, saying what to give.
    set.insert("k8s-api-server".into(), "ftp://192.168.1.10".into());
    let (ok, out) = dry_run(&agent_args(&m, &set));
    assert!(!ok, "{out}");
    assert!(out.contains("--k8s-api-server"), "{out}");

    // Names are resolved with the node's resolver, not cluster DNS (a
    // ClusterIP, unreachable from the node without kube-proxy).
    let pod = m.daemon_sets[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .clone()
        .unwrap();
    assert_eq!(pod.dns_policy.as_deref(), Some("Default"));
}
