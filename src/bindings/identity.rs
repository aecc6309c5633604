//! The identity check `meshcore check` runs without starting a proxy.

use super::guarded;
use crate::tls;
use pyo3::prelude::*;

/// Loads identity PEMs as the data plane will at start, without starting:
/// (field, reason) for what it refuses, else None. `meshcore check` uses it
/// so that it refuses exactly what `run` would, without loading OpenSSL.
#[pyfunction]
#[pyo3(signature = (trust_anchors_pem, cert_pem=None, key_pem=None))]
pub fn check_identity(
    trust_anchors_pem: &str,
    cert_pem: Option<&str>,
    key_pem: Option<&str>,
) -> PyResult<Option<(&'static str, String)>> {
    guarded(|| {
        let identity = match tls::identity::Identity::new(trust_anchors_pem, Vec::new()) {
            Ok(identity) => identity,
            Err(e) => return Ok(Some(("trust_anchors", e))),
        };
        if let (Some(cert), Some(key)) = (cert_pem, key_pem) {
            if let Err(e) = identity.update(cert, key) {
                let field = if e.contains("key") { "key" } else { "cert" };
                return Ok(Some((field, e)));
            }
        }
        Ok(None)
    })
}

/// Loads an edge listener's certificate and key as its TLS server will:
/// (field, reason) for what it refuses ("cert" or "key"), else None.
#[pyfunction]
pub fn check_server_certificate(cert_pem: &str, key_pem: &str) -> PyResult<Option<(&'static str, String)>> {
    guarded(|| {
        let protocol = crate::config::ListenerProtocol::Auto; // ALPN does not change what loads
        Ok(tls::edge::server_config(cert_pem, key_pem, protocol).err())
    })
}
