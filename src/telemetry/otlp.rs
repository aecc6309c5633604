//! Spans, and their export to an OpenTelemetry collector over OTLP/HTTP
//! (protobuf), batched on a thread of its own.
//!
//! The request path only ever appends a packed request to a bounded queue,
//! and the export thread encodes its span: a slow or absent collector costs
//! dropped spans (counted), never latency or memory.
//! A batch the collector refuses or that cannot be sent is dropped and
//! counted; nothing is retried.

use super::spool::{self, Records, Spool};
use super::trace::{SpanId, TraceId};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// The proxy receiving a request.
    Server,
    /// The proxy calling an upstream.
    Client,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
}

/// One finished span, borrowing what it names: the export thread encodes it
/// straight to protobuf, so a span costs no allocation however many
/// attributes it has.
#[derive(Clone, Copy, Debug)]
pub struct Span<'a> {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    /// The name's pieces, joined as they are.
    pub name: &'a [&'a str],
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: &'a [(&'static str, Value<'a>)],
    /// The span's status is ERROR (else left unset, as OpenTelemetry advises).
    pub error: bool,
}

#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Spans waiting for export; past this, new ones are dropped.
    pub queue: usize,
    /// Most spans in one request to the collector.
    pub batch: usize,
    /// Longest a span waits for its batch to fill.
    pub interval: Duration,
    /// Bound on one request to the collector, and on the flush at shutdown.
    pub timeout: Duration,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            queue: 2048,
            batch: 512,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        }
    }
}

/// The OTLP/HTTP default port, for an address that names none.
const DEFAULT_PORT: u16 = 4318;
const PATH: &str = "/v1/traces";
/// A collector's answer is a small message; more than this is not one.
const MAX_RESPONSE: usize = 64 * 1024;

