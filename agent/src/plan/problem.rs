//! What the plan could not use, and where: every skipped object or field is
//! reported with its path, never dropped silently.
use std::fmt;

/// An object (or part of one) that was skipped or is not fully served, and
/// why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Problem {
    /// "Service default/web", "EndpointSlice default/web-abc", "Node n1".
    pub object: String,
    /// The offending field path.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.object, self.field, self.message)
    }
}

/// "Kind namespace/name", or "Kind name" for cluster-scoped objects.
pub fn object_name(kind: &str, namespace: Option<&str>, name: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("{kind} {ns}/{}", name.unwrap_or("?")),
        None => format!("{kind} {}", name.unwrap_or("?")),
    }
}

/// Problems of one object, so each call site names only the field. The
/// object's name is written only when there is a problem: planning 100,000
/// Services makes many of these, and nearly all stay empty.
pub struct ObjectProblems<'a> {
    pub kind: &'static str,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
    pub sink: &'a mut Vec<Problem>,
}

impl ObjectProblems<'_> {
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.sink.push(Problem {
            object: object_name(self.kind, self.namespace, self.name),
            field: field.into(),
            message: message.into(),
        });
    }
}

/// The problems already logged: each is logged once, when it appears, not
/// at every sync; one that went away and comes back is logged again.
#[derive(Debug, Default)]
pub struct ProblemLog {
    logged: std::collections::BTreeSet<Problem>,
}

impl ProblemLog {
    /// The problems of `now` not logged yet; remembers `now` as logged.
    pub fn new_ones<'a>(&mut self, now: &'a [Problem]) -> Vec<&'a Problem> {
        let fresh = now.iter().filter(|p| !self.logged.contains(p)).collect();
        self.logged = now.iter().cloned().collect();
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_is_logged_once_and_again_only_after_it_went_away() {
        let p = |field: &str| Problem {
            object: "Service default/web".into(),
            field: field.into(),
            message: "not implemented".into(),
        };
        let mut log = ProblemLog::default();
        assert_eq!(log.new_ones(&[p("a")]).len(), 1);
        assert!(log.new_ones(&[p("a")]).is_empty());
        assert_eq!(log.new_ones(&[p("a"), p("b")]), [&p("b")]);
        assert!(log.new_ones(&[]).is_empty());
        assert_eq!(log.new_ones(&[p("a")]).len(), 1);
    }
}
