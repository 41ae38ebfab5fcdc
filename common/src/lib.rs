//! Types shared by ferry's kernel programs and its userspace: map keys and
//! values (`#[repr(C)]`, explicit padding, byte order documented per field),
//! map names, packet-outcome codes and the pure conntrack state machine that
//! the kernel runs and the host tests exercise.
//!
//! Every map key and value derives `bytemuck::Pod`, which fails to compile if
//! the type has implicit padding: the kernel hashes keys byte for byte, so an
//! uninitialised padding byte would make two equal keys different.
#![cfg_attr(not(feature = "std"), no_std)]

pub mod affinity;
pub mod conntrack;
pub mod csum;
pub mod maps;
pub mod new_flow;
pub mod outcome;
pub mod trace;

pub use maps::*;
