#![no_main]
//! See `meshcore::fuzzing::hpack_decode` for the input format and the invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| meshcore::fuzzing::hpack_decode(data));
