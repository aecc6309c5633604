//! The workload certificate's gauges (no labels), each trust anchor's
//! expiry, and the TLS handshakes made by side and negotiated key exchange
//! group.

use super::text::{header, sample, Kind, Labels};
use crate::tls::identity::Identity;

pub(super) fn render(out: &mut String, identity: &Identity) {
    let not_after = identity.current().map_or(0, |c| c.not_after);
    header(
        out,
        "identity_cert_expiration_timestamp_seconds",
        Kind::Gauge,
        "When the workload certificate in use expires.",
    );
    sample(
        out,
        "identity_cert_expiration_timestamp_seconds",
        &Labels::new(),
        not_after,
    );
    header(
        out,
        "identity_cert_refresh_total",
        Kind::Counter,
        "Workload certificates installed.",
    );
    sample(
        out,
        "identity_cert_refresh_total",
        &Labels::new(),
        identity.refreshes(),
    );
    header(
        out,
        "identity_trust_anchor_expiration_timestamp_seconds",
        Kind::Gauge,
        "When each trust anchor this proxy accepts expires.",
    );
    for anchor in &identity.anchors().list {
        let labels = Labels::new()
            .with("subject", &anchor.subject)
            .with("sha256", &anchor.sha256);
        sample(
            out,
            "identity_trust_anchor_expiration_timestamp_seconds",
            &labels,
            anchor.not_after,
        );
    }
    header(
        out,
        "tls_handshakes_total",
        Kind::Counter,
        "Completed mesh TLS handshakes, by this proxy's side and the negotiated key exchange group.",
    );
    for (side, group, count) in identity.handshakes.snapshot() {
        let labels = Labels::new().with("side", side).with("group", group);
        sample(out, "tls_handshakes_total", &labels, count);
    }
}
