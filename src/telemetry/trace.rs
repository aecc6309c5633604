//! Trace context: what a request says about the trace it belongs to (W3C
//! `traceparent`, else B3 in its single or multi-header form), and what the
//! proxy forwards upstream with its own span as the parent.
//!
//! Parsing is strict about form (lowercase hex, exact lengths, no all-zero
//! ids) and lenient about consequence: a malformed context is treated as
//! absent, so the worst it costs is a broken link in a trace, never a request.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use std::fmt;

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub const B3: HeaderName = HeaderName::from_static("b3");
pub const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// A 128-bit trace id; never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId([u8; 16]);

/// A 64-bit span id; never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId([u8; 8]);

impl TraceId {
    pub fn random() -> TraceId {
        loop {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&random_u64().to_be_bytes());
            b[8..].copy_from_slice(&random_u64().to_be_bytes());
            if let Some(id) = TraceId::from_bytes(b) {
                return id;
            }
        }
    }

    /// None for the all-zero id, which both W3C and B3 call invalid.
    pub fn from_bytes(b: [u8; 16]) -> Option<TraceId> {
        (b != [0; 16]).then_some(TraceId(b))
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }
}

impl SpanId {
    pub fn random() -> SpanId {
        loop {
            if let Some(id) = SpanId::from_bytes(random_u64().to_be_bytes()) {
                return id;
            }
        }
    }

    /// None for the all-zero id.
    pub fn from_bytes(b: [u8; 8]) -> Option<SpanId> {
        (b != [0; 8]).then_some(SpanId(b))
    }

    pub fn to_bytes(self) -> [u8; 8] {
        self.0
    }
}

fn random_u64() -> u64 {
    crate::rng::below(u64::MAX)
}

/// Whether to start a trace, for a ratio between 0 (never) and 1 (always).
pub fn sample(ratio: f64) -> bool {
    const SCALE: u64 = 1 << 53;
    ratio >= 1.0 || (ratio > 0.0 && (crate::rng::below(SCALE) as f64) < ratio * SCALE as f64)
}

impl TraceId {
    /// The ID as 32 lowercase hex digits, written into `out`.
    pub fn to_hex<'a>(&self, out: &'a mut [u8; 32]) -> &'a str {
        hex(&self.0, out)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(hex(&self.0, &mut [0; 32]))
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(hex(&self.0, &mut [0; 16]))
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// How a request carried its trace context; the proxy answers in kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    W3c,
    B3Single,
    B3Multi,
}

/// The trace context a request came with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Incoming {
    pub trace_id: TraceId,
    /// The caller's span: the parent of the proxy's.
    pub parent: SpanId,
    /// The caller's decision; None = deferred to us (B3 without a sampling state).
    pub sampled: Option<bool>,
    pub format: Format,
}

/// The request's trace context: W3C `traceparent` first, else B3 single
/// (`b3`), else B3 multi (`x-b3-*`). A malformed one counts as absent.
pub fn incoming(headers: &HeaderMap) -> Option<Incoming> {
    if let Some(v) = only(headers, &TRACEPARENT) {
        if let Some((trace_id, parent, sampled)) = parse_traceparent(v.as_bytes()) {
            return Some(Incoming {
                trace_id,
                parent,
                sampled: Some(sampled),
                format: Format::W3c,
            });
        }
    }
    if let Some(v) = only(headers, &B3) {
        if let Some(B3Single::Context {
            trace_id,
            span,
            sampled,
            ..
        }) = parse_b3(v.as_bytes())
        {
            return Some(Incoming {
                trace_id,
                parent: span,
                sampled,
                format: Format::B3Single,
            });
        }
    }
    let trace_id = only(headers, &B3_TRACE_ID).and_then(|v| b3_trace_id(v.as_bytes()))?;
    let parent = only(headers, &B3_SPAN_ID).and_then(|v| span_id(v.as_bytes()))?;
    Some(Incoming {
        trace_id,
        parent,
        sampled: b3_multi_sampled(headers),
        format: Format::B3Multi,
    })
}

