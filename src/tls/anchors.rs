//! The trust anchors a proxy accepts: a bundle that may hold several, so
//! that a new anchor can be trusted before anything is signed under it and
//! the old one dropped once nothing chains to it. A new bundle replaces the
//! whole set atomically; each handshake reads the set in place when it starts.

use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::hash::Hash;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use std::sync::Arc;

#[derive(Debug)]
pub struct Anchors {
    pub roots: Arc<RootCertStore>,
    /// Checks a client's chain against `roots`; built once per bundle.
    pub clients: Arc<dyn ClientCertVerifier>,
    pub list: Vec<Anchor>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Anchor {
    pub subject: String,
    /// SHA-256 of the certificate (DER), lowercase hex: how tools name it.
    pub sha256: String,
    /// Unix seconds.
    pub not_after: i64,
    #[serde(skip)]
    der: CertificateDer<'static>,
}

impl Anchors {
    /// Every certificate in `pem` is an anchor; at least one is needed.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("invalid trust anchor PEM: {e}"))?;
        if certs.is_empty() {
            return Err("no certificate found in the trust anchors PEM".into());
        }
        let mut roots = RootCertStore::empty();
        let mut list = Vec::with_capacity(certs.len());
        for der in certs {
            let (_, parsed) = x509_parser::parse_x509_certificate(&der)
                .map_err(|e| format!("invalid trust anchor: {e}"))?;
            let digest = sha256().hash(&der);
            list.push(Anchor {
                subject: parsed.subject().to_string(),
                sha256: digest.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
                not_after: parsed.validity().not_after.timestamp(),
                der: der.clone(),
            });
            roots.add(der).map_err(|e| format!("invalid trust anchor: {e}"))?;
        }
        let roots = Arc::new(roots);
        let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), super::provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("client verifier: {e}"))?;
        Ok(Anchors { roots, clients, list })
    }

    /// The anchors `chain` (leaf first, then intermediates) leads to now.
    pub fn chained_to(&self, chain: &[CertificateDer<'_>]) -> Vec<&Anchor> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Vec::new();
        };
        let Ok(parsed) = ParsedCertificate::try_from(leaf) else {
            return Vec::new();
        };
        let algorithms = super::provider().signature_verification_algorithms.all;
        let now = UnixTime::now();
        self.list
            .iter()
            .filter(|anchor| {
                let mut one = RootCertStore::empty();
                one.add(anchor.der.clone()).is_ok()
                    && verify_server_cert_signed_by_trust_anchor(
                        &parsed,
                        &one,
                        intermediates,
                        now,
                        algorithms,
                    )
                    .is_ok()
            })
            .collect()
    }
}

/// The provider's SHA-256, reached through a TLS 1.3 suite that uses it.
fn sha256() -> &'static dyn Hash {
    let suite = rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256;
    suite.tls13().expect("a TLS 1.3 suite").common.hash_provider
}
