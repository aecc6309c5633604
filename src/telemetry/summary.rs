//! One request as access logs, tap, traces and the plugins' `on_log` see it,
//! gathered as its response streams and complete when the response ends.

use super::text;
use super::trace::TraceId;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

#[derive(Debug, Clone)]
pub struct Summary {
    /// When the request's head arrived.
    pub start: SystemTime,
    /// The listener it arrived on, and the client's address there.
    pub listener: Arc<str>,
    pub client: Option<SocketAddr>,
    pub version: http::Version,
    pub method: http::Method,
    /// Path and query, as the app receives them.
    pub path: String,
    pub authority: String,
    /// None when no route (or no service) was reached. Names are shared
    /// with the config: a summary costs no allocation for them.
    pub route: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
    /// The endpoint that answered and its zone; None when the proxy
    /// answered itself.
    pub endpoint: Option<SocketAddr>,
    pub zone: Option<Arc<str>>,
    pub status: u16,
    pub grpc_status: Option<u32>,
    /// A 5xx, an error, a gRPC error, or a body cut short.
    pub failed: bool,
    pub duration_ms: f64,
    pub ttfb_ms: f64,
    pub response_bytes: u64,
    pub retried: bool,
    /// The client's verified SPIFFE ID (mTLS).
    pub identity: Option<String>,
    /// The W3C trace the request belongs to, when it has one.
    pub trace_id: Option<TraceId>,
}

impl Default for Summary {
    fn default() -> Self {
        Summary {
            start: SystemTime::UNIX_EPOCH,
            listener: Arc::from(""),
            client: None,
            version: http::Version::HTTP_11,
            method: http::Method::GET,
            path: String::new(),
            authority: String::new(),
            route: None,
            service: None,
            endpoint: None,
            zone: None,
            status: 0,
            grpc_status: None,
            failed: false,
            duration_ms: 0.0,
            ttfb_ms: 0.0,
            response_bytes: 0,
            retried: false,
            identity: None,
            trace_id: None,
        }
    }
}

impl Summary {
    pub fn route_name(&self) -> &str {
        self.route.as_deref().unwrap_or("")
    }

    pub fn service_name(&self) -> &str {
        self.service.as_deref().unwrap_or("")
    }

    /// The summary as one JSON object and a newline, keys in a fixed order
    /// (access logs' `json` format, tap's JSON lines). Empty names are null.
    /// Written by hand, straight into `out`: this runs once per request.
    pub fn json_line(&self, out: &mut Vec<u8>) {
        let mut json = Json(out);
        json.key("{", "time");
        json.raw("\"");
        text::rfc3339_millis(self.start, json.0);
        json.raw("\"");
        json.key(",", "listener");
        json.string(&self.listener);
        json.key(",", "client");
        match self.client {
            Some(addr) => json.addr(addr),
            None => json.raw("null"),
        }
        json.key(",", "method");
        json.string(self.method.as_str());
        json.key(",", "path");
        json.string(&self.path);
        json.key(",", "protocol");
        json.string(protocol(self.version));
        json.key(",", "authority");
        json.name(&self.authority);
        json.key(",", "status");
        json.int(self.status.into());
        json.key(",", "grpc_status");
        match self.grpc_status {
            Some(code) => json.int(code.into()),
            None => json.raw("null"),
        }
        json.key(",", "failed");
        json.bool(self.failed);
        json.key(",", "duration_ms");
        text::millis3(self.duration_ms, json.0);
        json.key(",", "ttfb_ms");
        text::millis3(self.ttfb_ms, json.0);
        json.key(",", "bytes");
        json.int(self.response_bytes);
        json.key(",", "route");
        json.name(self.route_name());
        json.key(",", "service");
        json.name(self.service_name());
        json.key(",", "endpoint");
        match self.endpoint {
            Some(addr) => json.addr(addr),
            None => json.raw("null"),
        }
        json.key(",", "zone");
        json.name(self.zone.as_deref().unwrap_or(""));
        json.key(",", "identity");
        json.name(self.identity.as_deref().unwrap_or(""));
        json.key(",", "trace_id");
        match self.trace_id {
            Some(id) => {
                json.raw("\"");
                json.raw(id.to_hex(&mut [0; 32]));
                json.raw("\"");
            }
            None => json.raw("null"),
        }
        json.key(",", "retried");
        json.bool(self.retried);
        json.raw("}\n");
    }
}

/// A JSON writer for one flat object.
struct Json<'a>(&'a mut Vec<u8>);

