//! Calendar dates from Unix time, in UTC: for the `Date` header and for
//! access logs, without a date library.

/// A moment in UTC, to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    /// 1 to 12.
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    /// 0 is Monday.
    pub weekday: u32,
}

impl Civil {
    pub fn from_unix(secs: u64) -> Self {
        let days = secs / 86_400;
        let in_day = secs % 86_400;
        // Days to a civil date, counting in 400-year eras that start on 1 March.
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z - era * 146_097;
        let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let shifted_month = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
        let month = if shifted_month < 10 {
            shifted_month + 3
        } else {
            shifted_month - 9
        };
        Civil {
            year: year_of_era + era * 400 + i64::from(month <= 2),
            month: month as u32,
            day: day as u32,
            hour: (in_day / 3600) as u32,
            minute: (in_day % 3600 / 60) as u32,
            second: (in_day % 60) as u32,
            // 1970-01-01 was a Thursday.
            weekday: ((days + 3) % 7) as u32,
        }
    }

    /// The moment `t` (the epoch for one before it), and its milliseconds.
    pub fn at(t: std::time::SystemTime) -> (Self, u32) {
        let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        (Civil::from_unix(since.as_secs()), since.subsec_millis())
    }

    pub fn month_abbr(&self) -> &'static str {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        MONTHS[self.month as usize - 1]
    }

    pub fn weekday_abbr(&self) -> &'static str {
        const WEEKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
        WEEKDAYS[self.weekday as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_across_leap_years_and_centuries() {
        let c = Civil::from_unix(951_782_400);
        assert_eq!((c.year, c.month, c.day, c.weekday_abbr()), (2000, 2, 29, "Tue"));
        let c = Civil::from_unix(1_795_651_199);
        assert_eq!((c.year, c.month, c.day), (2026, 11, 25));
        assert_eq!((c.hour, c.minute, c.second), (23, 59, 59));
        let c = Civil::from_unix(4_107_542_400);
        assert_eq!(
            (c.year, c.month_abbr(), c.day, c.weekday_abbr()),
            (2100, "Mar", 1, "Mon")
        );
        let c = Civil::from_unix(0);
        assert_eq!((c.year, c.month, c.day, c.weekday_abbr()), (1970, 1, 1, "Thu"));
    }
}
