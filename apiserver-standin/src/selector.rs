//! Label and field selectors, as the `labelSelector` and `fieldSelector`
//! query parameters spell them.
//!
//! Labels: comma-separated requirements, all of which must hold: `k`
//! (exists), `!k` (absent), `k=v` / `k==v`, `k!=v` (also true when `k` is
//! absent), `k in (a,b)`, `k notin (a,b)` (also true when absent), `k>n`,
//! `k<n`. Fields: `metadata.name` and `metadata.namespace` with `=`, `==`
//! or `!=`; any other field is a 400, as on a real server for these kinds.
use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Exists,
    NotExists,
    In(Vec<String>),
    NotIn(Vec<String>),
    Gt(i64),
    Lt(i64),
}

#[derive(Clone, Debug, PartialEq)]
struct Requirement {
    key: String,
    op: Op,
}

impl Requirement {
    fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let value = labels
            .and_then(|l| l.get(&self.key))
            .and_then(Value::as_str);
        match (&self.op, value) {
            (Op::Exists, v) => v.is_some(),
            (Op::NotExists, v) => v.is_none(),
            (Op::In(set), Some(v)) => set.iter().any(|s| s == v),
            (Op::In(_), None) => false,
            (Op::NotIn(set), Some(v)) => !set.iter().any(|s| s == v),
            (Op::NotIn(_), None) => true,
            (Op::Gt(n), Some(v)) => v.parse::<i64>().is_ok_and(|v| v > *n),
            (Op::Lt(n), Some(v)) => v.parse::<i64>().is_ok_and(|v| v < *n),
            (Op::Gt(_) | Op::Lt(_), None) => false,
        }
    }
}

/// A parsed `labelSelector`; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        split_top_level(s)
            .into_iter()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| parse_requirement(t).map_err(|e| format!("unable to parse requirement: {e}")))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub(crate) fn matches(&self, obj: &Value) -> bool {
        let labels = obj["metadata"]["labels"].as_object();
        self.0.iter().all(|r| r.matches(labels))
    }
}

/// Split on commas outside parentheses (`a in (x,y),b` is two terms).
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_requirement(t: &str) -> Result<Requirement, String> {
    let req = |key: &str, op: Op| -> Result<Requirement, String> {
        let key = key.trim();
        validate_key(key)?;
        Ok(Requirement {
            key: key.into(),
            op,
        })
    };
    if let Some(key) = t.strip_prefix('!') {
        return req(key, Op::NotExists);
    }
    if let Some(open) = t.find('(') {
        let (head, set) = t.split_at(open);
        let set = set
            .strip_prefix('(')
            .and_then(|s| s.strip_suffix(')'))
            .ok_or_else(|| format!("{t:?}: unbalanced parentheses"))?;
        let values = set.split(',').map(|v| v.trim().to_string()).collect();
        let mut words = head.split_whitespace();
        let (key, op) = (words.next().unwrap_or_default(), words.next());
        return match (op, words.next()) {
            (Some("in"), None) => req(key, Op::In(values)),
            (Some("notin"), None) => req(key, Op::NotIn(values)),
            _ => Err(format!(
                "{t:?}: expected 'key in (...)' or 'key notin (...)'"
            )),
        };
    }
    for (sym, make) in [
        ("!=", (|v| Op::NotIn(vec![v])) as fn(String) -> Op),
        ("==", |v| Op::In(vec![v])),
        ("=", |v| Op::In(vec![v])),
    ] {
        if let Some((key, value)) = t.split_once(sym) {
            return req(key, make(value.trim().to_string()));
        }
    }
    for (sym, gt) in [(">", true), ("<", false)] {
        if let Some((key, value)) = t.split_once(sym) {
            let n: i64 = value.trim().parse().map_err(|_| {
                format!("{t:?}: for 'Gt', 'Lt' operators, the value must be an integer")
            })?;
            return req(key, if gt { Op::Gt(n) } else { Op::Lt(n) });
        }
    }
    req(t, Op::Exists)
}

/// Keys are `[prefix/]name`, names at most 63 characters of alphanumerics,
/// '-', '_' and '.'.
fn validate_key(key: &str) -> Result<(), String> {
    let name = key.rsplit_once('/').map_or(key, |(_, n)| n);
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && key.split('/').count() <= 2;
    if ok {
        Ok(())
    } else {
        Err(format!("invalid label key {key:?}"))
    }
}

/// A parsed `fieldSelector`; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    const FIELDS: [&'static str; 2] = ["metadata.name", "metadata.namespace"];

    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for t in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = t.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!("invalid selector: '{t}'; can't understand '{t}'"));
            };
            let field = field.trim();
            if !Self::FIELDS.contains(&field) {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(Self(terms))
    }

    /// Also narrow to `name` (a watch on one object's URL).
    pub(crate) fn with_name(mut self, name: &str) -> Self {
        self.0.push(("metadata.name".into(), true, name.into()));
        self
    }

    pub(crate) fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = match field.as_str() {
                "metadata.name" => obj["metadata"]["name"].as_str(),
                _ => obj["metadata"]["namespace"].as_str(),
            }
            .unwrap_or_default();
            (actual == value) == *equal
        })
    }
}

/// Which objects a LIST or WATCH wants: a namespace (from the path) and the
/// two selectors.
#[derive(Clone, Debug, Default)]
pub(super) struct Filter {
    pub(crate) namespace: Option<String>,
    pub(crate) labels: LabelSelector,
    pub(crate) fields: FieldSelector,
}

impl Filter {
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        let ns_ok = self
            .namespace
            .as_deref()
            .is_none_or(|ns| obj["metadata"]["namespace"].as_str() == Some(ns));
        ns_ok && self.labels.matches(obj) && self.fields.matches(obj)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn kube_proxy_selector() {
        let s = LabelSelector::parse(
            "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless",
        )
        .unwrap();
        assert!(s.matches(&obj(json!({"app": "x"}))));
        assert!(s.matches(&json!({"metadata": {}})));
        assert!(!s.matches(&obj(
            json!({"service.kubernetes.io/service-proxy-name": "other"})
        )));
        assert!(!s.matches(&obj(json!({"service.kubernetes.io/headless": ""}))));
    }

    #[test]
    fn operators() {
        let o = obj(json!({"a": "1", "b": "x"}));
        for (sel, want) in [
            ("a", true),
            ("c", false),
            ("!c", true),
            ("a=1", true),
            ("a==1", true),
            ("a=2", false),
            ("a!=2", true),
            ("c!=2", true),
            ("a=1,b=y", false),
            ("b in (x, y),a", true),
            ("b notin (x,y)", false),
            ("c notin (x)", true),
            ("a>0", true),
            ("a<1", false),
            ("", true),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&o),
                want,
                "{sel}"
            );
        }
        assert!(LabelSelector::parse("a in (x").is_err());
        assert!(LabelSelector::parse("=x").is_err());
    }

    #[test]
    fn fields() {
        let o = obj(json!({}));
        assert!(
            FieldSelector::parse("metadata.name=a,metadata.namespace==ns")
                .unwrap()
                .matches(&o)
        );
        assert!(
            !FieldSelector::parse("metadata.name!=a")
                .unwrap()
                .matches(&o)
        );
        assert!(FieldSelector::parse("spec.foo=a").is_err());
    }
}
