//! Text that telemetry writes for every request (addresses, times, numbers),
//! written straight into bytes: `core::fmt` costs more than the line it
//! formats, and a second's date is worked out once per second, not per line.

use crate::time::civil::Civil;
use std::cell::Cell;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

/// "10.0.0.7", "::1".
pub fn push_ip(ip: IpAddr, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    drop(write_ip(ip, out));
}

/// "10.0.0.7:8080", "[::1]:80".
pub fn push_addr(addr: SocketAddr, out: &mut Vec<u8>) {
    drop(write_addr(addr, out));
}

/// `push_addr` into a buffer on the stack (the longest address is 58 bytes).
pub fn addr_text(addr: SocketAddr, buf: &mut [u8; 64]) -> &str {
    let mut rest = &mut buf[..];
    let written = match write_addr(addr, &mut rest) {
        Ok(()) => 64 - rest.len(),
        Err(_) => 0,
    };
    std::str::from_utf8(&buf[..written]).unwrap_or("")
}

fn write_ip(ip: IpAddr, out: &mut impl Write) -> std::io::Result<()> {
    match ip {
        IpAddr::V4(v4) => {
            let mut itoa = itoa::Buffer::new();
            let [a, b, c, d] = v4.octets();
            out.write_all(itoa.format(a).as_bytes())?;
            for octet in [b, c, d] {
                out.write_all(b".")?;
                out.write_all(itoa.format(octet).as_bytes())?;
            }
            Ok(())
        }
        IpAddr::V6(v6) => write!(out, "{v6}"),
    }
}

fn write_addr(addr: SocketAddr, out: &mut impl Write) -> std::io::Result<()> {
    match addr {
        SocketAddr::V4(v4) => {
            write_ip(IpAddr::V4(*v4.ip()), out)?;
            out.write_all(b":")?;
            out.write_all(itoa::Buffer::new().format(v4.port()).as_bytes())
        }
        SocketAddr::V6(v6) => write!(out, "{v6}"),
    }
}

/// RFC 3339 in UTC with milliseconds: "2026-12-03T09:41:07.123Z".
pub fn rfc3339_millis(t: SystemTime, out: &mut Vec<u8>) {
    thread_local! {
        static SECOND: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
    }
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let prefix = per_second(&SECOND, since.as_secs(), |c, p| {
        let year = c.year.clamp(0, 9999) as u32;
        digits(year, &mut p[0..4]);
        p[4] = b'-';
        digits(c.month, &mut p[5..7]);
        p[7] = b'-';
        digits(c.day, &mut p[8..10]);
        p[10] = b'T';
        digits(c.hour, &mut p[11..13]);
        p[13] = b':';
        digits(c.minute, &mut p[14..16]);
        p[16] = b':';
        digits(c.second, &mut p[17..19]);
        p[19] = b'.';
    });
    out.extend_from_slice(&prefix);
    let mut millis = [0u8; 4];
    digits(since.subsec_millis(), &mut millis[..3]);
    millis[3] = b'Z';
    out.extend_from_slice(&millis);
}

/// The Common Log Format's time, in UTC: "03/Dec/2026:09:41:07 +0000".
pub fn clf_time(t: SystemTime, out: &mut Vec<u8>) {
    thread_local! {
        static SECOND: Cell<(u64, [u8; 26])> = const { Cell::new((u64::MAX, [0; 26])) };
    }
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let text = per_second(&SECOND, secs, |c, p| {
        digits(c.day, &mut p[0..2]);
        p[2] = b'/';
        p[3..6].copy_from_slice(c.month_abbr().as_bytes());
        p[6] = b'/';
        digits(c.year.clamp(0, 9999) as u32, &mut p[7..11]);
        p[11] = b':';
        digits(c.hour, &mut p[12..14]);
        p[14] = b':';
        digits(c.minute, &mut p[15..17]);
        p[17] = b':';
        digits(c.second, &mut p[18..20]);
        p[20..26].copy_from_slice(b" +0000");
    });
    out.extend_from_slice(&text);
}

