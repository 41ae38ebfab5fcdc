//! The file source's manifest parser, then the planner on what it read.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry_agent::fuzzing::manifest(data));
