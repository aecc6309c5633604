//! What the proxy tells about requests beyond metrics: access logs, tap and
//! traces. All of it hangs off the `observe` stage, and none of it costs a
//! request more than a load or two while nobody listens.

pub mod access_log;
pub mod otlp;
mod record;
pub mod retire;
mod spool;
pub mod summary;
pub mod tap;
mod text;
pub mod trace;
pub mod tracer;

pub use summary::Summary;
pub use tracer::{SpanStart, Tracer};

use crate::config::{AccessLogConfig, AccessLogFormat, Config};
use access_log::AccessLog;
use arc_swap::{ArcSwap, ArcSwapOption};
use retire::OffThread;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

/// Who wants to hear about requests, for one running proxy.
#[derive(Default)]
pub struct Telemetry {
    pub taps: Arc<tap::Taps>,
    logs: ArcSwap<AccessLogs>,
    logging: AtomicBool,
    tracer: ArcSwapOption<Tracer>,
    tracing: AtomicBool,
}

/// The access logs in use, by listener name, and by their settings: a
/// reload keeps the writer of a log whose settings did not change, and
/// listeners with the same settings share one.
#[derive(Default)]
struct AccessLogs {
    by_listener: HashMap<Arc<str>, Arc<OffThread<AccessLog>>>,
    by_settings: Vec<(AccessLogConfig, Arc<OffThread<AccessLog>>)>,
}

/// One access log's numbers, for `/metrics`.
pub struct AccessLogCounts {
    pub path: String,
    pub written: u64,
    pub dropped_behind: u64,
    pub dropped_write: u64,
}

impl Telemetry {
    /// Whether a request needs its summary gathered.
    #[inline]
    pub fn wants_summary(&self) -> bool {
        self.taps.active() || self.logging.load(Relaxed)
    }

    /// The tracer, when the config has `[tracing]`.
    #[inline]
    pub fn tracer(&self) -> Option<Arc<Tracer>> {
        match self.tracing.load(Relaxed) {
            true => self.tracer.load_full(),
            false => None,
        }
    }

    /// Applies a config's access logs and tracing. A log whose settings did
    /// not change is kept, not reopened, and so is the exporter of an
    /// unchanged collector. When one cannot be opened nothing changes, and
    /// the error names its field.
    pub fn configure(&self, config: &Config) -> Result<(), String> {
        let current = self.logs.load();
        let mut next = AccessLogs::default();
        for (i, listener) in config.listeners.iter().enumerate() {
            let Some(settings) = &listener.access_log else {
                continue;
            };
            let known = next.by_settings.iter().chain(&current.by_settings);
            let log = match known.into_iter().find(|(s, _)| s == settings) {
                Some((_, log)) => log.clone(),
                None => {
                    let log =
                        open_log(settings).map_err(|e| format!("listeners[{i}].access_log.path: {e}"))?;
                    Arc::new(OffThread::new(log))
                }
            };
            if !next.by_settings.iter().any(|(s, _)| s == settings) {
                next.by_settings.push((settings.clone(), log.clone()));
            }
            next.by_listener.insert(Arc::from(listener.name.as_str()), log);
        }
        let tracer = match &config.tracing {
            None => None,
            Some(settings) => {
                let current = self.tracer.load_full();
                let kept = current
                    .filter(|t| t.same_collector(settings))
                    .and_then(|t| t.exporter.clone());
                Some(Arc::new(Tracer::new(settings, kept)?))
            }
        };
        self.tracing.store(tracer.is_some(), Relaxed);
        self.tracer.store(tracer);
        self.logging.store(!next.by_listener.is_empty(), Relaxed);
        // The logs no longer used flush on a thread of their own (OffThread).
        self.logs.store(Arc::new(next));
        Ok(())
    }

    /// Stops telemetry when the proxy stops (its workers gone): every log
    /// writes what is queued and the exporter sends its last spans, here.
    pub fn shutdown(&self) {
        self.logging.store(false, Relaxed);
        self.tracing.store(false, Relaxed);
        let logs = self.logs.swap(Arc::default());
        if let Some(tracer) = self.tracer.swap(None).and_then(Arc::into_inner) {
            if let Some(exporter) = tracer.exporter.and_then(Arc::into_inner) {
                drop(exporter.into_inner());
            }
        }
        if let Some(logs) = Arc::into_inner(logs) {
            drop(logs.by_listener);
            for (_, log) in logs.by_settings {
                // A log some straggler still holds is flushed when it lets go.
                drop(Arc::into_inner(log).and_then(OffThread::into_inner));
            }
        }
    }

    /// Hands a finished request's summary (and span) to whoever wants it.
    /// The access log and the exporter get it packed, once for both: they
    /// format on their own threads.
    pub fn publish(&self, summary: &Summary, span: Option<SpanStart>) {
        if self.taps.active() {
            self.taps.publish(summary);
        }
        let span = span.filter(|s| s.export);
        let tracer = span.map(|_| self.tracer.load());
        let exporter = tracer
            .as_ref()
            .and_then(|t| t.as_ref())
            .and_then(|t| t.exporter.as_deref());
        let logs = self.logging.load(Relaxed).then(|| self.logs.load());
        let log = logs.as_ref().and_then(|l| l.by_listener.get(&*summary.listener));
        if exporter.is_none() && log.is_none() {
            return;
        }
        spool::with_scratch(|record| {
            record::pack(summary, span.as_ref(), record);
            if let Some(exporter) = exporter {
                exporter.queue(record);
            }
            if let Some(log) = log {
                log.queue(record);
            }
        });
    }

    /// Each access log's lines written and dropped.
    pub fn access_log_counts(&self) -> Vec<AccessLogCounts> {
        let logs = self.logs.load();
        logs.by_settings
            .iter()
            .map(|(settings, log)| AccessLogCounts {
                path: settings.path.clone(),
                written: log.written(),
                dropped_behind: log.dropped_behind(),
                dropped_write: log.dropped_write(),
            })
            .collect()
    }
}

fn open_log(settings: &AccessLogConfig) -> std::io::Result<AccessLog> {
    let target = match settings.path.as_str() {
        "stdout" => access_log::Target::Stdout,
        path => access_log::Target::File(path.into()),
    };
    let format = match settings.format {
        AccessLogFormat::Json => access_log::Format::Json,
        AccessLogFormat::Common => access_log::Format::Common,
    };
    AccessLog::open(target, format, settings.buffer)
}