#[derive(Default)]
struct Counters {
    exported: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

/// Encodes one queued record as a `Span` message (`Span::encode_into`);
/// false when the record holds no span. It runs on the export thread.
pub type Encoder = Box<dyn FnMut(&[u8], &mut Vec<u8>) -> bool + Send>;

/// Sends spans to one collector. Dropping it flushes what is queued (within
/// about `timeout`, twice that if a request is in flight) and joins its thread.
pub struct Exporter {
    /// Records of finished requests, each to become a span (`Encoder`).
    spans: Arc<Spool>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

/// Room before a span's encoding for its field key (1 byte) and length (at
/// most 5 bytes: a span is far below 4 GiB).
const FIELD_HEAD: usize = 6;

impl Exporter {
    /// Starts the export thread for `collector` ("host:port" or
    /// "http://host:port"; port 4318 when none is given), which makes spans
    /// of what is queued with `encode`.
    pub fn start(
        collector: &str,
        service_name: &str,
        options: ExportOptions,
        encode: Encoder,
    ) -> Result<Exporter, String> {
        let authority = collector_authority(collector)?;
        if options.queue == 0 || options.batch == 0 {
            return Err("otlp: queue and batch must be at least 1".into());
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("otlp: cannot start its runtime: {e}"))?;
        let spans = Arc::new(Spool::new(options.queue));
        let counters = Arc::new(Counters::default());
        let worker = Worker {
            spans: spans.clone(),
            client: Client::new(authority),
            prefix: Prefix::new(service_name),
            encode,
            options,
            counters: counters.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("meshcore-otlp".into())
            .spawn(move || runtime.block_on(worker.run()))
            .map_err(|e| format!("otlp: cannot start its thread: {e}"))?;
        Ok(Exporter {
            spans,
            counters,
            thread: Some(thread),
        })
    }

    /// Queues a record for export; never blocks. A full queue drops it (counted).
    pub fn queue(&self, record: &[u8]) {
        if !self.spans.push(record) {
            self.counters.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Spans the collector accepted.
    pub fn exported(&self) -> u64 {
        self.counters.exported.load(Relaxed)
    }

    /// Spans dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Relaxed)
    }

    /// Spans in batches the collector refused or that could not be sent.
    pub fn failed(&self) -> u64 {
        self.counters.failed.load(Relaxed)
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        // Closing the queue tells the worker to flush and stop.
        self.spans.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// "host:port" from "host[:port]" or "http://host[:port][/]".
fn collector_authority(collector: &str) -> Result<String, String> {
    let bad = |why: &str| format!("otlp collector {collector:?}: {why}");
    let with_scheme = match collector.contains("://") {
        true => collector.to_owned(),
        false => format!("http://{collector}"),
    };
    let uri: http::Uri = with_scheme
        .parse()
        .map_err(|e| bad(&format!("not an address ({e})")))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("only http:// is supported"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("give host:port only; spans go to /v1/traces there"));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("credentials in the address are not supported"));
    }
    if authority.host().is_empty() {
        return Err(bad("no host"));
    }
    let port = match &authority.as_str()[authority.host().len()..] {
        "" => DEFAULT_PORT,
        _ => authority
            .port_u16()
            .filter(|&p| p != 0)
            .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?,
    };
    Ok(format!("{}:{port}", authority.host()))
}

struct Worker {
    spans: Arc<Spool>,
    client: Client,
    prefix: Prefix,
    encode: Encoder,
    options: ExportOptions,
    counters: Arc<Counters>,
}

/// How long an idle exporter sleeps between looks at a queue that stays
/// empty; a span wakes it sooner.
const IDLE: Duration = Duration::from_secs(3600);

impl Worker {
    /// Waits for a first span, lets more gather until a batch is full or
    /// `interval` passes, and sends what is queued in batches of at most
    /// `batch`. Once the queue is closed, sends what is left and ends.
    async fn run(mut self) {
        let (mut taken, mut spans) = (Vec::new(), Vec::new());
        loop {
            if self.spans.ready(1, usize::MAX, IDLE).await > 0 {
                self.spans
                    .ready(self.options.batch, usize::MAX, self.options.interval)
                    .await;
            }
            let took = self.spans.take(&mut taken);
            // The flush at shutdown ends within `timeout`.
            let flush_by = took.closed.then(|| Instant::now() + self.options.timeout);
            let mut records = spool::records(&taken);
            loop {
                let n = encode_batch(&mut records, self.options.batch, &mut self.encode, &mut spans);
                if n == 0 {
                    break;
                }
                if flush_by.is_some_and(|at| Instant::now() >= at) {
                    let left = n + records.count() as u64;
                    self.counters.failed.fetch_add(left, Relaxed);
                    crate::throttled!("otlp: {left} spans not exported: the flush at shutdown timed out");
                    break;
                }
                let deadline = match flush_by {
                    Some(at) => at.min(Instant::now() + self.options.timeout),
                    None => Instant::now() + self.options.timeout,
                };
                self.export(&spans, n, deadline).await;
            }
            for buffer in [&mut taken, &mut spans] {
                buffer.clear();
                if buffer.capacity() > 4 * 1024 * 1024 {
                    *buffer = Vec::new();
                }
            }
            if took.closed {
                return;
            }
        }
    }

    async fn export(&mut self, spans: &[u8], n: u64, deadline: Instant) {
        let body = self.prefix.request(spans);
        let answer = tokio::time::timeout_at(deadline, self.client.post(body)).await;
        let outcome = match answer {
            Ok(Ok(rejected)) => Ok(rejected.min(n)),
            Ok(Err(why)) => Err(why),
            Err(_) => Err("timed out".into()),
        };
        match outcome {
            Ok(0) => {
                self.counters.exported.fetch_add(n, Relaxed);
            }
            Ok(rejected) => {
                self.counters.exported.fetch_add(n - rejected, Relaxed);
                self.counters.failed.fetch_add(rejected, Relaxed);
                crate::throttled!(
                    "otlp: collector {} rejected {rejected} of {n} spans",
                    self.client.authority
                );
            }
            Err(why) => {
                // Whatever state the connection is in, the next batch starts afresh.
                self.client.conn = None;
                self.counters.failed.fetch_add(n, Relaxed);
                crate::throttled!("otlp: {n} spans not exported to {}: {why}", self.client.authority);
            }
        }
    }
}

/// Encodes the next records' spans into `spans` (emptied first), as
/// `ScopeSpans.spans` fields, until `batch` spans or no more records; how
/// many. A record that holds no span is skipped.
fn encode_batch(records: &mut Records<'_>, batch: usize, encode: &mut Encoder, spans: &mut Vec<u8>) -> u64 {
    spans.clear();
    let mut n = 0;
    while n < batch as u64 {
        let Some(record) = records.next() else { break };
        if span_field(spans, |out| encode(record, out)) {
            n += 1;
        }
    }
    n
}

/// Appends the span `encode` writes as a `spans` field: encoded after room
/// for the field's head, then moved back against the head it needed.
fn span_field(spans: &mut Vec<u8>, encode: impl FnOnce(&mut Vec<u8>) -> bool) -> bool {
    let at = spans.len();
    spans.resize(at + FIELD_HEAD, 0);
    if !encode(spans) {
        spans.truncate(at);
        return false;
    }
    let unused = field_head(2, FIELD_HEAD, &mut spans[at..]);
    spans.copy_within(at + unused.., at);
    spans.truncate(spans.len() - unused);
    true
}

/// One keep-alive HTTP/1.1 connection to the collector, opened on demand.
struct Client {
    authority: String,
    conn: Option<http1::SendRequest<Full<Bytes>>>,
}

impl Client {
    fn new(authority: String) -> Client {
        Client {
            authority,
            conn: None,
        }
    }

    async fn connect(&self) -> Result<http1::SendRequest<Full<Bytes>>, String> {
        let tcp = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// POSTs one export request; Ok(spans the collector says it rejected).
    async fn post(&mut self, body: Vec<u8>) -> Result<u64, String> {
        let body = Bytes::from(body);
        let reused = self.conn.as_ref().is_some_and(|c| !c.is_closed());
        let response = match self.send(body.clone(), reused).await {
            // A kept-alive connection the collector closed meanwhile: the
            // request never left, so it goes once more on a new connection.
            Err(NoAnswer::Unsent(_)) if reused => self.send(body, false).await,
            other => other,
        }
        .map_err(|(NoAnswer::Unsent(why) | NoAnswer::Failed(why))| why)?;
        let status = response.status();
        // Read the whole answer so the connection can carry the next batch.
        let answer = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| format!("response: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("collector answered {status}"));
        }
        // OTLP: a 2xx may carry a partial success naming the spans it rejected.
        let rejected = <proto::ExportTraceServiceResponse as prost::Message>::decode(answer)
            .ok()
            .and_then(|r| r.partial_success)
            .map_or(0, |p| p.rejected_spans.max(0) as u64);
        Ok(rejected)
    }

    async fn send(
        &mut self,
        body: Bytes,
        reuse: bool,
    ) -> Result<http::Response<hyper::body::Incoming>, NoAnswer> {
        if !reuse {
            self.conn = None;
            self.conn = Some(self.connect().await.map_err(NoAnswer::Failed)?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        conn.ready()
            .await
            .map_err(|e| NoAnswer::Unsent(format!("connection: {e}")))?;
        let request = http::Request::post(PATH)
            .header(http::header::HOST, &self.authority)
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(body))
            .map_err(|e| NoAnswer::Failed(format!("request: {e}")))?;
        conn.send_request(request).await.map_err(|e| NoAnswer::of(&e))
    }
}

enum NoAnswer {
    /// The connection was gone before the request was written.
    Unsent(String),
    Failed(String),
}

impl NoAnswer {
    fn of(e: &hyper::Error) -> NoAnswer {
        // hyper cancels a request its connection closed before sending it.
        match e.is_canceled() {
            true => NoAnswer::Unsent(format!("connection closed: {e}")),
            false => NoAnswer::Failed(format!("request: {e}")),
        }
    }
}

/// What every export request says before its spans: the resource (the
/// service's name) and the instrumentation scope, encoded once.
struct Prefix {
    resource: Vec<u8>,
    scope: Vec<u8>,
}

impl Prefix {
    fn new(service_name: &str) -> Prefix {
        let resource = proto::Resource {
            attributes: vec![proto::KeyValue {
                key: "service.name".into(),
                value: Some(proto::AnyValue {
                    value: Some(proto::any_value::Value::Str(service_name.into())),
                }),
            }],
            dropped_attributes_count: 0,
        };
        let scope = proto::InstrumentationScope {
            name: "meshcore".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        Prefix {
            resource: prost::Message::encode_to_vec(&resource),
            scope: prost::Message::encode_to_vec(&scope),
        }
    }

    /// The protobuf body of one export request (ExportTraceServiceRequest):
    /// one ResourceSpans holding one ScopeSpans holding the spans, which
    /// come encoded as its `spans` fields.
    fn request(&self, spans: &[u8]) -> Vec<u8> {
        let scope_spans = field_len(1, self.scope.len()) + spans.len();
        let resource_spans = field_len(1, self.resource.len()) + field_len(2, scope_spans);
        let mut out = Vec::with_capacity(field_len(1, resource_spans));
        bytes_head(1, resource_spans, &mut out);
        bytes_field(1, &self.resource, &mut out);
        bytes_head(2, scope_spans, &mut out);
        bytes_field(1, &self.scope, &mut out);
        out.extend_from_slice(spans);
        out
    }
}

impl Span<'_> {
    /// The span as an OTLP `Span` message (trace.proto), fields in order.
    #[cfg(test)]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// `encode`, appended to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let name_len = self.name.iter().map(|p| p.len()).sum();
        out.reserve(192 + name_len + 48 * self.attributes.len());
        bytes_field(1, &self.trace_id.to_bytes(), out);
        bytes_field(2, &self.span_id.to_bytes(), out);
        if let Some(parent) = self.parent {
            bytes_field(4, &parent.to_bytes(), out);
        }
        bytes_head(5, name_len, out);
        for piece in self.name {
            out.extend_from_slice(piece.as_bytes());
        }
        let kind = match self.kind {
            SpanKind::Server => proto::SpanKind::Server,
            SpanKind::Client => proto::SpanKind::Client,
        };
        key(6, VARINT, out);
        varint(kind as u64, out);
        key(7, FIXED64, out);
        out.extend_from_slice(&unix_nanos(self.start).to_le_bytes());
        key(8, FIXED64, out);
        out.extend_from_slice(&unix_nanos(self.end).to_le_bytes());
        for (name, value) in self.attributes {
            key_value(name, *value, out);
        }
        if self.error {
            // Status { code = ERROR }
            let code = proto::StatusCode::Error as u64;
            bytes_head(15, 1 + varint_len(code), out);
            key(3, VARINT, out);
            varint(code, out);
        }
    }
}

/// An attribute (KeyValue, field 9 of Span) holding an AnyValue.
fn key_value(name: &str, value: Value<'_>, out: &mut Vec<u8>) {
    let any = match value {
        Value::Str(s) => field_len(1, s.len()),
        Value::Bool(_) => 2,
        Value::Int(i) => 1 + varint_len(i as u64),
    };
    bytes_head(9, field_len(1, name.len()) + field_len(2, any), out);
    bytes_field(1, name.as_bytes(), out);
    bytes_head(2, any, out);
    match value {
        Value::Str(s) => bytes_field(1, s.as_bytes(), out),
        Value::Bool(b) => {
            key(2, VARINT, out);
            varint(b as u64, out);
        }
        Value::Int(i) => {
            key(3, VARINT, out);
            varint(i as u64, out);
        }
    }
}

// Protobuf wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LENGTH_DELIMITED: u32 = 2;

/// A field's key; every field number here is below 16, so one byte.
#[inline(always)]
fn key(tag: u32, wire_type: u32, out: &mut Vec<u8>) {
    varint(u64::from(tag << 3 | wire_type), out);
}

/// A base-128 varint; most here (lengths, keys) take one byte, written
/// without a loop.
#[inline(always)]
fn varint(mut v: u64, out: &mut Vec<u8>) {
    if v < 0x80 {
        out.push(v as u8);
        return;
    }
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    // 7 bits a byte; 0 takes one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// The key and length of a length-delimited field of `len` bytes.
#[inline(always)]
fn bytes_head(tag: u32, len: usize, out: &mut Vec<u8>) {
    key(tag, LENGTH_DELIMITED, out);
    varint(len as u64, out);
}

#[inline(always)]
fn bytes_field(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
    bytes_head(tag, bytes.len(), out);
    out.extend_from_slice(bytes);
}

/// The encoded size of a length-delimited field of `len` bytes.
fn field_len(tag: u32, len: usize) -> usize {
    varint_len(u64::from(tag << 3)) + varint_len(len as u64) + len
}

/// Writes the key and length of a length-delimited field (number `tag`)
/// holding what follows `room` bytes left free at the start of `out`,
/// right-aligned in that room: where the field starts.
fn field_head(tag: u32, room: usize, out: &mut [u8]) -> usize {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
    let len = (out.len() - room) as u64;
    let start = room - key_len(tag) - encoded_len_varint(len);
    let mut head = &mut out[start..room];
    encode_key(tag, WireType::LengthDelimited, &mut head);
    encode_varint(len, &mut head);
    start
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The OTLP messages, declared by hand for prost: the collector's answer, the
/// resource and scope (encoded once), and in tests what `Span::encode` and
/// `Prefix::request` write, read back. Field numbers and types as in
/// opentelemetry-proto (collector/trace/v1/trace_service.proto,
/// trace/v1/trace.proto, common/v1/common.proto, resource/v1/resource.proto).
/// Fields the exporter never sets are left out; a decoder skips them anyway.
pub(crate) mod proto {
    #[cfg(test)] // sent as encoded by hand; read back in tests
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceResponse {
        #[prost(message, optional, tag = "1")]
        pub partial_success: Option<ExportTracePartialSuccess>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTracePartialSuccess {
        #[prost(int64, tag = "1")]
        pub rejected_spans: i64,
        #[prost(string, tag = "2")]
        pub error_message: String,
    }

    #[cfg(test)] // sent as encoded by hand; read back in tests
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
        #[prost(string, tag = "3")]
        pub schema_url: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
        #[prost(uint32, tag = "2")]
        pub dropped_attributes_count: u32,
    }

    #[cfg(test)] // sent as encoded by hand; read back in tests
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
        #[prost(string, tag = "3")]
        pub schema_url: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
        #[prost(message, repeated, tag = "3")]
        pub attributes: Vec<KeyValue>,
        #[prost(uint32, tag = "4")]
        pub dropped_attributes_count: u32,
    }

    #[cfg(test)] // sent as encoded by hand; read back in tests
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(string, tag = "3")]
        pub trace_state: String,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub name: String,
        #[prost(enumeration = "SpanKind", tag = "6")]
        pub kind: i32,
        #[prost(fixed64, tag = "7")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        pub end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        #[prost(uint32, tag = "10")]
        pub dropped_attributes_count: u32,
        #[prost(message, optional, tag = "15")]
        pub status: Option<Status>,
        #[prost(fixed32, tag = "16")]
        pub flags: u32,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum SpanKind {
        Unspecified = 0,
        Internal = 1,
        Server = 2,
        Client = 3,
        Producer = 4,
        Consumer = 5,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(enumeration = "StatusCode", tag = "3")]
        pub code: i32,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum StatusCode {
        Unset = 0,
        Ok = 1,
        Error = 2,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(oneof = "any_value::Value", tags = "1, 2, 3")]
        pub value: Option<any_value::Value>,
    }

    pub mod any_value {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            #[prost(string, tag = "1")]
            Str(String),
            #[prost(bool, tag = "2")]
            Bool(bool),
            #[prost(int64, tag = "3")]
            Int(i64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use prost::Message;
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc as std_mpsc;
    use tokio::sync::Semaphore;

    fn id<const N: usize>(hex: &str) -> [u8; N] {
        let mut b = [0u8; N];
        for (i, out) in b.iter_mut().enumerate() {
            *out = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        b
    }

    const GOLDEN_ATTRIBUTES: &[(&str, Value<'static>)] = &[
        ("http.request.method", Value::Str("GET")),
        ("http.response.status_code", Value::Int(503)),
        ("meshcore.retried", Value::Bool(true)),
    ];

    fn golden_span() -> Span<'static> {
        let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_000);
        Span {
            trace_id: TraceId::from_bytes(id("4bf92f3577b34da6a3ce929d0e0e4736")).unwrap(),
            span_id: SpanId::from_bytes(id("00f067aa0ba902b7")).unwrap(),
            parent: SpanId::from_bytes(id("e457b5a2e4d86bd1")),
            name: &["GET", " ", "/"],
            kind: SpanKind::Server,
            start,
            end: start + Duration::from_micros(1500),
            attributes: GOLDEN_ATTRIBUTES,
            error: true,
        }
    }

    fn span<'a>(name: &'a [&'a str]) -> Span<'a> {
        Span {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent: None,
            name,
            kind: SpanKind::Client,
            start: SystemTime::now(),
            end: SystemTime::now(),
            attributes: &[],
            error: false,
        }
    }

    fn str_value(s: &str) -> Option<proto::AnyValue> {
        Some(proto::AnyValue {
            value: Some(proto::any_value::Value::Str(s.into())),
        })
    }

    #[test]
    fn a_span_encodes_as_opentelemetry_protos_own_encoder_does() {
        // Bytes from opentelemetry-proto's Python classes for the same span
        // (Span.SerializeToString): field numbers, wire types and enums agree.
        let python = "0a104bf92f3577b34da6a3ce929d0e0e4736120800f067aa0ba902b72208e457b5a2e4d86bd1\
            2a05474554202f30023900002a36fe9c97174160e34036fe9c97174a1c0a13687474702e726571756573\
            742e6d6574686f6412050a034745544a200a19687474702e726573706f6e73652e7374617475735f636f\
            6465120318f7034a160a106d657368636f72652e72657472696564120210017a021802";
        let ours: String = golden_span()
            .encode()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(ours, python);
    }

    #[test]
    fn varints_are_written_as_prost_writes_them() {
        let edges = (0..64).flat_map(|bit| [(1u64 << bit) - 1, 1 << bit, (1 << bit) + 1]);
        for v in edges.chain([0, u64::MAX, -1i64 as u64, 503]) {
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            varint(v, &mut ours);
            prost::encoding::encode_varint(v, &mut theirs);
            assert_eq!(ours, theirs, "{v}");
            assert_eq!(varint_len(v), theirs.len(), "{v}");
        }
    }

    /// Spans as an export request carries them: `ScopeSpans.spans` fields.
    fn queued(spans: &[Span<'_>]) -> Vec<u8> {
        let mut all = Vec::new();
        for span in spans {
            assert!(span_field(&mut all, |out| {
                span.encode_into(out);
                true
            }));
        }
        all
    }

    /// The encoder of the exporter's tests: a record is its span's name, and
    /// "-" holds no span.
    fn by_name() -> Encoder {
        Box::new(|record, out| {
            let name = std::str::from_utf8(record).unwrap();
            if name == "-" {
                return false;
            }
            span(&[name]).encode_into(out);
            true
        })
    }

    fn names(spans: &[u8]) -> Vec<String> {
        let body = Prefix::new("web").request(spans);
        let request = proto::ExportTraceServiceRequest::decode(&body[..]).unwrap();
        request.resource_spans[0].scope_spans[0]
            .spans
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }

    #[test]
    fn queued_records_become_batches_of_at_most_batch_spans() {
        let spool = Spool::new(16);
        // A long name makes one span's length take two bytes.
        let long = "x".repeat(200);
        for name in ["a", &long, "-", "b", "c", ""] {
            assert!(spool.push(name.as_bytes()));
        }
        let mut taken = Vec::new();
        spool.take(&mut taken);
        let mut records = spool::records(&taken);
        let (mut encode, mut spans) = (by_name(), Vec::new());
        let mut batches = Vec::new();
        loop {
            let n = encode_batch(&mut records, 2, &mut encode, &mut spans);
            if n == 0 {
                break;
            }
            assert_eq!(names(&spans).len() as u64, n);
            batches.push(names(&spans));
        }
        assert_eq!(batches, [vec!["a", &long], vec!["b", "c"], vec![""]]);
    }

    #[test]
    fn a_request_decodes_back_to_what_went_in() {
        let plain = span(&["outbound"]);
        let negative = [("n", Value::Int(-1)), ("empty", Value::Str(""))];
        let odd = Span {
            attributes: &negative,
            name: &[],
            ..plain
        };
        let body = Prefix::new("web").request(&queued(&[golden_span(), plain, odd]));
        let request = proto::ExportTraceServiceRequest::decode(&body[..]).unwrap();
        let [rs] = &request.resource_spans[..] else {
            panic!("one resource")
        };
        let service = proto::KeyValue {
            key: "service.name".into(),
            value: str_value("web"),
        };
        assert_eq!(rs.resource.as_ref().unwrap().attributes, vec![service]);
        let [ss] = &rs.scope_spans[..] else {
            panic!("one scope")
        };
        let scope = ss.scope.as_ref().unwrap();
        assert_eq!(
            (&*scope.name, &*scope.version),
            ("meshcore", env!("CARGO_PKG_VERSION"))
        );
        let [first, second, third] = &ss.spans[..] else {
            panic!("three spans")
        };

        assert_eq!(first.trace_id, id::<16>("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(first.span_id, id::<8>("00f067aa0ba902b7"));
        assert_eq!(first.parent_span_id, id::<8>("e457b5a2e4d86bd1"));
        assert_eq!(first.name, "GET /");
        assert_eq!(first.kind, proto::SpanKind::Server as i32);
        assert_eq!(first.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(first.end_time_unix_nano, 1_700_000_000_001_500_000);
        use proto::any_value::Value as V;
        let attribute = |key: &str, value| proto::KeyValue {
            key: key.into(),
            value: Some(proto::AnyValue { value: Some(value) }),
        };
        assert_eq!(
            first.attributes,
            vec![
                attribute("http.request.method", V::Str("GET".into())),
                attribute("http.response.status_code", V::Int(503)),
                attribute("meshcore.retried", V::Bool(true)),
            ]
        );
        assert_eq!(
            first.status.as_ref().unwrap().code,
            proto::StatusCode::Error as i32
        );

        assert_eq!(second.trace_id, plain.trace_id.to_bytes());
        assert_eq!(second.span_id, plain.span_id.to_bytes());
        assert!(second.parent_span_id.is_empty());
        assert_eq!(second.name, "outbound");
        assert_eq!(second.kind, proto::SpanKind::Client as i32);
        assert_eq!(second.status, None, "status left unset when all went well");
        assert_eq!(second.start_time_unix_nano, unix_nanos(plain.start));
        assert!(second.attributes.is_empty());

        assert_eq!(third.name, "");
        assert_eq!(
            third.attributes,
            vec![
                attribute("n", V::Int(-1)),
                attribute("empty", V::Str(String::new()))
            ]
        );
    }

    #[test]
    fn collector_addresses() {
        let cases = [
            ("127.0.0.1:4318", Ok("127.0.0.1:4318")),
            ("http://localhost:9411", Ok("localhost:9411")),
            ("http://[::1]:4318/", Ok("[::1]:4318")),
            ("collector", Ok("collector:4318")),
            ("", Err("not an address")),
            ("http://", Err("not an address")),
            ("host:port", Err("port")),
            ("http://host:", Err("port")),
            ("host:99999", Err("port")),
            ("host:0", Err("port")),
            ("https://collector:4318", Err("only http://")),
            ("grpc://collector:4317", Err("only http://")),
            ("http://collector:4318/v1/traces", Err("host:port only")),
            ("http://user:pw@collector:4318", Err("credentials")),
        ];
        for (given, want) in cases {
            match (collector_authority(given), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{given:?}"),
                (Err(got), Err(want)) => {
                    assert!(
                        got.contains(want) && got.contains(&format!("{given:?}")),
                        "{given:?}: {got}"
                    )
                }
                (got, _) => panic!("{given:?}: {got:?}"),
            }
        }
        assert!(Exporter::start("https://x:1", "web", ExportOptions::default(), by_name()).is_err());
    }

    /// What the test collector saw of one request.
    struct Received {
        path: String,
        content_type: String,
        spans: Vec<proto::Span>,
        service: String,
    }

    #[derive(Default)]
    struct Answer {
        status: u16,
        body: Vec<u8>,
        /// Answer `connection: close`, so each batch needs a new connection.
        close: bool,
        /// Hold each answer until a permit is added.
        gate: Option<Arc<Semaphore>>,
    }

    /// A loopback OTLP/HTTP collector on a thread of its own (hyper server).
    struct Collector {
        addr: SocketAddr,
        received: std_mpsc::Receiver<Received>,
        connections: Arc<AtomicUsize>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<JoinHandle<()>>,
    }

    impl Collector {
        fn start(answer: Answer) -> Collector {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, received) = std_mpsc::channel();
            let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
            let connections = Arc::new(AtomicUsize::new(0));
            let count = connections.clone();
            let answer = Arc::new(answer);
            let thread = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    loop {
                        let tcp = tokio::select! {
                            accepted = listener.accept() => accepted.unwrap().0,
                            _ = &mut stopped => return,
                        };
                        count.fetch_add(1, Relaxed);
                        let (tx, answer) = (tx.clone(), answer.clone());
                        let service =
                            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                                let (tx, answer) = (tx.clone(), answer.clone());
                                async move { Ok::<_, hyper::Error>(respond(req, &tx, &answer).await) }
                            });
                        tokio::spawn(
                            hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(tcp), service),
                        );
                    }
                });
            });
            Collector {
                addr,
                received,
                connections,
                stop: Some(stop),
                thread: Some(thread),
            }
        }

        /// The next request, or a panic naming what was awaited.
        fn next(&self, what: &str) -> Received {
            self.received
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("collector: no request ({what})"))
        }
    }

