//! ferry's test harness. A node is a network namespace running one
//! `ferry-agent`; a pod is a network namespace wired in by the real
//! `ferry-cni` binary, invoked exactly as a container runtime would (CNI_*
//! environment, the conflist the agent wrote). Nodes of a multi-node cluster
//! share a [`Fabric`], a namespace with a bridge standing in for the L2
//! network between them. Everything is named per run and removed on drop,
//! also when a test fails; nothing is added to the root namespace.
//!
//! [`packet`] builds exact frames, for the kernel tests and the benchmark's
//! per-packet cost alike.
pub mod cgroup;
pub mod fabric;
pub mod manifest;
pub mod netns;
pub mod node;
pub mod packet;
pub mod plain;

pub use cgroup::Cgroup;
pub use fabric::Fabric;
pub use netns::{Netns, in_netns};
pub use node::{Binaries, Cluster, Node, Pod};
pub use plain::{PlainNode, PlainPod};
