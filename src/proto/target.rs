//! The request target, checked and made canonical once, before policy,
//! routing and filters see it. What they checked is what goes upstream.
//!
//! The path is normalised as an edge proxy should (Envoy's `normalize_path`
//! plus `merge_slashes`):
//! - percent-encoded unreserved characters are decoded (`%2e` is `.`,
//!   `%61` is `a`, RFC 3986 6.2.2.2); other escapes are kept, in upper case;
//! - dot-segments are removed (RFC 3986 5.2.4) and repeated slashes merged;
//! - an encoded `/` or `\` (`%2f`, `%5c`), a raw `\`, an encoded NUL and a
//!   dot-segment carrying parameters (`..;x`) are refused with a 400: an
//!   application may read them as separators or as `..`, and the proxy
//!   cannot know which, so it does not guess.
//!
//! The authority follows RFC 9112 3.2 and RFC 9110 4.2.4: an HTTP/1.1
//! request has exactly one valid Host, and userinfo is refused anywhere.

use super::RequestBody;
use http::header::{HOST, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{Method, Request, StatusCode, Uri, Version};

/// Why a request was refused before it was looked at.
pub type Refusal = (StatusCode, &'static str);

const fn bad(reason: &'static str) -> Refusal {
    (StatusCode::BAD_REQUEST, reason)
}

/// Checks the request's target, Host and framing, and normalises its path
/// in place.
pub fn check(req: &mut Request<RequestBody>) -> Result<(), Refusal> {
    let http1 = req.version() <= Version::HTTP_11;
    if req.method() == Method::CONNECT {
        // A tunnel is not a request the proxy routes (HTTP/2 answers the same).
        return Err((StatusCode::NOT_IMPLEMENTED, "CONNECT is not served"));
    }
    if http1 {
        check_host(req)?;
        check_transfer_coding(req)?;
    }
    let uri = req.uri();
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(bad("userinfo in the request target"));
    }
    let Some(path) = uri.path_and_query() else {
        // Authority-form ("GET host:80") is for CONNECT only.
        return Err(bad("request target without a path"));
    };
    if !path.path().starts_with('/') {
        // Asterisk-form is for a server-wide OPTIONS only; it names no resource to route.
        return match (path.as_str(), req.method()) {
            ("*", &Method::OPTIONS) => Ok(()),
            _ => Err(bad("request target is not a path")),
        };
    }
    if let Some(normal) = normalize(path.path())? {
        let joined = match path.query() {
            Some(q) => format!("{normal}?{q}"),
            None => normal,
        };
        let path = PathAndQuery::try_from(joined).map_err(|_| bad("invalid path"))?;
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.path_and_query = Some(path);
        *req.uri_mut() = Uri::from_parts(parts).map_err(|_| bad("invalid request target"))?;
    }
    Ok(())
}

/// One Host, well formed, with no userinfo or list (RFC 9112 3.2). Absolute
/// form wins over Host (RFC 9112 3.2.2), so only its own authority is checked.
fn check_host(req: &Request<RequestBody>) -> Result<(), Refusal> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    if second.is_some() {
        return Err(bad("more than one Host header"));
    }
    let Some(host) = first else {
        return match (req.version(), req.uri().authority()) {
            (Version::HTTP_11, None) => Err(bad("missing Host header")),
            _ => Ok(()),
        };
    };
    match host_is_valid(host.as_bytes()) {
        true => Ok(()),
        false => Err(bad("invalid Host header")),
    }
}

/// `uri-host [ ":" port ]` (RFC 9110 7.2, RFC 3986 3.2.2), checked without
/// a copy: a registered name or IPv4 of unreserved, sub-delims (but not
/// `,`, which makes a list) and escapes, or a bracketed IP literal; then an
/// optional numeric port. Empty is allowed (a target without authority).
fn host_is_valid(value: &[u8]) -> bool {
    let (host, port) = match value.iter().rposition(|b| *b == b':') {
        // The colon of a port, not one inside an IPv6 literal.
        Some(at) if !value[at..].contains(&b']') => (&value[..at], Some(&value[at + 1..])),
        _ => (value, None),
    };
    let host_ok = match host {
        [b'[', literal @ .., b']'] => {
            !literal.is_empty()
                && literal
                    .iter()
                    .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        }
        _ => host.iter().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.' | b'_' | b'~' | b'%' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')'
                )
                || matches!(b, b'*' | b'+' | b';' | b'=')
        }),
    };
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    host_ok && port_ok && (!host.is_empty() || port.is_none())
}