    impl Drop for Collector {
        fn drop(&mut self) {
            let _ = self.stop.take().unwrap().send(());
            self.thread.take().unwrap().join().unwrap();
        }
    }

    async fn respond(
        req: http::Request<hyper::body::Incoming>,
        tx: &std_mpsc::Sender<Received>,
        answer: &Answer,
    ) -> http::Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let content_type = req
            .headers()
            .get("content-type")
            .map_or("", |v| v.to_str().unwrap())
            .to_owned();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let request = proto::ExportTraceServiceRequest::decode(body).unwrap();
        let rs = &request.resource_spans[0];
        let service = match &rs.resource.as_ref().unwrap().attributes[0]
            .value
            .as_ref()
            .unwrap()
            .value
        {
            Some(proto::any_value::Value::Str(s)) => s.clone(),
            other => panic!("service.name: {other:?}"),
        };
        let spans = rs.scope_spans[0].spans.clone();
        tx.send(Received {
            path,
            content_type,
            spans,
            service,
        })
        .unwrap();
        if let Some(gate) = &answer.gate {
            gate.acquire().await.unwrap().forget();
        }
        let mut response = http::Response::builder().status(answer.status);
        if answer.close {
            response = response.header("connection", "close");
        }
        response
            .body(Full::new(Bytes::from(answer.body.clone())))
            .unwrap()
    }

