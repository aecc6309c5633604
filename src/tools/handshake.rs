//! Mesh TLS handshakes in memory, client and server on the calling thread,
//! for `bench/tls_handshake.py`: what the post-quantum hybrid group costs
//! against X25519, without sockets or a scheduler in the measurement.

use crate::tls::{self, identity::Identity};
use rustls::crypto::{aws_lc_rs, CryptoProvider, SupportedKxGroup};
use rustls::{ClientConnection, ServerConnection};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a client offers: one group by the name metrics use, or "default",
/// the mesh's own list (the hybrid first, its X25519 share sent beside it).
pub fn offer(name: &str) -> Option<Vec<&'static dyn SupportedKxGroup>> {
    match name {
        "X25519MLKEM768" => Some(vec![aws_lc_rs::kx_group::X25519MLKEM768]),
        "X25519" => Some(vec![aws_lc_rs::kx_group::X25519]),
        "default" => Some(aws_lc_rs::default_provider().kx_groups),
        _ => None,
    }
}

/// Full mutual-TLS handshakes between two holders of `chain_pem`/`key_pem`
/// (the client expects the server to be `expected`), the client offering
/// `offered`, for `duration`. Returns the handshakes completed and the
/// group the last one negotiated.
pub fn run(
    offered: Vec<&'static dyn SupportedKxGroup>,
    anchors_pem: &str,
    chain_pem: &str,
    key_pem: &str,
    expected: &str,
    duration: Duration,
) -> Result<(u64, String), String> {
    let identity = Arc::new(Identity::new(anchors_pem, Vec::new())?);
    identity.update(chain_pem, key_pem)?;
    let server = tls::server_config(&identity, true)?;
    let provider = CryptoProvider {
        kx_groups: offered,
        ..aws_lc_rs::default_provider()
    };
    let client = tls::client_config_with(&identity, expected, true, Arc::new(provider))?;
    let name = rustls_pki_types::ServerName::try_from("mesh.invalid").expect("a valid name");
    let until = Instant::now() + duration;
    let (mut done, mut negotiated) = (0u64, String::new());
    while done == 0 || Instant::now() < until {
        let mut c = ClientConnection::new(client.clone(), name.clone()).map_err(|e| e.to_string())?;
        let mut s = ServerConnection::new(server.clone()).map_err(|e| e.to_string())?;
        while c.is_handshaking() || s.is_handshaking() {
            shuttle(&mut c, &mut s)?;
            shuttle(&mut s, &mut c)?;
        }
        negotiated = c
            .negotiated_key_exchange_group()
            .map_or_else(String::new, |g| format!("{:?}", g.name()));
        done += 1;
    }
    Ok((done, negotiated))
}

/// Moves what `from` has to send into `to`, and lets `to` process it.
fn shuttle<A, B, DA, DB>(from: &mut A, to: &mut B) -> Result<(), String>
where
    A: std::ops::DerefMut<Target = rustls::ConnectionCommon<DA>>,
    B: std::ops::DerefMut<Target = rustls::ConnectionCommon<DB>>,
{
    let mut wire = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut wire).map_err(|e| e.to_string())?;
    }
    let mut rest = &wire[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest).map_err(|e| e.to_string())?;
        to.process_new_packets().map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_mesh_default_offers_the_hybrid_first() {
        let default = super::offer("default").unwrap();
        assert_eq!(default[0].name(), rustls::NamedGroup::X25519MLKEM768);
        assert!(default.iter().any(|g| g.name() == rustls::NamedGroup::X25519));
        assert!(super::offer("secp256r1").is_none());
    }
}
