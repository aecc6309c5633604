//! `Tap`: a live feed of request summaries that Python reads in batches
//! (the admin API's `/tap`), waiting without the GIL.

use super::errors::MeshcoreError;
use crate::telemetry::tap;
use pyo3::prelude::*;
use std::sync::Mutex;
use std::time::Duration;

/// The most summaries one `next` call returns.
const BATCH: usize = 256;

#[pyclass(module = "meshcore._core")]
pub struct Tap {
    /// None once closed.
    tap: Mutex<Option<std::sync::Arc<tap::Tap>>>,
}

impl Tap {
    pub fn new(tap: tap::Tap) -> Self {
        Tap {
            tap: Mutex::new(Some(std::sync::Arc::new(tap))),
        }
    }

    fn current(&self) -> Option<std::sync::Arc<tap::Tap>> {
        self.tap.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[pymethods]
impl Tap {
    /// The summaries that came, as JSON lines (one object each), waiting up
    /// to `timeout` seconds for the first: empty when none came. Raises
    /// MeshcoreError once closed.
    fn next(&self, py: Python<'_>, timeout: f64) -> PyResult<Vec<String>> {
        let tap = self
            .current()
            .ok_or_else(|| MeshcoreError::new_err("this tap is closed"))?;
        let wait = Duration::try_from_secs_f64(timeout.max(0.0)).unwrap_or(Duration::from_secs(60));
        Ok(py.detach(|| {
            let mut line = Vec::with_capacity(512);
            tap.next_batch(wait, BATCH)
                .iter()
                .map(|summary| {
                    line.clear();
                    summary.json_line(&mut line);
                    line.pop(); // the newline
                    String::from_utf8_lossy(&line).into_owned()
                })
                .collect()
        }))
    }

    /// Summaries this tap missed because it was read too slowly.
    fn dropped(&self) -> u64 {
        self.current().map_or(0, |t| t.dropped())
    }

    /// Stops the feed; requests no longer pay for it once every tap is closed.
    fn close(&self) {
        self.tap.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}