    fn ok() -> Answer {
        Answer {
            status: 200,
            ..Default::default()
        }
    }

    fn options(queue: usize, batch: usize, interval: Duration) -> ExportOptions {
        ExportOptions {
            queue,
            batch,
            interval,
            timeout: Duration::from_secs(5),
        }
    }

    /// Waits for a counter to reach a value (the worker updates it after the collector answers).
    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn spans_arrive_in_batches_of_at_most_batch_and_are_counted() {
        let collector = Collector::start(ok());
        let exporter = Exporter::start(
            &format!("http://{}", collector.addr),
            "web",
            options(64, 2, Duration::from_millis(20)),
            by_name(),
        )
        .unwrap();
        for i in 0..5 {
            exporter.queue(format!("span {i}").as_bytes());
        }
        let mut got = Vec::new();
        while got.len() < 5 {
            let r = collector.next("five spans");
            assert_eq!(
                (&*r.path, &*r.content_type, &*r.service),
                ("/v1/traces", "application/x-protobuf", "web")
            );
            assert!(
                !r.spans.is_empty() && r.spans.len() <= 2,
                "{} spans in a batch of at most 2",
                r.spans.len()
            );
            got.extend(r.spans);
        }
        let names: Vec<&str> = got.iter().map(|s| &*s.name).collect();
        assert_eq!(names, ["span 0", "span 1", "span 2", "span 3", "span 4"]);
        wait_until("5 exported", || exporter.exported() == 5);
        assert_eq!((exporter.dropped(), exporter.failed()), (0, 0));
        assert_eq!(
            collector.connections.load(Relaxed),
            1,
            "one kept-alive connection"
        );
    }