// Inlined: most of what they write is a constant, copied without a call.
impl Json<'_> {
    #[inline(always)]
    fn raw(&mut self, text: &str) {
        self.0.extend_from_slice(text.as_bytes());
    }

    #[inline(always)]
    fn key(&mut self, before: &str, key: &str) {
        self.raw(before);
        self.raw("\"");
        self.raw(key);
        self.raw("\":");
    }

    fn string(&mut self, text: &str) {
        let plain = text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
        match plain {
            true => {
                self.raw("\"");
                self.raw(text);
                self.raw("\"");
            }
            // Writing plain data into a Vec cannot fail.
            false => drop(serde_json::to_writer(&mut *self.0, text)),
        }
    }

    /// A name, or null when it is empty.
    fn name(&mut self, text: &str) {
        match text.is_empty() {
            true => self.raw("null"),
            false => self.string(text),
        }
    }

    fn int(&mut self, n: u64) {
        self.raw(itoa::Buffer::new().format(n));
    }

    fn bool(&mut self, b: bool) {
        self.raw(if b { "true" } else { "false" });
    }

    fn addr(&mut self, addr: SocketAddr) {
        // No character of an address needs escaping.
        self.raw("\"");
        text::push_addr(addr, self.0);
        self.raw("\"");
    }
}

/// "HTTP/1.1", "HTTP/2": as access logs name the protocol.
pub fn protocol(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_json_line_has_its_keys_in_order_and_nulls_for_empty_names() {
        let summary = Summary {
            start: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_651_199_042),
            listener: "outbound".into(),
            client: Some("127.0.0.1:5000".parse().unwrap()),
            method: http::Method::GET,
            path: "/a?\"b\"\n".into(),
            authority: "web.local".into(),
            status: 200,
            duration_ms: 1.23456,
            ..Default::default()
        };
        let mut out = Vec::new();
        summary.json_line(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("}\n") && text.matches('\n').count() == 1, "{text}");
        assert!(
            text.starts_with(
                r#"{"time":"2026-11-25T23:59:59.042Z","listener":"outbound","client":"127.0.0.1:5000","method":"GET","path":"/a?\"b\"\n","protocol":"HTTP/1.1","authority":"web.local","status":200,"grpc_status":null,"failed":false,"duration_ms":1.235,"#
            ),
            "{text}"
        );
        assert!(text.contains(r#""route":null,"service":null"#), "{text}");
    }

    #[test]
    fn a_full_json_line_parses_back_to_every_field() {
        let trace = TraceId::from_bytes([0x4b; 16]).unwrap();
        let summary = Summary {
            start: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_651_199_042),
            listener: "in\u{1}\"bound\\".into(),
            client: Some("[2001:db8::1]:5000".parse().unwrap()),
            version: http::Version::HTTP_2,
            method: http::Method::from_bytes(b"PURGE").unwrap(),
            path: "/é?q=\t".into(),
            authority: "web.local:80".into(),
            route: Some("r\u{7f}".into()),
            service: Some("svc".into()),
            endpoint: Some("10.0.0.7:8080".parse().unwrap()),
            zone: Some("zone-a".into()),
            status: 503,
            grpc_status: Some(14),
            failed: true,
            duration_ms: 12.0,
            ttfb_ms: 0.0004,
            response_bytes: u64::MAX,
            retried: true,
            identity: Some("spiffe://mesh.local/ns/a/sa/b".into()),
            trace_id: Some(trace),
        };
        let mut out = Vec::new();
        summary.json_line(&mut out);
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let expected = serde_json::json!({
            "time": "2026-11-25T23:59:59.042Z",
            "listener": "in\u{1}\"bound\\",
            "client": "[2001:db8::1]:5000",
            "method": "PURGE",
            "path": "/é?q=\t",
            "protocol": "HTTP/2",
            "authority": "web.local:80",
            "status": 503,
            "grpc_status": 14,
            "failed": true,
            "duration_ms": 12.0,
            "ttfb_ms": 0.0,
            "bytes": u64::MAX,
            "route": "r\u{7f}",
            "service": "svc",
            "endpoint": "10.0.0.7:8080",
            "zone": "zone-a",
            "identity": "spiffe://mesh.local/ns/a/sa/b",
            "trace_id": "4b".repeat(16),
            "retried": true,
        });
        assert_eq!(line, expected);
        let text = String::from_utf8(out).unwrap();
        let order = [
            "time",
            "listener",
            "client",
            "method",
            "path",
            "protocol",
            "authority",
            "status",
            "grpc_status",
            "failed",
            "duration_ms",
            "ttfb_ms",
            "bytes",
            "route",
            "service",
            "endpoint",
            "zone",
            "identity",
            "trace_id",
            "retried",
        ];
        let at: Vec<usize> = order
            .iter()
            .map(|k| text.find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "keys in order: {text}");
    }
}
