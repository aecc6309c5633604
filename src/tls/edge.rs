//! TLS for an edge listener (`tls = "server"`): the listener's own
//! certificate, from any CA, and no client certificate asked for. Clients
//! outside the mesh may be older, so TLS 1.2 is taken beside 1.3.

use super::identity::certified_key_or_field;
use crate::config::ListenerProtocol;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::sync::Arc;

/// The server config of an edge listener, from its certificate chain and key
/// (PEM); an error names the file at fault, "cert" or "key". ALPN offers what
/// the listener serves, so a pinned protocol is not overridden by the client.
pub fn server_config(
    chain_pem: &str,
    key_pem: &str,
    protocol: ListenerProtocol,
) -> Result<Arc<ServerConfig>, (&'static str, String)> {
    let key = Arc::new(certified_key_or_field(chain_pem, key_pem)?);
    let mut config = ServerConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("cert", e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(key)));
    config.alpn_protocols = match protocol {
        ListenerProtocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        ListenerProtocol::Http2 => vec![b"h2".to_vec()],
        ListenerProtocol::Http1 => vec![b"http/1.1".to_vec()],
        ListenerProtocol::Opaque => Vec::new(),
    };
    Ok(Arc::new(config))
}

/// Presents the one certificate, whatever name the client asks for.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}
