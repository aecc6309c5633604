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
            if let Err((field, e)) = tls::identity::certified_key_or_field(cert, key) {
                return Ok(Some((field, e)));
            }
            // What is left to refuse is the certificate's.
            if let Err(e) = identity.update(cert, key) {
                return Ok(Some(("cert", e)));
            }
            if let Some(reason) = refused_by_peers(&identity) {
                return Ok(Some(("cert", reason)));
            }
        }
        Ok(None)
    })
}

/// Why every peer would refuse the proxy's own certificate, if it would: it
/// names no workload, it has expired, or the trust anchors do not vouch for
/// it (a certificate from another CA, an issuer missing from the chain).
fn refused_by_peers(identity: &tls::identity::Identity) -> Option<String> {
    let current = identity.current()?;
    let leaf = current.key.cert.first()?;
    if let Err(e) = tls::verify::spiffe_id_or_why(leaf) {
        return Some(format!("names no workload: {e}"));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if current.not_after <= now {
        return Some("the certificate has expired".into());
    }
    if identity.anchors().chained_to(&current.key.cert).is_empty() {
        return Some("the certificate chains to none of the trust anchors".into());
    }
    None
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
