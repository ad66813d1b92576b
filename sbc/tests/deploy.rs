//! What `deploy/` ships stays true to sbc: every metric the Grafana dashboard's queries name is
//! one sbc exports (`sbc/src/metrics.rs`), and every instance's configuration in the Kubernetes
//! ConfigMap parses (secrets replaced by test files).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Metric names sbc registers: the `"sbc_..."` string literals of `sbc/src/metrics.rs`, where
/// every name lives.
fn exported() -> BTreeSet<String> {
    let src = std::fs::read_to_string(root().join("sbc/src/metrics.rs")).unwrap();
    src.split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.starts_with("sbc_")
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_string)
        .collect()
}

/// Every `sbc_...` identifier in a PromQL expression.
fn names_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("sbc_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn dashboard_queries_name_only_metrics_sbc_exports() {
    let exported = exported();
    assert!(exported.contains("sbc_calls_active"), "{exported:?}");
    let text = std::fs::read_to_string(root().join("deploy/grafana/sbc-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut n = 0;
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let names = names_in(expr);
            assert!(!names.is_empty(), "query names no sbc metric: {expr}");
            for name in names {
                // Histograms are exported as NAME_bucket, NAME_sum and NAME_count.
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                assert!(
                    exported.contains(&name) || exported.contains(base),
                    "panel {:?} queries {name}, which sbc does not export ({exported:?})",
                    panel["title"]
                );
                n += 1;
            }
        }
    }
    assert!(n >= 15, "only {n} metric references");
}

/// Ops see active calls by instance and carrier: a panel sums the per-carrier gauge by both.
#[test]
fn dashboard_shows_active_calls_by_instance_and_carrier() {
    assert!(exported().contains("sbc_calls_active_by_carrier"));
    let text = std::fs::read_to_string(root().join("deploy/grafana/sbc-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(|e| e.replace(' ', "")))
        .collect();
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("by(instance,carrier)(sbc_calls_active_by_carrier)")),
        "{exprs:?}"
    );
}

#[test]
fn every_kubernetes_configmap_config_parses() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    for name in ["api-token", "redis-password"] {
        let p = dir.path().join(name);
        std::fs::write(&p, "test-secret-0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let yaml = std::fs::read_to_string(root().join("deploy/kubernetes/configmap.yaml")).unwrap();
    let mut configs = Vec::new();
    let mut current: Option<String> = None;
    for line in yaml.lines() {
        if line == "  sbc.toml: |" {
            current = Some(String::new());
        } else if let Some(c) = current.as_mut() {
            if let Some(l) = line.strip_prefix("    ") {
                c.push_str(l);
                c.push('\n');
            } else if line.is_empty() {
                c.push('\n');
            } else {
                configs.push(current.take().unwrap());
            }
        }
    }
    configs.extend(current);
    assert_eq!(configs.len(), 2, "one config per instance");
    let mut ids = BTreeSet::new();
    for text in configs {
        let text = text.replace("/etc/sbc/secrets", &dir.path().display().to_string());
        let c = sbc::config::Config::parse_str(&text, Path::new("/etc/sbc/sbc.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let cluster = c.cluster.expect("[cluster]");
        ids.insert(cluster.instance_id);
    }
    assert_eq!(ids.len(), 2, "instance ids differ: {ids:?}");
}
