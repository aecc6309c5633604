//! What `_core` exposes to Python: the proxy handle, the typed exceptions,
//! the identity check, the plugin families' renderer and the measuring
//! tools. `lib.rs` registers them; the ideas live in the other modules.

pub mod errors;
pub mod handover;
pub mod identity;
pub mod metrics;
pub mod policy;
pub mod proxy_core;
pub mod tap;
pub mod tools;

use errors::MeshcoreError;
use pyo3::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `f`, turning a Rust panic into a MeshcoreError instead of letting it
/// reach the interpreter.
pub(crate) fn guarded<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        Err(MeshcoreError::new_err(format!(
            "internal error (Rust panic): {msg}"
        )))
    })
}

/// Proves the panic boundary: panics inside Rust and must surface as MeshcoreError.
#[pyfunction]
pub fn _panic_for_test() -> PyResult<()> {
    guarded(|| panic!("deliberate test panic"))
}
