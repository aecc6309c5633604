//! Completed TLS handshakes by side and by the key exchange group they
//! negotiated, so an operator can see that peers use the post-quantum
//! hybrid (X25519MLKEM768) and which ones fall back to X25519.

use rustls::crypto::SupportedKxGroup;
use rustls::NamedGroup;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The groups counted by name; any other is "other".
pub const GROUPS: [(NamedGroup, &str); 4] = [
    (NamedGroup::X25519MLKEM768, "X25519MLKEM768"),
    (NamedGroup::X25519, "X25519"),
    (NamedGroup::secp256r1, "secp256r1"),
    (NamedGroup::secp384r1, "secp384r1"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// This proxy accepted the connection (an inbound listener).
    Server,
    /// This proxy connected to an upstream proxy.
    Client,
}

pub const SIDES: [(Side, &str); 2] = [(Side::Server, "server"), (Side::Client, "client")];

#[derive(Debug, Default)]
pub struct Handshakes {
    /// [side][group], the last group being "other".
    counts: [[AtomicU64; GROUPS.len() + 1]; 2],
}

impl Handshakes {
    pub fn count(&self, side: Side, group: Option<&'static dyn SupportedKxGroup>) {
        let name = group.map(|g| g.name());
        let column = GROUPS
            .iter()
            .position(|(g, _)| Some(*g) == name)
            .unwrap_or(GROUPS.len());
        self.counts[side as usize][column].fetch_add(1, Relaxed);
    }

    /// (side, group, handshakes) for every side and group, "other" last.
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
        let names = GROUPS.iter().map(|(_, n)| *n).chain(["other"]);
        SIDES
            .iter()
            .flat_map(|(side, side_name)| {
                names
                    .clone()
                    .enumerate()
                    .map(move |(i, group)| (*side_name, group, self.counts[*side as usize][i].load(Relaxed)))
            })
            .collect()
    }
}
