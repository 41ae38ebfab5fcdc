//! What the plan could not use, and where: every skipped object or field is
//! reported with its path, never dropped silently.
use std::fmt;

/// An object (or part of one) that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Problems of one object, so each call site names only the field.
pub struct ObjectProblems<'a> {
    pub object: String,
    pub sink: &'a mut Vec<Problem>,
}

impl ObjectProblems<'_> {
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.sink.push(Problem {
            object: self.object.clone(),
            field: field.into(),
            message: message.into(),
        });
    }
}
