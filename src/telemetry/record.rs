//! A finished request as the request path hands it to the telemetry threads:
//! its summary (and span), packed into bytes. Packing is a few copies; the
//! access log writer and the span exporter unpack and format on their own
//! threads, so a request pays neither for JSON nor for protobuf.

use super::trace::{SpanId, TraceId};
use super::tracer::SpanStart;
use super::Summary;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

// Which optional parts a record holds (its first byte, and its second).
const FAILED: u8 = 1;
const RETRIED: u8 = 1 << 1;
const GRPC_STATUS: u8 = 1 << 2;
const CLIENT: u8 = 1 << 3;
const ENDPOINT: u8 = 1 << 4;
const TRACE_ID: u8 = 1 << 5;
const SPAN: u8 = 1 << 6;
const IDENTITY: u8 = 1 << 7;
const ROUTE: u8 = 1;
const SERVICE: u8 = 1 << 1;
const ZONE: u8 = 1 << 2;
const SPAN_PARENT: u8 = 1 << 3;
const SPAN_SERVER: u8 = 1 << 4;
const SPAN_EXPORT: u8 = 1 << 5;

/// Appends `summary` (and `span`) to `out` as one record.
pub fn pack(summary: &Summary, span: Option<&SpanStart>, out: &mut Vec<u8>) {
    let flags = [
        (summary.failed, FAILED),
        (summary.retried, RETRIED),
        (summary.grpc_status.is_some(), GRPC_STATUS),
        (summary.client.is_some(), CLIENT),
        (summary.endpoint.is_some(), ENDPOINT),
        (summary.trace_id.is_some(), TRACE_ID),
        (span.is_some(), SPAN),
        (summary.identity.is_some(), IDENTITY),
    ];
    let more = [
        (summary.route.is_some(), ROUTE),
        (summary.service.is_some(), SERVICE),
        (summary.zone.is_some(), ZONE),
        (span.is_some_and(|s| s.parent.is_some()), SPAN_PARENT),
        (span.is_some_and(|s| s.server), SPAN_SERVER),
        (span.is_some_and(|s| s.export), SPAN_EXPORT),
    ];
    let bits = |set: &[(bool, u8)]| set.iter().filter(|(on, _)| *on).fold(0, |a, (_, b)| a | b);
    out.extend_from_slice(&[bits(&flags), bits(&more), version_code(summary.version)]);
    out.extend_from_slice(&summary.status.to_le_bytes());
    out.extend_from_slice(&summary.grpc_status.unwrap_or(0).to_le_bytes());
    let since_epoch = summary
        .start
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    out.extend_from_slice(&since_epoch.as_secs().to_le_bytes());
    out.extend_from_slice(&since_epoch.subsec_nanos().to_le_bytes());
    out.extend_from_slice(&summary.duration_ms.to_le_bytes());
    out.extend_from_slice(&summary.ttfb_ms.to_le_bytes());
    out.extend_from_slice(&summary.response_bytes.to_le_bytes());
    for addr in [summary.client, summary.endpoint].into_iter().flatten() {
        pack_addr(addr, out);
    }
    if let Some(id) = summary.trace_id {
        out.extend_from_slice(&id.to_bytes());
    }
    if let Some(span) = span {
        out.extend_from_slice(&span.trace_id.to_bytes());
        out.extend_from_slice(&span.span_id.to_bytes());
        if let Some(parent) = span.parent {
            out.extend_from_slice(&parent.to_bytes());
        }
    }
    let texts = [
        Some(&*summary.listener),
        Some(summary.method.as_str()),
        Some(&*summary.path),
        Some(&*summary.authority),
        summary.route.as_deref(),
        summary.service.as_deref(),
        summary.zone.as_deref(),
        summary.identity.as_deref(),
    ];
    // Lengths first, then the texts back to back: the unpacker checks all of
    // it is UTF-8 in one go.
    for text in texts.into_iter().flatten() {
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    }
    for text in texts.into_iter().flatten() {
        out.extend_from_slice(text.as_bytes());
    }
}

fn pack_addr(addr: SocketAddr, out: &mut Vec<u8>) {
    match addr {
        SocketAddr::V4(v4) => {
            out.push(4);
            out.extend_from_slice(&v4.ip().octets());
        }
        SocketAddr::V6(v6) => {
            out.push(6);
            out.extend_from_slice(&v6.ip().octets());
            out.extend_from_slice(&v6.scope_id().to_le_bytes());
        }
    }
    out.extend_from_slice(&addr.port().to_le_bytes());
}

