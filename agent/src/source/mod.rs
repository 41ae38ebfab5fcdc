//! Where the agent's Kubernetes objects come from. Every source feeds the
//! one agent loop through `Source`.
use std::{future::Future, time::Instant};

use crate::plan::{Objects, Problem};

pub mod file;
pub mod kube;

/// The objects as one source sees them at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub objects: Objects,
    /// Objects the source could not read (a bad YAML document).
    pub problems: Vec<Problem>,
    /// When the change that led here was noticed.
    pub seen: Instant,
}

pub trait Source {
    /// Names the source in logs ("kube", a file's path).
    fn name(&self) -> String;

    /// The next complete view of the objects: the first call waits until
    /// the source has all of them, later calls until something changed.
    /// Cancel-safe: a change noticed by a cancelled call is not lost.
    fn next(&mut self) -> impl Future<Output = Snapshot>;
}
