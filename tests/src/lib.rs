//! Test support: packet construction and kernel fixtures.
pub mod fixture;
pub mod packet;
