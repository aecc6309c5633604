//! A load generator: constant-rate open loop corrected for coordinated
//! omission (each request is timed from when it should have been sent, as
//! wrk2 does, on the schedule a generator without timer lateness would have
//! kept), or a closed "max" loop; HTTP/1.1 or HTTP/2, with or without
//! TLS. Latencies go to an HDR histogram in microseconds.

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Plan {
    pub url: http::Uri,
    /// Requests per second in total; None runs closed-loop as fast as possible.
    pub rate: Option<f64>,
    pub duration: Duration,
    pub connections: usize,
    pub http2: bool,
    /// Concurrent streams per HTTP/2 connection.
    pub streams: usize,
    pub timeout: Duration,
    /// Sent as Host (HTTP/1.1) or :authority (HTTP/2) instead of the URL's,
    /// to reach a host route on a proxy at a loopback address.
    pub host: Option<String>,
}

#[derive(Debug, Default)]
pub struct Progress {
    pub completed: AtomicU64,
    pub errors: AtomicU64,
    /// Set to end the run before its duration.
    pub stop: AtomicBool,
}

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub requests: u64,
    pub seconds: f64,
    pub rps: f64,
    pub target_rps: Option<f64>,
    pub latency_ms: BTreeMap<String, f64>,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: BTreeMap<String, u64>,
    /// Requests sent again on a new connection because the server had
    /// closed the old one without taking them (a graceful close, a GOAWAY
    /// above them), as any HTTP client does; not errors.
    pub resent: u64,
    pub bytes: u64,
    /// (percentile, latency ms) for plotting.
    pub distribution: Vec<(f64, f64)>,
}

struct Tally {
    histogram: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    resent: u64,
    bytes: u64,
}

impl Tally {
    fn new() -> Self {
        Tally {
            histogram: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
            statuses: BTreeMap::new(),
            errors: BTreeMap::new(),
            resent: 0,
            bytes: 0,
        }
    }

    fn merge(&mut self, other: Tally) {
        let _ = self.histogram.add(&other.histogram);
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.resent += other.resent;
        self.bytes += other.bytes;
    }
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// Benchmarks measure speed, not trust: like wrk, the client does not verify certificates.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

struct Target {
    addr: String,
    authority: String,
    path: String,
    tls: Option<tokio_rustls::TlsConnector>,
    http2: bool,
}

impl Target {
    fn new(plan: &Plan) -> Result<Self, String> {
        let tls = match plan.url.scheme_str() {
            Some("https") => true,
            Some("http") | None => false,
            Some(other) => return Err(format!("unsupported scheme {other:?}")),
        };
        let authority = plan
            .url
            .authority()
            .ok_or("the URL needs a host and port")?
            .to_string();
        let authority = plan.host.clone().unwrap_or(authority);
        let port = plan.url.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let host = plan
            .url
            .host()
            .unwrap_or("127.0.0.1")
            .trim_matches(['[', ']'])
            .to_string();
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let connector = tls.then(|| {
            // X25519 only, as the usual load tools (wrk, h2load on OpenSSL 3.0) offer: every
            // peer then does the same handshake, whatever it would prefer.
            let provider = Arc::new(rustls::crypto::CryptoProvider {
                kx_groups: vec![rustls::crypto::aws_lc_rs::kx_group::X25519],
                ..rustls::crypto::aws_lc_rs::default_provider()
            });
            let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("default versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
                .with_no_client_auth();
            config.alpn_protocols = vec![if plan.http2 {
                b"h2".to_vec()
            } else {
                b"http/1.1".to_vec()
            }];
            tokio_rustls::TlsConnector::from(Arc::new(config))
        });
        Ok(Target {
            addr,
            authority,
            path: plan.url.path_and_query().map_or("/", |p| p.as_str()).to_string(),
            tls: connector,
            http2: plan.http2,
        })
    }

    async fn connect(&self) -> Result<Box<dyn Io>, String> {
        let tcp = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|_| "connect")?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(c) => {
                let name = rustls_pki_types::ServerName::try_from("localhost").expect("valid name");
                Ok(Box::new(c.connect(name, tcp).await.map_err(|_| "tls")?))
            }
        }
    }

    fn request(&self) -> Request<Empty<Bytes>> {
        let mut builder = Request::get(self.path.as_str());
        if self.http2 {
            let scheme = if self.tls.is_some() { "https" } else { "http" };
            builder = Request::get(format!("{scheme}://{}{}", self.authority, self.path));
        } else {
            builder = builder.header(http::header::HOST, self.authority.as_str());
        }
        builder.body(Empty::new()).expect("valid request")
    }
}

enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

async fn open(target: &Target) -> Result<Sender, String> {
    let io = TokioIo::new(target.connect().await?);
    if target.http2 {
        let (s, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|_| "handshake")?;
        tokio::spawn(conn);
        Ok(Sender::H2(s))
    } else {
        let (s, conn) = http1::handshake(io).await.map_err(|_| "handshake")?;
        tokio::spawn(conn);
        Ok(Sender::H1(s))
    }
}

/// Why a request got no answer.
enum Unanswered {
    /// The server closed the connection, or refused the stream, before it
    /// took the request: it goes out again on a new connection.
    Unsent,
    Failed(&'static str),
}

/// Sends one request; Ok((status, body bytes)) or why there is none.
async fn send(sender: &mut Sender, target: &Target) -> Result<(u16, u64), Unanswered> {
    let resp = match sender {
        Sender::H1(s) => {
            s.ready().await.map_err(|_| Unanswered::Unsent)?;
            s.send_request(target.request()).await
        }
        Sender::H2(s) => {
            s.ready().await.map_err(|_| Unanswered::Unsent)?;
            s.send_request(target.request()).await
        }
    }
    .map_err(
        |e| match e.is_canceled() || crate::upstream::refused_unprocessed(&e) {
            true => Unanswered::Unsent,
            false => Unanswered::Failed("http"),
        },
    )?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|_| Unanswered::Failed("body"))?;
    Ok((status, body.to_bytes().len() as u64))
}

