//! Protocol detection from a connection's first bytes.

use bytes::{Bytes, BytesMut};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Linkerd reads at most this much before giving up on HTTP.
pub const MAX_DETECT_BYTES: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Opaque,
    /// The client closed before sending anything (a health check's connect).
    Closed,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Is(Protocol),
    NeedMore,
}

fn classify(buf: &[u8]) -> Verdict {
    if buf.is_empty() {
        return Verdict::NeedMore;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Verdict::Is(Protocol::Http2)
        } else {
            Verdict::NeedMore
        };
    }
    if let Some(eol) = buf.iter().position(|&b| b == b'\n') {
        let line = buf[..eol].strip_suffix(b"\r").unwrap_or(&buf[..eol]);
        return Verdict::Is(if is_http1_request_line(line) {
            Protocol::Http1
        } else {
            Protocol::Opaque
        });
    }
    let method_so_far = buf.split(|&b| b == b' ').next().unwrap_or_default();
    let plausible = method_so_far.len() <= MAX_METHOD && is_method(method_so_far);
    if plausible && buf.len() < MAX_DETECT_BYTES {
        Verdict::NeedMore
    } else {
        Verdict::Is(Protocol::Opaque)
    }
}

/// Longer methods are not HTTP, however the bytes arrive (whole or in
/// pieces, the verdict must be the same).
const MAX_METHOD: usize = 20;

fn is_method(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| b.is_ascii_uppercase() || *b == b'-')
}

/// `METHOD SP request-target SP HTTP/1.x`
fn is_http1_request_line(line: &[u8]) -> bool {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    !method.is_empty()
        && method.len() <= MAX_METHOD
        && is_method(method)
        && !target.is_empty()
        && (version == b"HTTP/1.1" || version == b"HTTP/1.0")
}

/// Reads until the protocol is known, the peer stops sending, or `timeout`
/// passes (then the connection is treated as opaque). Returns the bytes read
/// so they can be replayed.
pub async fn detect<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> std::io::Result<(Protocol, Bytes)> {
    let mut buf = BytesMut::with_capacity(MAX_DETECT_BYTES);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await;
        match read {
            Err(_elapsed) => return Ok((Protocol::Opaque, buf.freeze())),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) if buf.is_empty() => return Ok((Protocol::Closed, buf.freeze())),
            Ok(Ok(0)) => return Ok((Protocol::Opaque, buf.freeze())),
            Ok(Ok(_)) => {}
        }
        if let Verdict::Is(p) = classify(&buf) {
            return Ok((p, buf.freeze()));
        }
        if buf.len() >= MAX_DETECT_BYTES {
            return Ok((Protocol::Opaque, buf.freeze()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_request_lines() {
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Verdict::Is(Protocol::Http1)
        );
        assert_eq!(
            classify(b"POST /a?b=c HTTP/1.0\r\n"),
            Verdict::Is(Protocol::Http1)
        );
        assert_eq!(classify(b"GET / HT"), Verdict::NeedMore);
        assert_eq!(classify(b"GET / HTTP/2.0\r\n"), Verdict::Is(Protocol::Opaque));
        // A method too long for HTTP is opaque whether the line came whole or not.
        let long = b"ABCDEFGHIJKLMNOPQRSTU / HTTP/1.1\r\n";
        assert_eq!(classify(long), Verdict::Is(Protocol::Opaque));
        assert_eq!(classify(&long[..22]), Verdict::Is(Protocol::Opaque));
    }

    #[test]
    fn h2_preface_needs_all_bytes() {
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), Verdict::NeedMore);
        assert_eq!(classify(H2_PREFACE), Verdict::Is(Protocol::Http2));
    }

    #[test]
    fn binary_and_long_lines_are_opaque() {
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Verdict::Is(Protocol::Opaque));
        assert_eq!(classify(b"hello\n"), Verdict::Is(Protocol::Opaque));
        let long = [b'A'; 30];
        assert_eq!(classify(&long), Verdict::Is(Protocol::Opaque));
    }

    #[tokio::test]
    async fn silence_falls_back_to_opaque_after_timeout() {
        let (mut client, _server) = tokio::io::duplex(64);
        let (p, bytes) = detect(&mut client, Duration::from_millis(50)).await.unwrap();
        assert_eq!(p, Protocol::Opaque);
        assert!(bytes.is_empty());
    }

    #[tokio::test]
    async fn bytes_are_kept_for_replay() {
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut b, b"GET / HTTP/1.1\r\n")
            .await
            .unwrap();
        let (p, bytes) = detect(&mut a, Duration::from_secs(1)).await.unwrap();
        assert_eq!(p, Protocol::Http1);
        assert_eq!(&bytes[..], b"GET / HTTP/1.1\r\n");
    }
}
