//! Peer verification by SPIFFE identity: the chain must lead to our trust
//! anchors, and (for upstreams) the URI SAN must be the identity we expect.
//! DNS names play no part, as in Linkerd.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;

/// The certificate's SPIFFE ID (see [`workload_id`]), and its expiry (unix seconds).
pub fn describe(cert: &CertificateDer<'_>) -> Result<(Option<String>, i64), String> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| format!("invalid certificate: {e}"))?;
    Ok((the_uri_san(&parsed).ok(), parsed.validity().not_after.timestamp()))
}

/// The certificate's SPIFFE ID, or why it names no workload.
pub fn spiffe_id_or_why(cert: &CertificateDer<'_>) -> Result<String, String> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| format!("invalid certificate: {e}"))?;
    the_uri_san(&parsed)
}

/// The one URI SAN, as a well-formed SPIFFE ID; a certificate naming two
/// workloads, or none, names no one.
fn the_uri_san(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<String, String> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subject alternative names: {e}"))?
        .ok_or("no URI SAN")?;
    let mut uris = san.value.general_names.iter().filter_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    let (Some(uri), None) = (uris.next(), uris.next()) else {
        return Err("not exactly one URI SAN".into());
    };
    parse_spiffe_id(uri)?;
    Ok(uri.to_string())
}

/// Checks a SPIFFE ID as the SPIFFE standard shapes it: `spiffe://`, a
/// trust domain of `[a-z0-9.-_]`, then one or more path segments of
/// `[A-Za-z0-9.-_]`, none empty, `.` or `..`. Returns the trust domain.
pub fn parse_spiffe_id(id: &str) -> Result<&str, String> {
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or_else(|| format!("{id:?} is not a SPIFFE ID"))?;
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    let domain_ok = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'));
    if !domain_ok {
        return Err(format!("{id:?} has an invalid trust domain"));
    }
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    };
    if path.is_empty() || !path.split('/').all(segment_ok) {
        return Err(format!("{id:?} has an invalid path"));
    }
    Ok(domain)
}

/// The workload a certificate names: exactly one URI SAN, a well-formed
/// SPIFFE ID, in one of `trust_domains`.
pub fn workload_id(cert: &CertificateDer<'_>, trust_domains: &[String]) -> Result<String, String> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| format!("invalid certificate: {e}"))?;
    let id = the_uri_san(&parsed)?;
    let domain = parse_spiffe_id(&id)?;
    if !trust_domains.iter().any(|d| d == domain) {
        return Err(format!(
            "{id} is outside the trust domain ({})",
            trust_domains.join(", ")
        ));
    }
    Ok(id)
}

pub fn spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    describe(cert).ok().and_then(|(id, _)| id)
}

/// A certificate error with our reason in it, for the handshake's log line.
fn refused(reason: String) -> Error {
    #[derive(Debug)]
    struct Refused(String);
    impl std::fmt::Display for Refused {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Refused {}
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Refused(reason)))))
}

/// Verifies a mesh client: a chain to our current trust anchors (webpki,
/// delegated), then exactly one well-formed SPIFFE ID in an accepted trust
/// domain. `mandatory` is false on permissive listeners.
#[derive(Debug)]
pub struct MeshClients {
    pub mandatory: bool,
    pub identity: Arc<super::identity::Identity>,
}

impl ClientCertVerifier for MeshClients {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    /// No hints: the anchors change while this verifier lives, and a mesh
    /// client holds one certificate anyway.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let anchors = self.identity.anchors();
        let verified = anchors
            .clients
            .verify_client_cert(end_entity, intermediates, now)?;
        let domains = self.identity.trust_domains();
        workload_id(end_entity, &domains).map_err(refused)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.identity
            .anchors()
            .clients
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.identity
            .anchors()
            .clients
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.identity.anchors().clients.supported_verify_schemes()
    }
}

/// Verifies an upstream proxy: trusted chain and exactly the expected identity.
#[derive(Debug)]
pub struct ExpectedIdentity {
    /// Whose current trust anchors the chain must lead to.
    pub identity: Arc<super::identity::Identity>,
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
            &self.identity.anchors().roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        match spiffe_id(end_entity) {
            Some(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            found => Err(refused(format!(
                "identity mismatch: expected {}, got {}",
                self.expected,
                found.as_deref().unwrap_or("no single SPIFFE identity")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_are_checked_as_the_standard_shapes_them() {
        assert_eq!(
            parse_spiffe_id("spiffe://mesh.local/ns/default/sa/web"),
            Ok("mesh.local")
        );
        for bad in [
            "https://mesh.local/ns/a",
            "spiffe://mesh.local",
            "spiffe://mesh.local/",
            "spiffe://mesh.local/ns//a",
            "spiffe://mesh.local/ns/../admin",
            "spiffe://mesh.local/ns/./a",
            "spiffe://Mesh.Local/ns/a",
            "spiffe:///ns/a",
            "spiffe://mesh.local/ns/a%2fb",
            "spiffe://mesh.local/ns/a?x=1",
            "spiffe://user@mesh.local/ns/a",
        ] {
            assert!(parse_spiffe_id(bad).is_err(), "{bad} was accepted");
        }
    }
}
