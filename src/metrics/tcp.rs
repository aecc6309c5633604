//! TCP families, per listener: connections opened, closed and open, bytes
//! each way, and connections refused or cut off by reason.

use super::family::{series, snapshot};
use super::text::{header, sample, Kind};
use super::{Metrics, TcpLabels};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

#[derive(Default, Debug)]
pub struct TcpSeries {
    pub open_total: AtomicU64,
    pub close_total: AtomicU64,
    pub open: AtomicI64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    /// By `ConnEvent`, rendered as `tcp_errors_total{error=...}`.
    events: [AtomicU64; ConnEvent::ALL.len()],
    /// A transparent listener's connections to addresses outside the mesh,
    /// passed through or refused by the egress policy.
    pub passthrough_allowed: AtomicU64,
    pub passthrough_denied: AtomicU64,
}

/// Why a connection was refused or cut off. Every such event is counted
/// here; the log line about it is rate-limited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnEvent {
    /// Over `max_connections` with no idle connection to close.
    Refused,
    /// An idle connection closed to make room (or descriptors ran out).
    Evicted,
    /// accept() failed for lack of file descriptors.
    AcceptExhausted,
    TlsHandshakeFailed,
    /// The client's certificate is not one the mesh accepts.
    TlsIdentityRefused,
    /// Plaintext on a `tls = "mesh"` listener.
    PlaintextRefused,
    /// No HTTP/2 preface and SETTINGS within the header read timeout.
    PrefaceTimeout,
    /// An HTTP/2 connection error (GOAWAY with an error code).
    Http2Protocol,
    /// An HTTP/2 client cut off for abuse (GOAWAY ENHANCE_YOUR_CALM).
    Http2Abuse,
    /// A request head hyper could not parse (answered 400 or 431).
    Http1Malformed,
    /// A request head not finished within the header read timeout (slowloris).
    Http1HeaderTimeout,
}

impl ConnEvent {
    const ALL: [ConnEvent; 11] = [
        ConnEvent::Refused,
        ConnEvent::Evicted,
        ConnEvent::AcceptExhausted,
        ConnEvent::TlsHandshakeFailed,
        ConnEvent::TlsIdentityRefused,
        ConnEvent::PlaintextRefused,
        ConnEvent::PrefaceTimeout,
        ConnEvent::Http2Protocol,
        ConnEvent::Http2Abuse,
        ConnEvent::Http1Malformed,
        ConnEvent::Http1HeaderTimeout,
    ];

    fn label(self) -> &'static str {
        match self {
            ConnEvent::Refused => "max_connections_refused",
            ConnEvent::Evicted => "max_connections_evicted",
            ConnEvent::AcceptExhausted => "accept_no_descriptors",
            ConnEvent::TlsHandshakeFailed => "tls_handshake_failed",
            ConnEvent::TlsIdentityRefused => "tls_identity_refused",
            ConnEvent::PlaintextRefused => "tls_plaintext_refused",
            ConnEvent::PrefaceTimeout => "http2_preface_timeout",
            ConnEvent::Http2Protocol => "http2_protocol_error",
            ConnEvent::Http2Abuse => "http2_enhance_your_calm",
            ConnEvent::Http1Malformed => "http1_malformed",
            ConnEvent::Http1HeaderTimeout => "http1_header_timeout",
        }
    }
}

impl TcpSeries {
    pub fn count(&self, event: ConnEvent) {
        self.events[event as usize].fetch_add(1, Relaxed);
    }

    pub fn events(&self, event: ConnEvent) -> u64 {
        self.events[event as usize].load(Relaxed)
    }
}

impl Metrics {
    pub fn tcp(&self, labels: &TcpLabels) -> Arc<TcpSeries> {
        series(&self.tcp, labels)
    }

    pub(super) fn render_tcp(&self, out: &mut String) {
        let tcp: Vec<_> = snapshot(&self.tcp)
            .into_iter()
            .map(|(l, s)| (l.labels(), s))
            .collect();
        type Field = fn(&TcpSeries) -> i64;
        let families: [(&str, Kind, &str, Field); 5] = [
            ("tcp_open_total", Kind::Counter, "Connections accepted.", |s| {
                s.open_total.load(Relaxed) as i64
            }),
            ("tcp_close_total", Kind::Counter, "Connections closed.", |s| {
                s.close_total.load(Relaxed) as i64
            }),
            (
                "tcp_open_connections",
                Kind::Gauge,
                "Connections currently open.",
                |s| s.open.load(Relaxed),
            ),
            (
                "tcp_read_bytes_total",
                Kind::Counter,
                "Bytes read from clients.",
                |s| s.read_bytes.load(Relaxed) as i64,
            ),
            (
                "tcp_write_bytes_total",
                Kind::Counter,
                "Bytes written to clients.",
                |s| s.write_bytes.load(Relaxed) as i64,
            ),
        ];
        for (name, kind, help, field) in families {
            header(out, name, kind, help);
            for (labels, s) in &tcp {
                sample(out, name, labels, field(s));
            }
        }
        header(
            out,
            "tcp_errors_total",
            Kind::Counter,
            "Connections refused or cut off, by reason.",
        );
        for (labels, s) in &tcp {
            for event in ConnEvent::ALL {
                let n = s.events(event);
                if n > 0 {
                    let labels = labels.clone().with("error", event.label());
                    sample(out, "tcp_errors_total", &labels, n);
                }
            }
        }
        header(
            out,
            "tcp_passthrough_total",
            Kind::Counter,
            "Redirected connections to addresses outside the mesh, by the egress policy's decision.",
        );
        for (labels, s) in &tcp {
            for (decision, n) in [
                ("allowed", &s.passthrough_allowed),
                ("denied", &s.passthrough_denied),
            ] {
                let n = n.load(Relaxed);
                if n > 0 {
                    sample(
                        out,
                        "tcp_passthrough_total",
                        &labels.clone().with("decision", decision),
                        n,
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Scrape;

    #[test]
    fn connection_events_are_counted_by_reason_and_only_when_seen() {
        let m = Metrics::default();
        let labels = TcpLabels {
            direction: "inbound".into(),
            listener: "in\"bound".into(),
        };
        let s = m.tcp(&labels);
        s.open_total.fetch_add(2, Relaxed);
        s.open.fetch_add(1, Relaxed);
        s.count(ConnEvent::PlaintextRefused);
        s.count(ConnEvent::PlaintextRefused);
        let text = m.render(&Scrape::default());
        assert!(
            text.contains("tcp_open_total{direction=\"inbound\",listener=\"in\\\"bound\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("tcp_open_connections{direction=\"inbound\",listener=\"in\\\"bound\"} 1\n"));
        assert!(text.contains(
            "tcp_errors_total{direction=\"inbound\",listener=\"in\\\"bound\",error=\"tls_plaintext_refused\"} 2\n"
        ));
        assert_eq!(text.matches("tcp_errors_total{").count(), 1, "{text}");
    }
}
