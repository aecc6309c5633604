//! Peer verification by SPIFFE identity: the chain must lead to our trust
//! anchors, and (for upstreams) the URI SAN must be the identity we expect.
//! DNS names play no part, as in Linkerd.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;

/// The first URI SAN starting with spiffe://, and the expiry (unix seconds).
pub fn describe(cert: &CertificateDer<'_>) -> Result<(Option<String>, i64), String> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| format!("invalid certificate: {e}"))?;
    Ok((spiffe_of(&parsed), parsed.validity().not_after.timestamp()))
}

fn spiffe_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
            Some(uri.to_string())
        }
        _ => None,
    })
}

pub fn spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    describe(cert).ok().and_then(|(id, _)| id)
}

/// Verifies an upstream proxy: trusted chain and exactly the expected identity.
#[derive(Debug)]
pub struct ExpectedIdentity {
    pub roots: Arc<RootCertStore>,
    pub expected: String,
    pub algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ExpectedIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        match spiffe_id(end_entity) {
            Some(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            found => Err(Error::General(format!(
                "identity mismatch: expected {}, got {}",
                self.expected,
                found.as_deref().unwrap_or("no SPIFFE identity")
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