/// A sampling decision a request carries without any trace ids (`b3: 0`,
/// `b3: 1`, `b3: d`, or `x-b3-sampled`/`x-b3-flags` alone): when `incoming`
/// is None, the proxy starts its trace with this decision instead of its own.
pub fn sampling_hint(headers: &HeaderMap) -> Option<bool> {
    if let Some(B3Single::SamplingOnly(sampled)) = only(headers, &B3).and_then(|v| parse_b3(v.as_bytes())) {
        return Some(sampled);
    }
    b3_multi_sampled(headers)
}

/// Writes the trace context the proxy forwards upstream, with `span` (the
/// proxy's own) as the parent of whatever happens there.
///
/// - Always `traceparent: 00-{trace}-{span}-{01|00}`: W3C-aware upstreams join
///   the trace whatever format the request came in, and it costs one header.
/// - `tracestate` is forwarded as it came while the request's `traceparent`
///   was valid; one that came without a valid `traceparent` is removed, as
///   W3C Trace Context requires (it describes no trace we continue).
/// - B3 (`format` names the form the request came in, and any B3 form that
///   came along with W3C is kept too): the same form, with span id = `span`,
///   parent span id = `parent` (the caller's span), the sampling decision
///   `sampled`, and the caller's debug flag kept.
///
/// Calling it again on the same headers (a retry) gives the same result.
pub fn propagate(
    headers: &mut HeaderMap,
    trace: TraceId,
    span: SpanId,
    parent: Option<SpanId>,
    sampled: bool,
    format: Format,
) {
    let came_with_traceparent = only(headers, &TRACEPARENT)
        .and_then(|v| parse_traceparent(v.as_bytes()))
        .is_some();
    if !came_with_traceparent {
        headers.remove(TRACESTATE);
    }
    headers.insert(TRACEPARENT, traceparent(trace, span, sampled));
    // B3 headers that came along with the context that won are rewritten
    // too: left as they came, they would name the caller's span as ours.
    let single = format == Format::B3Single || headers.contains_key(&B3);
    let multi = format == Format::B3Multi || headers.contains_key(&B3_TRACE_ID);
    if single {
        let debug = matches!(
            only(headers, &B3).and_then(|v| parse_b3(v.as_bytes())),
            Some(B3Single::Context { debug: true, .. })
        );
        let state = match (sampled, debug) {
            (true, true) => "d",
            (true, false) => "1",
            (false, _) => "0",
        };
        let mut value = format!("{}-{span}-{state}", b3_trace_hex(trace));
        if let Some(parent) = parent {
            value = format!("{value}-{parent}");
        }
        headers.insert(B3, header_value(value));
    }
    if multi {
        headers.insert(B3_TRACE_ID, header_value(b3_trace_hex(trace)));
        headers.insert(B3_SPAN_ID, header_value(span.to_string()));
        match parent {
            Some(p) => headers.insert(B3_PARENT_SPAN_ID, header_value(p.to_string())),
            None => headers.remove(B3_PARENT_SPAN_ID),
        };
        let debug = only(headers, &B3_FLAGS).is_some_and(|v| v == "1");
        if sampled && debug {
            // B3: debug implies an accept decision, "so don't also send X-B3-Sampled".
            headers.remove(B3_SAMPLED);
        } else {
            headers.remove(B3_FLAGS);
            let v = if sampled { "1" } else { "0" };
            headers.insert(B3_SAMPLED, HeaderValue::from_static(v));
        }
    }
}

fn traceparent(trace: TraceId, span: SpanId, sampled: bool) -> HeaderValue {
    let mut buf = [0u8; 55];
    buf[..3].copy_from_slice(b"00-");
    hex(&trace.0, &mut buf[3..35]);
    buf[35] = b'-';
    hex(&span.0, &mut buf[36..52]);
    buf[52..].copy_from_slice(if sampled { b"-01" } else { b"-00" });
    HeaderValue::from_bytes(&buf).expect("hex and dashes are a valid header value")
}

/// B3 trace ids go out in the width they can have: 16 hex when the high half is zero.
fn b3_trace_hex(trace: TraceId) -> String {
    match trace.0[..8] == [0; 8] {
        true => hex(&trace.0[8..], &mut [0; 16]).to_owned(),
        false => trace.to_string(),
    }
}

fn header_value(s: String) -> HeaderValue {
    HeaderValue::try_from(s).expect("hex and dashes are a valid header value")
}

