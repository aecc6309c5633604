//! The label sets series are kept under. Each family's renderer writes them
//! in the order Linkerd's dashboards expect.

use super::text::Labels;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    pub direction: Arc<str>,
    pub authority: http::HeaderValue,
    pub dst_service: Arc<str>,
    pub dst_zone: Arc<str>,
    pub cross_zone: bool,
    pub tls: TlsLabel,
    /// The route's name; empty before one is found.
    pub route: Arc<str>,
}

impl RequestLabels {
    /// The same labels, holding no part of a message they were taken from.
    pub(super) fn detached(&self) -> Self {
        let authority = http::HeaderValue::from_bytes(self.authority.as_bytes())
            .expect("a header value's bytes are a valid header value");
        RequestLabels {
            authority,
            ..self.clone()
        }
    }

    pub(super) fn labels(&self) -> Labels {
        Labels::new()
            .with("direction", &self.direction)
            .with("authority", self.authority.to_str().unwrap_or_default())
            .with("tls", self.tls.as_str())
            .with("dst_service", &self.dst_service)
            .with("dst_zone", &self.dst_zone)
            .with("cross_zone", if self.cross_zone { "true" } else { "false" })
            .with("route", &self.route)
    }
}

/// The `tls` label, as Linkerd spells it; one byte in every request's labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlsLabel {
    /// mTLS with a client identity.
    True,
    NoIdentity,
    False,
}

impl TlsLabel {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsLabel::True => "true",
            TlsLabel::NoIdentity => "no_identity",
            TlsLabel::False => "false",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AuthzLabels {
    pub listener: Arc<str>,
    pub rule: Arc<str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteLabels {
    pub direction: Arc<str>,
    pub route: Arc<str>,
    pub dst_service: Arc<str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResponseLabels {
    pub request: RequestLabels,
    pub status_code: u16,
    /// A gRPC response's `grpc-status`; the label is left out for others.
    pub grpc_status: Option<u32>,
    pub classification: &'static str,
}

impl ResponseLabels {
    pub(super) fn labels(&self) -> Labels {
        let mut labels = self
            .request
            .labels()
            .with("status_code", &self.status_code.to_string());
        if let Some(grpc) = self.grpc_status {
            labels.push("grpc_status", &grpc.to_string());
        }
        labels.with("classification", self.classification)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TcpLabels {
    pub direction: Arc<str>,
    pub listener: Arc<str>,
}

impl TcpLabels {
    pub(super) fn labels(&self) -> Labels {
        Labels::new()
            .with("direction", &self.direction)
            .with("listener", &self.listener)
    }
}