/// How many times in a row a request goes out again before it counts as failed.
const MAX_RESENDS: u32 = 3;

/// One closed or paced loop of requests over a shared or own connection.
async fn lane(
    target: Arc<Target>,
    shared: Option<http2::SendRequest<Empty<Bytes>>>,
    interval: Option<Duration>,
    start: Instant,
    plan: Arc<Plan>,
    progress: Arc<Progress>,
) -> Tally {
    let mut tally = Tally::new();
    let end = start + plan.duration;
    let mut sender: Option<Sender> = shared.map(Sender::H2);
    let mut n: u32 = 0;
    // When this lane would have been free again had every request gone out on
    // time: the schedule a perfect generator would have kept.
    let mut ideal_free = start;
    let mut resends = 0;
    loop {
        let intended = match interval {
            Some(i) => start + i * n,
            None => Instant::now(),
        };
        if intended >= end || progress.stop.load(Relaxed) {
            break;
        }
        if interval.is_some() {
            tokio::time::sleep_until(tokio::time::Instant::from_std(intended)).await;
        }
        n += 1;
        let sent = Instant::now();
        if sender.is_none() {
            match open(&target).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    *tally.errors.entry(e).or_default() += 1;
                    progress.errors.fetch_add(1, Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let s = sender.as_mut().expect("connected above");
        let outcome = tokio::time::timeout(plan.timeout, send(s, &target)).await;
        // Coordinated omission: a request held back by slow earlier answers is
        // timed from when it should have gone out. Lateness of this generator's
        // own (tokio's 1 ms) timer is not the server's doing, so the wait is
        // taken from the ideal schedule, not from when the request really left.
        let ideal_sent = intended.max(ideal_free);
        ideal_free = ideal_sent + sent.elapsed();
        match outcome {
            Ok(Ok((status, bytes))) => {
                resends = 0;
                let micros = ideal_free.duration_since(intended).as_micros().max(1) as u64;
                let _ = tally.histogram.record(micros.min(3_600_000_000));
                *tally.statuses.entry(status).or_default() += 1;
                tally.bytes += bytes;
                progress.completed.fetch_add(1, Relaxed);
            }
            Ok(Err(Unanswered::Unsent)) if resends < MAX_RESENDS => {
                // The same request again, on a new connection, timed from
                // when it was first due.
                resends += 1;
                tally.resent += 1;
                n -= 1;
                sender = None;
            }
            Ok(Err(e)) => {
                resends = 0;
                let e = match e {
                    Unanswered::Unsent => "connection",
                    Unanswered::Failed(e) => e,
                };
                *tally.errors.entry(e.to_string()).or_default() += 1;
                progress.errors.fetch_add(1, Relaxed);
                if !matches!(sender, Some(Sender::H2(_))) || e == "connection" {
                    sender = None;
                }
            }
            Err(_) => {
                resends = 0;
                *tally.errors.entry("timeout".into()).or_default() += 1;
                progress.errors.fetch_add(1, Relaxed);
                sender = None;
            }
        }
    }
    tally
}

pub fn run(plan: Plan, progress: Arc<Progress>) -> Result<Report, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let plan = Arc::new(plan);
    let target = Arc::new(Target::new(&plan)?);
    runtime.block_on(async move {
        let connections = plan.connections.max(1);
        let per_conn = if plan.http2 { plan.streams.max(1) } else { 1 };
        let lanes = connections * per_conn;
        let interval = plan
            .rate
            .map(|r| Duration::from_secs_f64(lanes as f64 / r.max(0.001)));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..connections {
            let shared = if plan.http2 {
                match open(&target).await {
                    Ok(Sender::H2(s)) => Some(s),
                    _ => return Err(format!("cannot open HTTP/2 connection {c} to {}", target.addr)),
                }
            } else {
                None
            };
            for lane_no in 0..per_conn {
                // Stagger lanes so a paced run sends evenly, not in bursts.
                let offset = interval.map_or(Duration::ZERO, |i| {
                    i * (c * per_conn + lane_no) as u32 / lanes as u32
                });
                tasks.push(tokio::spawn(lane(
                    target.clone(),
                    shared.clone(),
                    interval,
                    start + offset,
                    plan.clone(),
                    progress.clone(),
                )));
            }
        }
        let mut total = Tally::new();
        for t in tasks {
            total.merge(t.await.map_err(|e| e.to_string())?);
        }
        let seconds = start.elapsed().as_secs_f64();
        let h = &total.histogram;
        let ms = |v: u64| v as f64 / 1000.0;
        let mut latency = BTreeMap::new();
        for (name, q) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9)] {
            latency.insert(name.to_string(), ms(h.value_at_percentile(q)));
        }
        latency.insert("max".into(), ms(h.max()));
        latency.insert("mean".into(), h.mean() / 1000.0);
        let distribution = [
            0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0,
        ]
        .iter()
        .map(|&q| (q, ms(h.value_at_percentile(q))))
        .collect();
        let requests = h.len();
        Ok(Report {
            requests,
            seconds,
            // Measured, not planned: a server that cannot keep up with a paced
            // run finishes its requests late, and its rate must show it.
            rps: requests as f64 / seconds.max(1e-9),
            target_rps: plan.rate,
            latency_ms: latency,
            statuses: total.statuses,
            errors: total.errors,
            resent: total.resent,
            bytes: total.bytes,
            distribution,
        })
    })
}
