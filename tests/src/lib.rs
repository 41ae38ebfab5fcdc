//! Test support: packet construction, kernel fixtures, and a stand-in
//! Kubernetes API server.
pub mod apiserver;
pub mod capture;
pub mod client;
pub mod fixture;
pub mod packet;