/// The header's value when it appears exactly once: repeated trace headers
/// are ambiguous, and ambiguous counts as absent.
fn only<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    all.next().is_none().then_some(first)
}

/// `version-traceid-parentid-flags`: version 00 exactly 55 bytes; a higher
/// version (not ff) may carry more after a '-' and is read as 00.
fn parse_traceparent(v: &[u8]) -> Option<(TraceId, SpanId, bool)> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = lower_hex::<1>(&v[..2])?[0];
    match version {
        0xff => return None,
        0 if v.len() != 55 => return None,
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    let trace = TraceId::from_bytes(lower_hex(&v[3..35])?)?;
    let parent = span_id(&v[36..52])?;
    let flags = lower_hex::<1>(&v[53..55])?[0];
    Some((trace, parent, flags & 1 == 1))
}

#[derive(Debug, PartialEq, Eq)]
enum B3Single {
    Context {
        trace_id: TraceId,
        span: SpanId,
        sampled: Option<bool>,
        /// The sampling state was `d`: the caller forces this trace.
        debug: bool,
    },
    SamplingOnly(bool),
}

/// `{traceid}-{spanid}[-{state}[-{parentspanid}]]`, or a lone state `0|1|d`.
fn parse_b3(v: &[u8]) -> Option<B3Single> {
    // The longest valid value is 32 + 16 + 1 + 16 hex and three dashes; a
    // longer one is refused before it is split (it may be 96 KiB of dashes).
    if v.len() > 68 {
        return None;
    }
    let parts: Vec<&[u8]> = v.split(|&b| b == b'-').collect();
    if let [state] = parts[..] {
        return b3_state(state).map(|(sampled, _)| B3Single::SamplingOnly(sampled));
    }
    let (ids, state, parent) = match parts[..] {
        [t, s] => ((t, s), None, None),
        [t, s, state] => ((t, s), Some(state), None),
        [t, s, state, p] => ((t, s), Some(state), Some(p)),
        _ => return None,
    };
    let trace_id = b3_trace_id(ids.0)?;
    let span = span_id(ids.1)?;
    let state = match state {
        Some(s) => Some(b3_state(s)?),
        None => None,
    };
    if let Some(p) = parent {
        span_id(p)?;
    }
    Some(B3Single::Context {
        trace_id,
        span,
        sampled: state.map(|(sampled, _)| sampled),
        debug: state.is_some_and(|(_, debug)| debug),
    })
}

/// (sampled, debug) for a B3 single sampling state.
fn b3_state(s: &[u8]) -> Option<(bool, bool)> {
    match s {
        b"1" => Some((true, false)),
        b"0" => Some((false, false)),
        b"d" => Some((true, true)),
        _ => None,
    }
}

/// `x-b3-flags: 1` (debug) means sampled; else `x-b3-sampled` 1/0 (or the
/// legacy true/false); anything else defers the decision.
fn b3_multi_sampled(headers: &HeaderMap) -> Option<bool> {
    if only(headers, &B3_FLAGS).is_some_and(|v| v == "1") {
        return Some(true);
    }
    match only(headers, &B3_SAMPLED)?.as_bytes() {
        b"1" | b"true" => Some(true),
        b"0" | b"false" => Some(false),
        _ => None,
    }
}

/// 32 lowercase hex, or 16 (a 64-bit id, left-padded with zeros).
fn b3_trace_id(v: &[u8]) -> Option<TraceId> {
    let mut b = [0u8; 16];
    match v.len() {
        32 => b = lower_hex(v)?,
        16 => b[8..].copy_from_slice(&lower_hex::<8>(v)?),
        _ => return None,
    }
    TraceId::from_bytes(b)
}

fn span_id(v: &[u8]) -> Option<SpanId> {
    (v.len() == 16).then_some(())?;
    SpanId::from_bytes(lower_hex(v)?)
}