    #[test]
    fn a_collector_that_closes_each_connection_gets_every_batch_on_a_new_one() {
        let collector = Collector::start(Answer { close: true, ..ok() });
        let exporter = Exporter::start(
            &collector.addr.to_string(),
            "web",
            options(64, 1, Duration::from_millis(1)),
            by_name(),
        )
        .unwrap();
        for i in 0..3 {
            exporter.queue(format!("span {i}").as_bytes());
            assert_eq!(collector.next("a batch").spans[0].name, format!("span {i}"));
            wait_until("exported", || exporter.exported() == i + 1);
        }
        assert_eq!(exporter.failed(), 0);
        assert_eq!(collector.connections.load(Relaxed), 3);
    }

    #[test]
    fn a_refusing_collector_counts_failed_spans() {
        let collector = Collector::start(Answer {
            status: 500,
            ..Default::default()
        });
        let exporter = Exporter::start(
            &collector.addr.to_string(),
            "web",
            options(64, 3, Duration::from_secs(60)),
            by_name(),
        )
        .unwrap();
        for i in 0..3 {
            exporter.queue(format!("span {i}").as_bytes());
        }
        assert_eq!(collector.next("a full batch").spans.len(), 3);
        wait_until("3 failed", || exporter.failed() == 3);
        assert_eq!((exporter.exported(), exporter.dropped()), (0, 0));
    }