fn version_code(version: http::Version) -> u8 {
    match version {
        http::Version::HTTP_09 => 0,
        http::Version::HTTP_10 => 1,
        http::Version::HTTP_2 => 3,
        http::Version::HTTP_3 => 4,
        _ => 2,
    }
}

fn version_of(code: u8) -> http::Version {
    match code {
        0 => http::Version::HTTP_09,
        1 => http::Version::HTTP_10,
        3 => http::Version::HTTP_2,
        4 => http::Version::HTTP_3,
        _ => http::Version::HTTP_11,
    }
}

/// Unpacks records into one summary it keeps, so a drainer allocates only
/// when a name differs from the last record's or a text outgrows its buffer.
#[derive(Default)]
pub struct Unpacker {
    pub summary: Summary,
    pub span: Option<SpanStart>,
}

impl Unpacker {
    /// Fills `summary` and `span` from one record; false when it is not one
    /// `pack` made (nothing this process queues).
    pub fn unpack(&mut self, record: &[u8]) -> bool {
        self.read(&mut Reader(record)).is_some()
    }

    fn read(&mut self, r: &mut Reader<'_>) -> Option<()> {
        let [flags, more, version] = r.array()?;
        let on = |bit: u8| flags & bit != 0;
        let s = &mut self.summary;
        s.version = version_of(version);
        s.failed = on(FAILED);
        s.retried = on(RETRIED);
        s.status = u16::from_le_bytes(r.array()?);
        let grpc_status = u32::from_le_bytes(r.array()?);
        s.grpc_status = on(GRPC_STATUS).then_some(grpc_status);
        let secs = u64::from_le_bytes(r.array()?);
        let nanos = u32::from_le_bytes(r.array()?);
        s.start = SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))?;
        s.duration_ms = f64::from_le_bytes(r.array()?);
        s.ttfb_ms = f64::from_le_bytes(r.array()?);
        s.response_bytes = u64::from_le_bytes(r.array()?);
        s.client = on(CLIENT).then(|| r.addr()).flatten();
        s.endpoint = on(ENDPOINT).then(|| r.addr()).flatten();
        if on(CLIENT) != s.client.is_some() || on(ENDPOINT) != s.endpoint.is_some() {
            return None;
        }
        s.trace_id = match on(TRACE_ID) {
            true => Some(TraceId::from_bytes(r.array()?)?),
            false => None,
        };
        self.span = match on(SPAN) {
            true => Some(SpanStart {
                trace_id: TraceId::from_bytes(r.array()?)?,
                span_id: SpanId::from_bytes(r.array()?)?,
                parent: match more & SPAN_PARENT != 0 {
                    true => Some(SpanId::from_bytes(r.array()?)?),
                    false => None,
                },
                server: more & SPAN_SERVER != 0,
                export: more & SPAN_EXPORT != 0,
            }),
            false => None,
        };
        let optional = [more & ROUTE, more & SERVICE, more & ZONE, flags & IDENTITY];
        let count = 4 + optional.iter().filter(|&&bit| bit != 0).count();
        let mut lengths = [0usize; 8];
        for len in &mut lengths[..count] {
            *len = u32::from_le_bytes(r.array()?) as usize;
        }
        let mut texts = Texts(std::str::from_utf8(r.0).ok()?, lengths[..count].iter());
        let s = &mut self.summary;
        reuse(&mut s.listener, texts.next()?);
        let method = texts.next()?;
        if s.method.as_str() != method {
            s.method = http::Method::from_bytes(method.as_bytes()).ok()?;
        }
        refill(&mut s.path, texts.next()?);
        refill(&mut s.authority, texts.next()?);
        for (bit, slot) in [
            (ROUTE, &mut s.route),
            (SERVICE, &mut s.service),
            (ZONE, &mut s.zone),
        ] {
            match more & bit != 0 {
                true => reuse(slot.get_or_insert_with(|| Arc::from("")), texts.next()?),
                false => *slot = None,
            }
        }
        match on(IDENTITY) {
            true => refill(s.identity.get_or_insert_with(String::new), texts.next()?),
            false => s.identity = None,
        }
        texts.0.is_empty().then_some(())
    }
}

