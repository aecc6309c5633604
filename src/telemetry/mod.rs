//! What the proxy tells about requests beyond metrics: access logs, tap and
//! traces. All of it hangs off the `observe` stage, and none of it costs a
//! request more than a load or two while nobody listens.

pub mod access_log;
pub mod otlp;
pub mod summary;
pub mod tap;
pub mod trace;

pub use summary::Summary;

use std::sync::Arc;

/// Who wants to hear about requests, for one running proxy.
#[derive(Default)]
pub struct Telemetry {
    pub taps: Arc<tap::Taps>,
}

impl Telemetry {
    /// Whether a request on this listener needs its summary gathered.
    #[inline]
    pub fn wants_summary(&self) -> bool {
        self.taps.active()
    }

    /// Hands a finished request's summary to whoever wants it.
    pub fn publish(&self, summary: &Summary) {
        if self.taps.active() {
            self.taps.publish(summary);
        }
    }
}