    #[test]
    fn a_partial_success_counts_what_the_collector_rejected() {
        let partial = proto::ExportTraceServiceResponse {
            partial_success: Some(proto::ExportTracePartialSuccess {
                rejected_spans: 1,
                error_message: "too old".into(),
            }),
        };
        let collector = Collector::start(Answer {
            body: partial.encode_to_vec(),
            ..ok()
        });
        let exporter = Exporter::start(
            &collector.addr.to_string(),
            "web",
            options(64, 3, Duration::from_secs(60)),
            by_name(),
        )
        .unwrap();
        for i in 0..3 {
            exporter.queue(format!("span {i}").as_bytes());
        }
        collector.next("a full batch");
        wait_until("1 failed", || exporter.failed() == 1);
        assert_eq!(exporter.exported(), 2);
    }

    #[test]
    fn an_unreachable_collector_counts_failed_spans() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let exporter = Exporter::start(
            &closed.to_string(),
            "web",
            options(64, 2, Duration::from_secs(60)),
            by_name(),
        )
        .unwrap();
        exporter.queue("a".as_bytes());
        exporter.queue("b".as_bytes());
        wait_until("2 failed", || exporter.failed() == 2);
        assert_eq!(exporter.exported(), 0);
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_the_rest_is_flushed_at_drop() {
        let gate = Arc::new(Semaphore::new(0));
        let collector = Collector::start(Answer {
            gate: Some(gate.clone()),
            ..ok()
        });
        let exporter = Exporter::start(
            &collector.addr.to_string(),
            "web",
            options(2, 1, Duration::from_secs(60)),
            by_name(),
        )
        .unwrap();
        exporter.queue("in flight".as_bytes());
        // The worker is now waiting on the collector with that span: the queue holds 2 more.
        collector.next("the first batch");
        for i in 0..5 {
            exporter.queue(format!("queued {i}").as_bytes());
        }
        assert_eq!(exporter.dropped(), 3);
        gate.add_permits(100);
        drop(exporter);
        let flushed: Vec<String> = (0..2)
            .map(|_| collector.next("the flush").spans[0].name.clone())
            .collect();
        assert_eq!(flushed, ["queued 0", "queued 1"]);
    }