/// `slot` names `text`, allocating only when it named something else.
fn reuse(slot: &mut Arc<str>, text: &str) {
    if **slot != *text {
        *slot = Arc::from(text);
    }
}

fn refill(slot: &mut String, text: &str) {
    slot.clear();
    slot.push_str(text);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn addr(&mut self) -> Option<SocketAddr> {
        let [family] = self.array()?;
        let ip = match family {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => {
                let ip = Ipv6Addr::from(self.array::<16>()?);
                let scope = u32::from_le_bytes(self.array()?);
                let port = u16::from_le_bytes(self.array()?);
                return Some(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope)));
            }
            _ => return None,
        };
        Some(SocketAddr::new(ip, u16::from_le_bytes(self.array()?)))
    }
}

/// The texts of a record, cut from one checked string by their lengths.
struct Texts<'a, 'l>(&'a str, std::slice::Iter<'l, usize>);

impl<'a> Texts<'a, '_> {
    fn next(&mut self) -> Option<&'a str> {
        let (text, rest) = self.0.split_at_checked(*self.1.next()?)?;
        self.0 = rest;
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> (Summary, SpanStart) {
        let trace_id = TraceId::from_bytes([0x4b; 16]).unwrap();
        let summary = Summary {
            start: SystemTime::UNIX_EPOCH + Duration::new(1_795_651_199, 42_000_123),
            listener: "inbound".into(),
            client: Some("[fe80::1%3]:5000".parse().unwrap()),
            version: http::Version::HTTP_2,
            method: http::Method::from_bytes(b"PURGE").unwrap(),
            path: "/é?q=\t".into(),
            authority: "web.local:80".into(),
            route: Some("r".into()),
            service: Some("svc".into()),
            endpoint: Some("10.0.0.7:8080".parse().unwrap()),
            zone: Some("zone-a".into()),
            status: 503,
            grpc_status: Some(14),
            failed: true,
            duration_ms: 12.5,
            ttfb_ms: 0.0004,
            response_bytes: u64::MAX,
            retried: true,
            identity: Some("spiffe://mesh.local/ns/a/sa/b".into()),
            trace_id: Some(trace_id),
        };
        let span = SpanStart {
            trace_id,
            span_id: SpanId::from_bytes([7; 8]).unwrap(),
            parent: SpanId::from_bytes([9; 8]),
            server: true,
            export: true,
        };
        (summary, span)
    }

    fn same(a: &Summary, b: &Summary) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    #[test]
    fn a_record_unpacks_to_the_summary_and_span_packed() {
        let (summary, span) = full();
        let bare = Summary {
            start: SystemTime::UNIX_EPOCH,
            ..Default::default()
        };
        let plain_span = SpanStart {
            parent: None,
            server: false,
            export: false,
            ..span
        };
        let cases = [
            (summary.clone(), Some(span)),
            (bare, None),
            (summary, Some(plain_span)),
        ];
        // One unpacker through them all: what one record set, the next clears.
        let mut unpacker = Unpacker::default();
        for (summary, span) in cases {
            let mut packed = Vec::new();
            pack(&summary, span.as_ref(), &mut packed);
            assert!(unpacker.unpack(&packed));
            assert!(same(&unpacker.summary, &summary), "{:?}", unpacker.summary);
            assert_eq!(format!("{:?}", unpacker.span), format!("{span:?}"));
        }
    }

    #[test]
    fn a_cut_or_stretched_record_is_refused() {
        let (summary, span) = full();
        let mut packed = Vec::new();
        pack(&summary, Some(&span), &mut packed);
        let mut unpacker = Unpacker::default();
        for end in 0..packed.len() {
            assert!(!unpacker.unpack(&packed[..end]), "cut at {end}");
        }
        packed.push(0);
        assert!(!unpacker.unpack(&packed));
    }

    #[test]
    fn names_that_repeat_are_not_allocated_again() {
        let (summary, _) = full();
        let mut packed = Vec::new();
        pack(&summary, None, &mut packed);
        let mut unpacker = Unpacker::default();
        assert!(unpacker.unpack(&packed));
        let route = unpacker.summary.route.clone().unwrap();
        assert!(unpacker.unpack(&packed));
        assert!(Arc::ptr_eq(&route, unpacker.summary.route.as_ref().unwrap()));
    }
}
