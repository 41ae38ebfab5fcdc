//! Where the agent's Kubernetes objects come from.
pub mod file;
pub mod kube;