/// Only `chunked` is a transfer coding the proxy understands; another one
/// would be decoded as chunked and its own coding lost (RFC 9112 6.1: 501).
fn check_transfer_coding(req: &Request<RequestBody>) -> Result<(), Refusal> {
    for value in req.headers().get_all(TRANSFER_ENCODING) {
        let Ok(text) = value.to_str() else {
            return Err(bad("invalid Transfer-Encoding"));
        };
        let unknown = text
            .split(',')
            .map(str::trim)
            .any(|coding| !coding.eq_ignore_ascii_case("chunked"));
        if unknown {
            return Err((StatusCode::NOT_IMPLEMENTED, "unsupported transfer coding"));
        }
    }
    Ok(())
}

/// The normal form of an absolute path, or None when it already is one.
pub fn normalize(path: &str) -> Result<Option<String>, Refusal> {
    let bytes = path.as_bytes();
    // Most paths have no escape, backslash, empty segment or segment
    // starting with a dot: those are left as they are, without a copy.
    let suspicious =
        bytes.iter().any(|b| matches!(b, b'%' | b'\\')) || bytes.windows(2).any(|w| w == b"//" || w == b"/.");
    if !suspicious {
        return Ok(None);
    }
    let decoded = decode_unreserved(bytes)?;
    let normal = remove_dot_segments(&decoded)?;
    Ok((normal != path).then_some(normal))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes escapes of unreserved characters; refuses the dangerous ones.
/// Works on bytes: a path may hold UTF-8, which passes through as it came.
fn decode_unreserved(bytes: &[u8]) -> Result<String, Refusal> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(bad("backslash in path")),
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(bad("invalid percent-encoding in path"));
                };
                let b = hi << 4 | lo;
                match b {
                    b'/' | b'\\' => return Err(bad("encoded slash in path")),
                    0 => return Err(bad("encoded NUL in path")),
                    _ if is_unreserved(b) => out.push(b),
                    _ => {
                        const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
                        out.extend_from_slice(&[b'%', DIGITS[(b >> 4) as usize], DIGITS[(b & 15) as usize]]);
                    }
                }
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    // Only ASCII was decoded, so what was UTF-8 still is.
    String::from_utf8(out).map_err(|_| bad("invalid path"))
}

