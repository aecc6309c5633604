//! The `Date` header for answers that lack one (the proxy's own), made once
//! a second per thread and shared by both server engines.

use crate::time::civil::Civil;
use std::cell::RefCell;
use std::time::SystemTime;

thread_local! {
    static DATE_NOW: RefCell<CachedDate> = const { RefCell::new(CachedDate { second: u64::MAX, text: String::new() }) };
}

/// Hands `f` the current `Date` value, as cached for this thread.
pub fn with_date<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    DATE_NOW.with(|d| f(d.borrow_mut().now().as_bytes()))
}

/// The `Date` for answers that lack one (the proxy's own), made once a second.
struct CachedDate {
    second: u64,
    text: String,
}

impl CachedDate {
    fn now(&mut self) -> &str {
        let second = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second != self.second {
            self.second = second;
            self.text = http_date(second);
        }
        &self.text
    }
}

/// An IMF-fixdate (RFC 9110, 5.6.7) from seconds since the Unix epoch.
fn http_date(secs: u64) -> String {
    let c = Civil::from_unix(secs);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        c.weekday_abbr(),
        c.day,
        c.month_abbr(),
        c.year,
        c.hour,
        c.minute,
        c.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_imf_fixdates() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(http_date(1_795_651_199), "Wed, 25 Nov 2026 23:59:59 GMT");
        assert_eq!(http_date(4_107_542_400), "Mon, 01 Mar 2100 00:00:00 GMT");
    }
}
