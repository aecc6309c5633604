//! One request as access logs, tap, traces and the plugins' `on_log` see it,
//! gathered as its response streams and complete when the response ends.

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
    pub method: String,
    /// Path and query, as the app receives them.
    pub path: String,
    pub authority: String,
    /// Empty when no route (or no service) was reached.
    pub route: String,
    pub service: String,
    /// The endpoint that answered ("ip:port") and its zone; empty when the
    /// proxy answered itself.
    pub endpoint: String,
    pub zone: String,
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
    /// The W3C trace the request belongs to, as 32 hex digits, when it has one.
    pub trace_id: Option<String>,
}

impl Default for Summary {
    fn default() -> Self {
        Summary {
            start: SystemTime::UNIX_EPOCH,
            listener: Arc::from(""),
            client: None,
            version: http::Version::HTTP_11,
            method: String::new(),
            path: String::new(),
            authority: String::new(),
            route: String::new(),
            service: String::new(),
            endpoint: String::new(),
            zone: String::new(),
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
    /// The summary as one JSON object and a newline, keys in a fixed order
    /// (access logs' `json` format, tap's JSON lines). Empty names are null.
    pub fn json_line(&self, out: &mut Vec<u8>) {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let line = JsonLine {
            time: rfc3339_millis(self.start),
            listener: &self.listener,
            client: self.client.map(|c| c.to_string()),
            method: &self.method,
            path: &self.path,
            protocol: protocol(self.version),
            authority: some(&self.authority),
            status: self.status,
            grpc_status: self.grpc_status,
            failed: self.failed,
            duration_ms: round3(self.duration_ms),
            ttfb_ms: round3(self.ttfb_ms),
            bytes: self.response_bytes,
            route: some(&self.route),
            service: some(&self.service),
            endpoint: some(&self.endpoint),
            zone: some(&self.zone),
            identity: self.identity.as_deref(),
            trace_id: self.trace_id.as_deref(),
            retried: self.retried,
        };
        // Writing plain data into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &line);
        out.push(b'\n');
    }
}

#[derive(serde::Serialize)]
struct JsonLine<'a> {
    time: String,
    listener: &'a str,
    client: Option<String>,
    method: &'a str,
    path: &'a str,
    protocol: &'static str,
    authority: Option<String>,
    status: u16,
    grpc_status: Option<u32>,
    failed: bool,
    duration_ms: f64,
    ttfb_ms: f64,
    bytes: u64,
    route: Option<String>,
    service: Option<String>,
    endpoint: Option<String>,
    zone: Option<String>,
    identity: Option<&'a str>,
    trace_id: Option<&'a str>,
    retried: bool,
}

fn round3(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
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

/// RFC 3339 in UTC with milliseconds: "2026-12-03T09:41:07.123Z".
pub fn rfc3339_millis(t: SystemTime) -> String {
    let (c, millis) = crate::time::civil::Civil::at(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second, millis
    )
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
            method: "GET".into(),
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
}