/// Exactly `2 * N` lowercase hex digits as N bytes.
fn lower_hex<const N: usize>(v: &[u8]) -> Option<[u8; N]> {
    if v.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in v.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Lowercase hex of `bytes` into `out` (twice as long), as a str.
fn hex<'a>(bytes: &[u8], out: &'a mut [u8]) -> &'a str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[(b >> 4) as usize];
        out[2 * i + 1] = DIGITS[(b & 0xf) as usize];
    }
    std::str::from_utf8(&out[..2 * bytes.len()]).expect("hex digits are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const P: &str = "00f067aa0ba902b7";
    const T64: &str = "a3ce929d0e0e4736";

    type Pairs<'a> = Vec<(&'a str, &'a str)>;

    #[test]
    fn a_huge_b3_value_is_refused_before_it_is_split() {
        let dashes = "-".repeat(96 * 1024);
        assert!(incoming(&headers(&[("b3", &dashes)])).is_none());
        let long = format!("{T}-{P}-1-{P}-{P}");
        assert!(incoming(&headers(&[("b3", &long)])).is_none());
    }

    #[test]
    fn b3_that_came_along_with_w3c_is_rewritten_too() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let caller = "00f067aa0ba902b7";
        let mut h = headers(&[
            ("traceparent", &format!("00-{trace}-{caller}-01")),
            ("b3", &format!("{trace}-{caller}-1")),
        ]);
        let i = incoming(&h).unwrap();
        assert_eq!(i.format, Format::W3c);
        let ours = SpanId::random();
        propagate(&mut h, i.trace_id, ours, Some(i.parent), true, i.format);
        assert_eq!(h["b3"], format!("{trace}-{ours}-1-{caller}").as_str());
        assert_eq!(h["traceparent"], format!("00-{trace}-{ours}-01").as_str());
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn trace(hex: &str) -> TraceId {
        b3_trace_id(hex.as_bytes()).unwrap()
    }

    fn span(hex: &str) -> SpanId {
        span_id(hex.as_bytes()).unwrap()
    }

    fn context(t: &str, p: &str, sampled: Option<bool>, format: Format) -> Option<Incoming> {
        Some(Incoming {
            trace_id: trace(t),
            parent: span(p),
            sampled,
            format,
        })
    }

    #[test]
    fn traceparent_forms() {
        let zeros32 = "0".repeat(32);
        let zeros16 = "0".repeat(16);
        let upper = T.to_uppercase();
        let ok = |sampled| context(T, P, Some(sampled), Format::W3c);
        let cases: Vec<(String, Option<Incoming>)> = vec![
            (format!("00-{T}-{P}-01"), ok(true)),
            (format!("00-{T}-{P}-00"), ok(false)),
            (format!("00-{T}-{P}-03"), ok(true)), // unknown flag bits: only bit 0 counts
            (format!("00-{T}-{P}-02"), ok(false)),
            // A higher version: its first four fields, when followed by end or '-'.
            (format!("01-{T}-{P}-01"), ok(true)),
            (format!("cc-{T}-{P}-01-what-the-future-holds"), ok(true)),
            (format!("cc-{T}-{P}-01x"), None),
            (format!("ff-{T}-{P}-01"), None),
            (format!("00-{T}-{P}-01-"), None), // version 00 is exactly 55 bytes
            (format!("00-{T}-{P}-01x"), None),
            (format!("00-{zeros32}-{P}-01"), None),
            (format!("00-{T}-{zeros16}-01"), None),
            (format!("00-{upper}-{P}-01"), None),
            (format!("0A-{T}-{P}-01"), None),
            (format!("00-{T}-{P}-0A"), None),
            (format!("00-{}-{P}-01", &T[1..]), None),
            (format!("00-{T}0-{P}-01"), None),
            (format!("00-{T}-{P}0-01"), None),
            (format!("00-{T}-{P}-1"), None),
            (format!("00_{T}-{P}-01"), None),
            (format!("00-{}g-{P}-01", &T[1..]), None),
            (format!("00-{T}-{P}"), None),
            (String::new(), None),
        ];
        for (value, want) in cases {
            let got = incoming(&headers(&[("traceparent", &value)]));
            assert_eq!(got, want, "traceparent: {value:?}");
        }
    }

    #[test]
    fn b3_single_forms() {
        let zeros32 = "0".repeat(32);
        let zeros16 = "0".repeat(16);
        let b3 = |sampled| context(T, P, sampled, Format::B3Single);
        let cases: Vec<(String, Option<Incoming>)> = vec![
            (format!("{T}-{P}-1-e457b5a2e4d86bd1"), b3(Some(true))),
            (format!("{T}-{P}-1"), b3(Some(true))),
            (format!("{T}-{P}-0"), b3(Some(false))),
            (format!("{T}-{P}-d"), b3(Some(true))),
            (format!("{T}-{P}"), b3(None)),
            // A 64-bit trace id is the low half of a 128-bit one.
            (
                format!("{T64}-{P}-1"),
                context(
                    &format!("{}{T64}", "0".repeat(16)),
                    P,
                    Some(true),
                    Format::B3Single,
                ),
            ),
            (format!("{T}-{P}-2"), None),
            (format!("{T}-{P}-true"), None),
            (format!("{T}-{P}-"), None),
            (format!("{T}-{P}-1-"), None),
            (format!("{T}-{P}-1-xyz"), None),
            (format!("{T}-{P}-1-{zeros16}"), None),
            (format!("{T}-{P}-1-{P}-extra"), None),
            (format!("{}-{P}-1", T.to_uppercase()), None),
            (format!("{zeros32}-{P}-1"), None),
            (format!("{T}-{zeros16}-1"), None),
            (format!("{}-{P}-1", &T[..20]), None),
            (format!("{T}-{}-1", &P[1..]), None),
            // A lone sampling state is a decision, not a context.
            ("0".into(), None),
            ("1".into(), None),
            ("d".into(), None),
            (String::new(), None),
        ];
        for (value, want) in cases {
            let got = incoming(&headers(&[("b3", &value)]));
            assert_eq!(got, want, "b3: {value:?}");
        }
    }

    #[test]
    fn b3_multi_forms() {
        let b3 = |sampled| context(T, P, sampled, Format::B3Multi);
        let ids = [("x-b3-traceid", T), ("x-b3-spanid", P)];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut all = ids.to_vec();
            all.extend_from_slice(extra);
            all
        };
        let cases: Vec<(Pairs, Option<Incoming>)> = vec![
            (with(&[("x-b3-sampled", "1")]), b3(Some(true))),
            (with(&[("x-b3-sampled", "0")]), b3(Some(false))),
            (with(&[("x-b3-sampled", "true")]), b3(Some(true))),
            (with(&[("x-b3-sampled", "false")]), b3(Some(false))),
            (with(&[]), b3(None)),
            (with(&[("x-b3-sampled", "yes")]), b3(None)),
            // Debug implies sampled, whatever else is said.
            (with(&[("x-b3-flags", "1")]), b3(Some(true))),
            (
                with(&[("x-b3-flags", "1"), ("x-b3-sampled", "0")]),
                b3(Some(true)),
            ),
            (with(&[("x-b3-parentspanid", "e457b5a2e4d86bd1")]), b3(None)),
            (
                vec![("x-b3-traceid", T64), ("x-b3-spanid", P)],
                context(&format!("{}{T64}", "0".repeat(16)), P, None, Format::B3Multi),
            ),
            (vec![("x-b3-traceid", T)], None),
            (vec![("x-b3-spanid", P), ("x-b3-sampled", "1")], None),
            (
                vec![("x-b3-traceid", "4BF92F3577B34DA6"), ("x-b3-spanid", P)],
                None,
            ),
            (
                vec![("x-b3-traceid", T), ("x-b3-spanid", "0000000000000000")],
                None,
            ),
            (
                vec![("x-b3-traceid", T), ("x-b3-spanid", P), ("x-b3-spanid", P)],
                None,
            ),
        ];
        for (pairs, want) in cases {
            assert_eq!(incoming(&headers(&pairs)), want, "{pairs:?}");
        }
    }

    #[test]
    fn w3c_wins_then_b3_single_then_multi_and_a_bad_one_is_absent() {
        let tp = format!("00-{T}-{P}-01");
        let other = "e457b5a2e4d86bd1";
        let b3 = format!("{T}-{other}-0");
        let multi = [("x-b3-traceid", T), ("x-b3-spanid", other)];
        let got = incoming(&headers(&[("traceparent", &tp), ("b3", &b3)])).unwrap();
        assert_eq!((got.format, got.parent), (Format::W3c, span(P)));

        let bad = format!("00-{}-{P}-01", T.to_uppercase());
        let got = incoming(&headers(&[("traceparent", &bad), ("b3", &b3)])).unwrap();
        assert_eq!((got.format, got.parent), (Format::B3Single, span(other)));

        let got = incoming(&headers(&[("b3", "junk"), multi[0], multi[1]])).unwrap();
        assert_eq!(got.format, Format::B3Multi);

        // Two traceparents disagree or repeat: neither is trusted.
        let twice = headers(&[("traceparent", &tp), ("traceparent", &tp)]);
        assert_eq!(incoming(&twice), None);
        assert_eq!(incoming(&HeaderMap::new()), None);
    }

    #[test]
    fn a_sampling_decision_without_ids_is_a_hint() {
        let cases: Vec<(Pairs, Option<bool>)> = vec![
            (vec![("b3", "0")], Some(false)),
            (vec![("b3", "1")], Some(true)),
            (vec![("b3", "d")], Some(true)),
            (vec![("b3", "x")], None),
            (vec![("x-b3-sampled", "0")], Some(false)),
            (vec![("x-b3-flags", "1")], Some(true)),
            (vec![], None),
        ];
        for (pairs, want) in cases {
            let h = headers(&pairs);
            assert_eq!(incoming(&h), None, "{pairs:?}");
            assert_eq!(sampling_hint(&h), want, "{pairs:?}");
        }
    }

    fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
        h.get(name).map(|v| v.to_str().unwrap())
    }

    /// Propagates as the proxy does: our span, the caller's as parent.
    fn forward(h: &mut HeaderMap, ours: SpanId, sampled: bool) {
        let inc = incoming(h).unwrap();
        propagate(h, inc.trace_id, ours, Some(inc.parent), sampled, inc.format);
    }

    #[test]
    fn w3c_goes_on_with_our_span_and_tracestate_as_it_came() {
        let ours = span("b7ad6b7169203331");
        let mut h = headers(&[
            ("traceparent", &format!("00-{T}-{P}-01")),
            ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
        ]);
        forward(&mut h, ours, true);
        assert_eq!(get(&h, "traceparent"), Some(&*format!("00-{T}-{ours}-01")));
        assert_eq!(
            get(&h, "tracestate"),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
        assert_eq!(get(&h, "b3"), None);
        assert_eq!(get(&h, "x-b3-traceid"), None);

        propagate(&mut h, trace(T), ours, Some(span(P)), false, Format::W3c);
        assert_eq!(get(&h, "traceparent"), Some(&*format!("00-{T}-{ours}-00")));
        assert!(h.get("tracestate").is_some(), "a retry keeps it");
    }

    #[test]
    fn a_tracestate_without_a_valid_traceparent_is_dropped() {
        let new = TraceId::random();
        let ours = SpanId::random();
        for tp in [None, Some(format!("00-{}-{P}-01", T.to_uppercase()))] {
            let mut h = headers(&[("tracestate", "rojo=00f067aa0ba902b7")]);
            if let Some(tp) = &tp {
                h.insert(TRACEPARENT, HeaderValue::from_str(tp).unwrap());
            }
            propagate(&mut h, new, ours, None, true, Format::W3c);
            assert_eq!(get(&h, "tracestate"), None, "{tp:?}");
            assert_eq!(get(&h, "traceparent"), Some(&*format!("00-{new}-{ours}-01")));
            assert_eq!(incoming(&h).unwrap().parent, ours);
        }
    }

    #[test]
    fn b3_single_answers_in_kind_with_traceparent_alongside() {
        let ours = span("b7ad6b7169203331");
        let cases = [
            (format!("{T}-{P}-1"), true, format!("{T}-{ours}-1-{P}")),
            (
                format!("{T}-{P}-1-e457b5a2e4d86bd1"),
                true,
                format!("{T}-{ours}-1-{P}"),
            ),
            (format!("{T}-{P}-0"), false, format!("{T}-{ours}-0-{P}")),
            (format!("{T}-{P}-d"), true, format!("{T}-{ours}-d-{P}")),
            (format!("{T}-{P}"), false, format!("{T}-{ours}-0-{P}")),
            (format!("{T64}-{P}-1"), true, format!("{T64}-{ours}-1-{P}")),
        ];
        for (came, sampled, want) in cases {
            let mut h = headers(&[("b3", &came)]);
            forward(&mut h, ours, sampled);
            assert_eq!(get(&h, "b3"), Some(&*want), "b3: {came}");
            let trace_hex = incoming(&h).unwrap().trace_id.to_string();
            let flags = if sampled { "01" } else { "00" };
            let tp = format!("00-{trace_hex}-{ours}-{flags}");
            assert_eq!(get(&h, "traceparent"), Some(&*tp), "b3: {came}");
        }
    }

    #[test]
    fn b3_multi_answers_in_kind() {
        let ours = span("b7ad6b7169203331");
        let ids = [
            ("x-b3-traceid", T),
            ("x-b3-spanid", P),
            ("x-b3-parentspanid", "e457b5a2e4d86bd1"),
        ];
        let mut h = headers(&ids);
        h.insert(B3_SAMPLED, HeaderValue::from_static("1"));
        forward(&mut h, ours, true);
        assert_eq!(get(&h, "x-b3-traceid"), Some(T));
        assert_eq!(get(&h, "x-b3-spanid"), Some(&*ours.to_string()));
        assert_eq!(get(&h, "x-b3-parentspanid"), Some(P));
        assert_eq!(get(&h, "x-b3-sampled"), Some("1"));
        assert_eq!(get(&h, "traceparent"), Some(&*format!("00-{T}-{ours}-01")));

        // Debug stays debug, without a separate sampled header.
        let mut h = headers(&[("x-b3-traceid", T64), ("x-b3-spanid", P), ("x-b3-flags", "1")]);
        forward(&mut h, ours, true);
        assert_eq!(get(&h, "x-b3-traceid"), Some(T64));
        assert_eq!(
            (get(&h, "x-b3-flags"), get(&h, "x-b3-sampled")),
            (Some("1"), None)
        );

        // Our decision to not sample goes out as such, debug or not.
        let mut h = headers(&[("x-b3-traceid", T), ("x-b3-spanid", P), ("x-b3-flags", "1")]);
        forward(&mut h, ours, false);
        assert_eq!(
            (get(&h, "x-b3-flags"), get(&h, "x-b3-sampled")),
            (None, Some("0"))
        );

        // A trace we start has no parent to name.
        let mut h = headers(&[("x-b3-parentspanid", P)]);
        propagate(&mut h, trace(T), ours, None, true, Format::B3Multi);
        assert_eq!(get(&h, "x-b3-parentspanid"), None);
        assert_eq!(incoming(&h).unwrap().format, Format::W3c);
    }

    #[test]
    fn propagating_twice_is_propagating_once() {
        let ours = SpanId::random();
        for came in [
            vec![
                ("traceparent", format!("00-{T}-{P}-01")),
                ("tracestate", "a=b".into()),
            ],
            vec![("b3", format!("{T}-{P}-d"))],
            vec![
                ("x-b3-traceid", T.into()),
                ("x-b3-spanid", P.into()),
                ("x-b3-flags", "1".into()),
            ],
        ] {
            let pairs: Vec<(&str, &str)> = came.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let mut h = headers(&pairs);
            let inc = incoming(&h).unwrap();
            let once =
                |h: &mut HeaderMap| propagate(h, inc.trace_id, ours, Some(inc.parent), true, inc.format);
            once(&mut h);
            let first = h.clone();
            once(&mut h);
            assert_eq!(h, first, "{came:?}");
        }
    }

    #[test]
    fn random_ids_are_hex_never_zero_and_differ() {
        let traces: std::collections::HashSet<String> =
            (0..1000).map(|_| TraceId::random().to_string()).collect();
        assert_eq!(traces.len(), 1000);
        assert!(traces
            .iter()
            .all(|t| t.len() == 32 && b3_trace_id(t.as_bytes()).is_some()));
        let s = SpanId::random().to_string();
        assert_eq!((s.len(), span_id(s.as_bytes()).is_some()), (16, true));
        assert_eq!(TraceId::from_bytes([0; 16]), None);
        assert_eq!(SpanId::from_bytes([0; 8]), None);
        assert_eq!(format!("{:?}", span(P)), format!("SpanId({P})"));
    }

    #[test]
    fn sample_ratio_bounds() {
        assert!((0..1000).all(|_| sample(1.0)));
        assert!((0..1000).all(|_| !sample(0.0)));
        let hits = (0..10_000).filter(|_| sample(0.5)).count();
        assert!((4000..6000).contains(&hits), "{hits}");
    }
}
