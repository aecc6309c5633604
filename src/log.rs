//! Log lines a client can cause, rate-limited per call site.
//!
//! A connection sending malformed requests, a slowloris, or descriptor
//! exhaustion would otherwise write a line per event. Each site prints at
//! most `BURST` lines per `WINDOW`; the next line it prints says how many
//! were suppressed. The detail is in metrics, which count every event.

use std::fmt::Arguments;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(10);
const BURST: u32 = 5;

pub struct Throttle(Mutex<State>);

struct State {
    window_start: Option<Instant>,
    printed: u32,
    suppressed: u64,
}

impl Throttle {
    pub const fn new() -> Self {
        Throttle(Mutex::new(State {
            window_start: None,
            printed: 0,
            suppressed: 0,
        }))
    }

    /// Prints `line` (prefixed "meshcore: ") unless this site is over its rate.
    pub fn log(&self, line: Arguments<'_>) {
        if let Some(suppressed) = self.admit(Instant::now()) {
            match suppressed {
                0 => eprintln!("meshcore: {line}"),
                n => eprintln!("meshcore: {line} ({n} similar lines suppressed)"),
            }
        }
    }

    /// Some(lines suppressed since the last printed one) if a line may be printed now.
    fn admit(&self, now: Instant) -> Option<u64> {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if s.window_start
            .is_none_or(|start| now.duration_since(start) >= WINDOW)
        {
            s.window_start = Some(now);
            s.printed = 0;
        }
        if s.printed >= BURST {
            s.suppressed += 1;
            return None;
        }
        s.printed += 1;
        Some(std::mem::take(&mut s.suppressed))
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

/// `throttled!(SITE, "format", args..)`: a rate-limited log line, with a
/// throttle of its own per call site.
#[macro_export]
macro_rules! throttled {
    ($($arg:tt)*) => {{
        static SITE: $crate::log::Throttle = $crate::log::Throttle::new();
        SITE.log(format_args!($($arg)*));
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_silence_then_a_count_of_what_was_dropped() {
        let t = Throttle::new();
        let start = Instant::now();
        let printed = (0..1000).filter(|_| t.admit(start).is_some()).count();
        assert_eq!(printed, BURST as usize);
        let next = t.admit(start + WINDOW);
        assert_eq!(next, Some(1000 - BURST as u64));
        assert_eq!(t.admit(start + WINDOW), Some(0));
    }
}
