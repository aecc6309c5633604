#![no_main]
//! See `meshcore::fuzzing::route` for the input format and the invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| meshcore::fuzzing::route(data));
