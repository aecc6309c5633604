//! This proxy's own workload identity: the current certificate and key, and
//! the trust anchors, each swapped atomically when Python rotates them.
//! Handshakes read the current ones; established connections keep the
//! session they negotiated.

use super::anchors::Anchors;
use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub struct Current {
    pub key: Arc<CertifiedKey>,
    pub spiffe_id: Option<String>,
    pub not_after: i64,
}

#[derive(Debug)]
pub struct Identity {
    anchors: ArcSwap<Anchors>,
    /// Client trust domains accepted; empty: the current certificate's.
    trust_domains: Vec<String>,
    current: ArcSwapOption<Current>,
    refreshes: AtomicU64,
    /// Both sides' handshakes with this identity, by key exchange group.
    pub handshakes: Arc<super::handshakes::Handshakes>,
}

fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("invalid certificate PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate found in PEM".into());
    }
    Ok(certs)
}

/// A certificate chain and its private key (PEM), loaded as a handshake
/// signs with them.
pub fn certified_key(chain_pem: &str, key_pem: &str) -> Result<CertifiedKey, String> {
    certified_key_or_field(chain_pem, key_pem).map_err(|(_, reason)| reason)
}

/// As `certified_key`; an error says which file is at fault, "cert" or "key"
/// (a pair that does not match is the key's: it is the one usually mixed up).
pub fn certified_key_or_field(
    chain_pem: &str,
    key_pem: &str,
) -> Result<CertifiedKey, (&'static str, String)> {
    let chain = parse_certs(chain_pem).map_err(|e| ("cert", e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| ("key", format!("invalid private key PEM: {e}")))?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|e| ("key", format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| ("key", format!("certificate and key do not match: {e}")))?;
    Ok(certified)
}

impl Identity {
    pub fn new(trust_anchors_pem: &str, trust_domains: Vec<String>) -> Result<Self, String> {
        Ok(Identity {
            anchors: ArcSwap::from_pointee(Anchors::from_pem(trust_anchors_pem)?),
            trust_domains,
            current: ArcSwapOption::empty(),
            refreshes: AtomicU64::new(0),
            handshakes: Arc::default(),
        })
    }

    /// Installs a new certificate chain and key (PEM).
    pub fn update(&self, chain_pem: &str, key_pem: &str) -> Result<(), String> {
        let certified = certified_key(chain_pem, key_pem)?;
        let (spiffe_id, not_after) = super::verify::describe(&certified.cert[0])?;
        self.current.store(Some(Arc::new(Current {
            key: Arc::new(certified),
            spiffe_id,
            not_after,
        })));
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Trusts exactly the anchors in `pem` from the next handshake on. A
    /// bundle the proxy's own certificate does not chain to is refused: with
    /// it, every peer in the mesh would refuse this proxy (a wrong file, or
    /// one caught half-written).
    pub fn set_anchors(&self, pem: &str) -> Result<(), String> {
        let anchors = Anchors::from_pem(pem)?;
        if let Some(current) = self.current() {
            if anchors.chained_to(&current.key.cert).is_empty() {
                return Err("the proxy's own certificate chains to none of these anchors".into());
            }
        }
        self.anchors.store(Arc::new(anchors));
        Ok(())
    }

    /// The anchors now; a handshake holds them while it verifies.
    pub fn anchors(&self) -> arc_swap::Guard<Arc<Anchors>> {
        self.anchors.load()
    }

    pub fn current(&self) -> Option<Arc<Current>> {
        self.current.load_full()
    }

    /// The trust domains whose workloads may call in: as configured, else
    /// the one this proxy's own certificate is in.
    pub fn trust_domains(&self) -> Vec<String> {
        if !self.trust_domains.is_empty() {
            return self.trust_domains.clone();
        }
        let own = self.current();
        let domain = own
            .as_ref()
            .and_then(|c| c.spiffe_id.as_deref())
            .and_then(|id| super::verify::parse_spiffe_id(id).ok());
        domain.map(str::to_string).into_iter().collect()
    }

    /// Certificates installed so far (the first counts as one).
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }
}

/// Presents the current certificate as a server and as a client.
#[derive(Debug)]
pub struct Resolver(pub Arc<Identity>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|c| c.key.clone())
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|c| c.key.clone())
    }

    fn has_certs(&self) -> bool {
        self.0.current().is_some()
    }
}
