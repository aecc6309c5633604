//! rustls configs for mesh traffic: TLS 1.3 only, mutual authentication by
//! SPIFFE identity, certificates that rotate without a restart, and the
//! post-quantum hybrid key exchange preferred. Edge listeners (`edge`) serve
//! a certificate of their own to clients outside the mesh.

pub mod anchors;
pub mod edge;
pub mod handshakes;
pub mod identity;
pub mod verify;

use identity::{Identity, Resolver};
use rustls::{ClientConfig, ServerConfig};
use std::sync::Arc;

pub use identity::Current;

/// aws-lc-rs (FIPS-capable; the `fips` feature builds its FIPS module): its
/// key exchange groups put X25519MLKEM768 first, and a client sends an
/// X25519 share beside it, so a peer without ML-KEM answers with X25519 at
/// no extra round trip.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Server side of a meshed listener. `require_client_cert` is false for
/// permissive listeners, which also take callers without a certificate.
pub fn server_config(
    identity: &Arc<Identity>,
    require_client_cert: bool,
) -> Result<Arc<ServerConfig>, String> {
    let verifier = Arc::new(verify::MeshClients {
        mandatory: require_client_cert,
        identity: identity.clone(),
    });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Resolver(identity.clone())));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Client side towards one upstream proxy whose identity must be `expected`.
pub fn client_config(
    identity: &Arc<Identity>,
    expected: &str,
    alpn_h2: bool,
) -> Result<Arc<ClientConfig>, String> {
    client_config_with(identity, expected, alpn_h2, provider())
}

/// `client_config` with another provider (the handshake bench limits its groups).
pub fn client_config_with(
    identity: &Arc<Identity>,
    expected: &str,
    alpn_h2: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<ClientConfig>, String> {
    let verifier = verify::ExpectedIdentity {
        identity: identity.clone(),
        expected: expected.to_string(),
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(Resolver(identity.clone())));
    config.alpn_protocols = if alpn_h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(config))
}