/// The text of second `secs`, from this thread's cache of the last one.
fn per_second<const N: usize>(
    cache: &'static std::thread::LocalKey<Cell<(u64, [u8; N])>>,
    secs: u64,
    write: impl FnOnce(&Civil, &mut [u8; N]),
) -> [u8; N] {
    cache.with(|cell| {
        let (cached, text) = cell.get();
        if cached == secs {
            return text;
        }
        let mut text = [0; N];
        write(&Civil::from_unix(secs), &mut text);
        cell.set((secs, text));
        text
    })
}

/// `n` in decimal, zero-padded to fill `out` (its lowest digits if longer).
fn digits(mut n: u32, out: &mut [u8]) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// Milliseconds to the microsecond as a JSON number, the shortest form of
/// the value rounded to three decimals: "1.235", "0.5", "2.0".
pub fn millis3(ms: f64, out: &mut Vec<u8>) {
    let micros = (ms * 1000.0).round();
    if !(0.0..1e15).contains(&micros) {
        // Not a duration this proxy measures; serde_json writes it as JSON can.
        drop(serde_json::to_writer(&mut *out, &(micros / 1000.0)));
        return;
    }
    let micros = micros as u64;
    let mut itoa = itoa::Buffer::new();
    out.extend_from_slice(itoa.format(micros / 1000).as_bytes());
    out.push(b'.');
    let mut frac = [0u8; 3];
    digits((micros % 1000) as u32, &mut frac);
    let kept = frac.iter().rposition(|&d| d != b'0').map_or(1, |i| i + 1);
    out.extend_from_slice(&frac[..kept]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn text(write: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        write(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn addresses_read_as_std_displays_them() {
        let addrs = [
            "10.0.0.7:8080",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "[::1]:80",
            "[fe80::1%2]:443",
        ];
        for addr in addrs {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(text(|o| push_addr(addr, o)), addr.to_string());
            assert_eq!(text(|o| push_ip(addr.ip(), o)), addr.ip().to_string());
            assert_eq!(addr_text(addr, &mut [0; 64]), addr.to_string());
        }
        let longest: SocketAddr = "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255%4294967295]:65535"
            .parse()
            .unwrap();
        assert_eq!(addr_text(longest, &mut [0; 64]), longest.to_string());
    }

    #[test]
    fn times_are_zero_padded_and_follow_the_second() {
        type Writer = fn(SystemTime, &mut Vec<u8>);
        // In order: each second after the first comes from the same thread's cache.
        let cases: [(Writer, u64, &str); 6] = [
            (rfc3339_millis, 7, "1970-01-01T00:00:00.007Z"),
            (rfc3339_millis, 1_795_651_199_042, "2026-11-25T23:59:59.042Z"),
            (rfc3339_millis, 1_795_651_200_999, "2026-11-26T00:00:00.999Z"),
            (clf_time, 1_795_651_199_042, "25/Nov/2026:23:59:59 +0000"),
            (clf_time, 1_795_651_200_000, "26/Nov/2026:00:00:00 +0000"),
            (clf_time, 0, "01/Jan/1970:00:00:00 +0000"),
        ];
        for (write, ms, expected) in cases {
            let at = UNIX_EPOCH + Duration::from_millis(ms);
            assert_eq!(text(|o| write(at, o)), expected);
        }
    }

    #[test]
    fn milliseconds_read_as_their_rounded_float_does() {
        for ms in [
            0.0,
            0.0004,
            0.0005,
            0.5,
            1.0,
            1.23456,
            2.1,
            999.9996,
            12_345.678_9,
            3.0e9,
        ] {
            let rounded = (ms * 1000.0_f64).round() / 1000.0;
            let expected = serde_json::to_string(&rounded).unwrap();
            assert_eq!(text(|o| millis3(ms, o)), expected, "{ms}");
        }
    }
}
