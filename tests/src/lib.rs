//! Test support: packet construction and kernel fixtures.
pub mod client;
pub mod fixture;
pub mod packet;
