//! The Prometheus text format, written in this one place: HELP and TYPE
//! lines, samples, histograms, and the one escape for label values.

use std::fmt::{Display, Write};

/// A family's kind, as its TYPE line names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A family's HELP and TYPE lines.
pub fn header(out: &mut String, name: &str, kind: Kind, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {}", kind.as_str());
}

/// One series' labels, escaped once and written into each of its samples.
/// Keys keep the order they were added in.
#[derive(Clone, Debug, Default)]
pub struct Labels(String);

impl Labels {
    pub fn new() -> Self {
        Labels::default()
    }

    /// Adds `key="value"`, the value escaped.
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.push(key, value);
        self
    }

    pub fn push(&mut self, key: &str, value: &str) {
        if !self.0.is_empty() {
            self.0.push(',');
        }
        self.0.push_str(key);
        self.0.push_str("=\"");
        escape(&mut self.0, value);
        self.0.push('"');
    }
}

/// One sample: `name{labels} value`, or `name value` without labels.
pub fn sample(out: &mut String, name: &str, labels: &Labels, value: impl Display) {
    series(out, name, "", labels, None, value);
}

/// One histogram series: cumulative `_bucket` lines for each (upper bound,
/// observations in that bucket alone), the `+Inf` bucket, `_sum` and `_count`.
pub fn histogram<B: Display>(
    out: &mut String,
    name: &str,
    labels: &Labels,
    buckets: impl IntoIterator<Item = (B, u64)>,
    sum: impl Display,
    count: u64,
) {
    let mut cumulative = 0;
    for (bound, in_bucket) in buckets {
        cumulative += in_bucket;
        series(out, name, "_bucket", labels, Some(&bound), cumulative);
    }
    series(out, name, "_bucket", labels, Some(&"+Inf"), count);
    series(out, name, "_sum", labels, None, sum);
    series(out, name, "_count", labels, None, count);
}

fn series(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &Labels,
    le: Option<&dyn Display>,
    value: impl Display,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.0.is_empty() || le.is_some() {
        out.push('{');
        out.push_str(&labels.0);
        if let Some(le) = le {
            let comma = if labels.0.is_empty() { "" } else { "," };
            let _ = write!(out, "{comma}le=\"{le}\"");
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Appends a label value as the text format needs it: backslash, double
/// quote and line feed escaped; everything else, non-ASCII included, as it is.
fn escape(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A float written as Python's `repr` writes it (`1e-05`, `0.0001`, `2.0`):
/// the plugin families were first rendered by Python, and their bucket bounds
/// and sums keep that spelling.
pub struct PyFloat(pub f64);

impl Display for PyFloat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        if v.is_nan() {
            return f.write_str("nan");
        }
        if v.is_infinite() {
            return f.write_str(if v > 0.0 { "inf" } else { "-inf" });
        }
        if v == 0.0 {
            return f.write_str(if v.is_sign_negative() { "-0.0" } else { "0.0" });
        }
        // Rust's `{:e}` gives the shortest digits that read back as `v`, as repr does.
        let scientific = format!("{:e}", v.abs());
        let (mantissa, exponent) = scientific
            .split_once('e')
            .expect("{:e} always writes an exponent");
        let exponent: i32 = exponent.parse().expect("{:e} writes a decimal exponent");
        let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
        if v < 0.0 {
            f.write_str("-")?;
        }
        if !(-4..16).contains(&exponent) {
            let sign = if exponent < 0 { '-' } else { '+' };
            return write!(f, "{mantissa}e{sign}{:02}", exponent.abs());
        }
        if exponent < 0 {
            let zeros = "0".repeat((-exponent - 1) as usize);
            return write!(f, "0.{zeros}{digits}");
        }
        let whole = exponent as usize + 1;
        if digits.len() <= whole {
            let zeros = "0".repeat(whole - digits.len());
            write!(f, "{digits}{zeros}.0")
        } else {
            write!(f, "{}.{}", &digits[..whole], &digits[whole..])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_escape_backslash_quote_and_newline_only() {
        let labels = Labels::new().with("a", "a\"b\\c\nd").with("b", "wéb\t");
        assert_eq!(labels.0, "a=\"a\\\"b\\\\c\\nd\",b=\"wéb\t\"");
    }

    #[test]
    fn samples_escape_their_label_values() {
        let mut out = String::new();
        let labels = Labels::new().with("dst_service", "we\"b\\\n").with("state", "a");
        sample(&mut out, "x", &labels, 1);
        assert_eq!(out, "x{dst_service=\"we\\\"b\\\\\\n\",state=\"a\"} 1\n");
    }

    #[test]
    fn a_sample_without_labels_has_no_braces() {
        let mut out = String::new();
        sample(&mut out, "x", &Labels::new(), 3);
        assert_eq!(out, "x 3\n");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let mut out = String::new();
        let labels = Labels::new().with("a", "b");
        histogram(&mut out, "h", &labels, [(1, 2), (5, 0), (10, 1)], 7.5, 4);
        let expected = "h_bucket{a=\"b\",le=\"1\"} 2\nh_bucket{a=\"b\",le=\"5\"} 2\n\
                        h_bucket{a=\"b\",le=\"10\"} 3\nh_bucket{a=\"b\",le=\"+Inf\"} 4\n\
                        h_sum{a=\"b\"} 7.5\nh_count{a=\"b\"} 4\n";
        assert_eq!(out, expected);
        let mut bare = String::new();
        histogram(&mut bare, "h", &Labels::new(), [(1, 1)], 0, 1);
        assert!(
            bare.starts_with("h_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 0\n"),
            "{bare}"
        );
    }

    #[test]
    fn floats_are_spelled_as_python_repr_spells_them() {
        // Each pair: a value and what Python's repr(value) prints.
        let cases = [
            (0.00001, "1e-05"),
            (0.000025, "2.5e-05"),
            (0.00005, "5e-05"),
            (0.0001, "0.0001"),
            (0.00025, "0.00025"),
            (0.025, "0.025"),
            (1.0, "1.0"),
            (0.0, "0.0"),
            (2.5, "2.5"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1.2345678e-7, "1.2345678e-07"),
            (123456.789, "123456.789"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e300, "1.5e+300"),
            (-0.00001, "-1e-05"),
            (-3.0, "-3.0"),
            (3.0001220703125e-05, "3.0001220703125e-05"),
        ];
        for (value, repr) in cases {
            assert_eq!(PyFloat(value).to_string(), repr, "{value:e}");
        }
    }
}