    #[test]
    fn a_collector_that_never_answers_holds_the_drop_only_about_timeout() {
        let gate = Arc::new(Semaphore::new(0));
        let collector = Collector::start(Answer {
            gate: Some(gate.clone()),
            ..ok()
        });
        let mut options = options(8, 1, Duration::from_secs(60));
        options.timeout = Duration::from_millis(200);
        let exporter = Exporter::start(&collector.addr.to_string(), "web", options, by_name()).unwrap();
        exporter.queue("in flight".as_bytes());
        collector.next("the first batch");
        for i in 0..3 {
            exporter.queue(format!("queued {i}").as_bytes());
        }
        let counters = exporter.counters.clone();
        drop(exporter);
        // In flight: timed out. Then one batch tried within the flush's
        // deadline and the rest given up when it passed: all counted failed.
        assert_eq!(counters.failed.load(Relaxed), 4);
        assert_eq!(counters.exported.load(Relaxed), 0);
        gate.add_permits(100);
    }

    #[test]
    fn dropping_the_exporter_sends_what_waits_for_its_interval() {
        let collector = Collector::start(ok());
        let exporter = Exporter::start(
            &collector.addr.to_string(),
            "web",
            options(64, 512, Duration::from_secs(3600)),
            by_name(),
        )
        .unwrap();
        exporter.queue("a".as_bytes());
        exporter.queue("b".as_bytes());
        drop(exporter);
        let r = collector
            .received
            .try_recv()
            .expect("flushed before drop returned");
        assert_eq!(r.spans.iter().map(|s| &*s.name).collect::<Vec<_>>(), ["a", "b"]);
    }
}