/// RFC 3986 5.2.4 on an absolute path, merging repeated slashes too.
fn remove_dot_segments(path: &str) -> Result<String, Refusal> {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        // Matrix parameters do not hide a dot-segment (Tomcat reads `..;x` as `..`).
        let bare = segment.split(';').next().unwrap_or_default();
        if bare != segment && (bare == "." || bare == "..") {
            return Err(bad("dot-segment with parameters in path"));
        }
        trailing_slash = true;
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            _ => {
                kept.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, &'static str> {
        normalize(p)
            .map(|n| n.unwrap_or_else(|| p.to_string()))
            .map_err(|(_, why)| why)
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(norm("/public/../admin/secret.txt").unwrap(), "/admin/secret.txt");
        assert_eq!(norm("/public/%2e%2e/admin/x").unwrap(), "/admin/x");
        assert_eq!(norm("/public/%2E./admin").unwrap(), "/admin");
        assert_eq!(norm("/a/./b/.").unwrap(), "/a/b/");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/../../x").unwrap(), "/x");
        assert_eq!(norm("/..").unwrap(), "/");
        assert_eq!(norm("/").unwrap(), "/");
        assert_eq!(norm("/a/.b/c..d/...").unwrap(), "/a/.b/c..d/...");
    }

    #[test]
    fn slashes_are_merged_and_trailing_kept() {
        assert_eq!(norm("//admin").unwrap(), "/admin");
        assert_eq!(norm("/a//b///c/").unwrap(), "/a/b/c/");
        // Merged first, as nginx does: an empty segment is not a level for `..`.
        assert_eq!(norm("/public//../admin").unwrap(), "/admin");
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_kept() {
        assert_eq!(norm("/%61dmin").unwrap(), "/admin");
        assert_eq!(norm("/a%7eb").unwrap(), "/a~b");
        assert_eq!(norm("/a%20b%3f").unwrap(), "/a%20b%3F");
        assert_eq!(normalize("/plain/path").unwrap(), None);
        assert_eq!(normalize("/a%20b").unwrap(), None);
        // UTF-8 passes through as it came (each byte is not a character).
        assert_eq!(norm("/café//x/./é").unwrap(), "/café/x/é");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for p in [
            "/public/..%2fadmin",
            "/public/..%2Fadmin",
            "/a%5c..%5cadmin",
            "/a\\b",
            "/a%00b",
            "/a%zz",
            "/a%4",
            "/public/..;x/admin",
            "/public/.;/admin",
        ] {
            assert!(norm(p).is_err(), "{p} was accepted");
        }
        // Parameters on an ordinary segment are the application's business.
        assert_eq!(norm("/a;v=1/./b").unwrap(), "/a;v=1/b");
    }

    fn request(raw_target: &str, version: Version, hosts: &[&str]) -> Request<RequestBody> {
        let mut req = Request::new(RequestBody::Empty);
        *req.uri_mut() = raw_target.parse().unwrap();
        *req.version_mut() = version;
        for h in hosts {
            req.headers_mut().append(HOST, h.parse().unwrap());
        }
        req
    }

    #[test]
    fn host_rules_of_rfc_9112() {
        let status = |target: &str, v: Version, hosts: &[&str]| {
            check(&mut request(target, v, hosts))
                .err()
                .map(|(s, _)| s.as_u16())
        };
        assert_eq!(status("/", Version::HTTP_11, &["a"]), None);
        assert_eq!(status("/", Version::HTTP_11, &[]), Some(400));
        assert_eq!(status("/", Version::HTTP_10, &[]), None);
        assert_eq!(status("/", Version::HTTP_11, &["a", "b"]), Some(400));
        assert_eq!(status("/", Version::HTTP_11, &["a, b"]), Some(400));
        assert_eq!(status("/", Version::HTTP_11, &["a@b"]), Some(400));
        assert_eq!(status("/", Version::HTTP_11, &["a:80"]), None);
        assert_eq!(status("/", Version::HTTP_11, &["[::1]:8080"]), None);
        assert_eq!(status("/", Version::HTTP_11, &["10.0.0.1"]), None);
        for bad in ["a b", "a/b", "a:x", ":80", "[::1", "a:123456", "a?b", "a#b"] {
            assert_eq!(status("/", Version::HTTP_11, &[bad]), Some(400), "{bad}");
        }
        assert_eq!(status("http://a/", Version::HTTP_11, &[]), None);
        assert_eq!(
            status("http://internal.local:x@pub.example/", Version::HTTP_11, &["p"]),
            Some(400)
        );
        assert_eq!(status("pub.example:80", Version::HTTP_11, &["p"]), Some(400));
        assert_eq!(status("*", Version::HTTP_11, &["p"]), Some(400));
        // HTTP/2 names its authority in :authority; Host is not required.
        assert_eq!(status("http://a/x", Version::HTTP_2, &[]), None);
    }

    #[test]
    fn transfer_codings_other_than_chunked_are_not_implemented() {
        let mut req = request("/", Version::HTTP_11, &["a"]);
        req.headers_mut()
            .insert(TRANSFER_ENCODING, "gzip, chunked".parse().unwrap());
        assert_eq!(check(&mut req).unwrap_err().0, StatusCode::NOT_IMPLEMENTED);
        req.headers_mut()
            .insert(TRANSFER_ENCODING, "chunked".parse().unwrap());
        assert!(check(&mut req).is_ok());
    }

    #[test]
    fn the_normalised_path_replaces_the_target_and_keeps_the_query() {
        let mut req = request("/public/%2e%2e/admin?x=%2e", Version::HTTP_11, &["a"]);
        check(&mut req).unwrap();
        assert_eq!(req.uri(), "/admin?x=%2e");
        let mut req = request("http://a.b/x/../y", Version::HTTP_2, &[]);
        check(&mut req).unwrap();
        assert_eq!(req.uri(), "http://a.b/y");
    }
}
