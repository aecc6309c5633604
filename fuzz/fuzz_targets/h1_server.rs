#![no_main]
//! See `meshcore::fuzzing::h1_server` for the input format and the invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| meshcore::fuzzing::h1_server(data));
