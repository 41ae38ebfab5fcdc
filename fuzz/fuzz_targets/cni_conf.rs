//! The CNI plugin's network configuration parser.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry_agent::fuzzing::cni_conf(data));
