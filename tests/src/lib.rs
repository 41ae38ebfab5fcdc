//! Test support: packet construction, kernel fixtures, and a stand-in
//! Kubernetes API server.
pub mod apiserver;
pub mod capture;
pub mod client;
pub mod fixture;
/// The packet builder lives in the harness so that the benchmark builds its
/// frames with the same code; the kernel tests keep their `ferry_tests::packet`.
pub use ferry_harness::packet;
