//! The typed exceptions that cross into Python. `meshcore` re-exports them.

use pyo3::create_exception;
use pyo3::exceptions::PyException;

create_exception!(
    _core,
    MeshcoreError,
    PyException,
    "Base class of every meshcore error."
);
create_exception!(_core, ConfigError, MeshcoreError, "The configuration is invalid.");
create_exception!(
    _core,
    BindError,
    MeshcoreError,
    "A listener could not bind its address."
);
create_exception!(
    _core,
    TlsError,
    MeshcoreError,
    "TLS material is missing or invalid."
);
create_exception!(
    _core,
    PluginError,
    MeshcoreError,
    "A plugin failed to load or run."
);
