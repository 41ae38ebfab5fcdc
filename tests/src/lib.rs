//! Test support: packet construction, kernel fixtures, captures and
//! clients. The Kubernetes API server stand-in is its own crate
//! (`ferry-apiserver-standin`), whose tests need no privileges.
pub mod capture;
pub mod client;
pub mod fixture;
pub mod fuzz;
pub mod metrics;
pub mod service_cidrs;
pub mod spoofing;
/// The packet builder lives in the harness so that the benchmark builds its
/// frames with the same code; the kernel tests keep their `ferry_tests::packet`.
pub use ferry_harness::packet;
