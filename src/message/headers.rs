//! Header hygiene: hop-by-hop headers belong to one connection and are never forwarded.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::cell::RefCell;

/// Finished messages' header maps kept per thread for the next ones: a map
/// costs two allocations (its index and its entries) and a request makes
/// two (request and response). Only small maps are kept, and only so many.
const SPARE_MAPS: usize = 64;
const SPARE_MAP_CAPACITY: usize = 32;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for `n` fields, recycled when the thread has one.
pub fn map_with_capacity(n: usize) -> HeaderMap {
    let mut map = SPARE.with(|spare| spare.borrow_mut().pop()).unwrap_or_default();
    map.reserve(n);
    map
}

/// Hands a finished message's map back for reuse.
pub fn recycle(mut map: HeaderMap) {
    // `len` counts repeated values too, whose storage `capacity` leaves out.
    if map.capacity() == 0 || map.capacity() > SPARE_MAP_CAPACITY || map.len() > SPARE_MAP_CAPACITY {
        return;
    }
    map.clear();
    SPARE.with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < SPARE_MAPS {
            spare.push(map);
        }
    });
}

// Pre-parsed names: looking a header up by &str parses the name every time.
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Where `Connection` and `TE` sit in [`hop_by_hop`]'s list.
const CONNECTION_AT: usize = 0;
const TE_AT: usize = 5;

fn hop_by_hop() -> [&'static HeaderName; 8] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
    ]
}

/// Fields HTTP/2 forbids (RFC 9113, 8.2.2), `te` aside: it may carry
/// `trailers` in a request and nothing in a response, so callers decide.
pub fn is_connection_specific(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// True for an HTTP/1.1 upgrade request the proxy tunnels (e.g. WebSocket).
/// An upgrade to h2c is not one: inside that tunnel a client could send
/// any number of requests that policy never saw ("h2c smuggling"), so it is
/// forwarded as a plain request with the upgrade stripped, as Envoy does.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_has(headers, "upgrade")
        && !headers.get_all(header::UPGRADE).iter().any(|v| lists(v, "h2c"))
}

/// Whether an upstream's 101 switches to a protocol the client asked for
/// (`asked` is the request's Upgrade value).
pub fn upgrade_agrees(asked: &HeaderValue, response: &HeaderMap) -> bool {
    let Some(chosen) = response.get(header::UPGRADE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    chosen.split(',').map(str::trim).all(|c| lists(asked, c))
}

/// Whether a `Connection` header lists `token`.
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| lists(v, token))
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
pub fn lists(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// The Content-Length every value agrees on (lists such as `5, 5` too);
/// None when absent, malformed or contradictory.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    let mut agreed = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let n = decimal(part.trim_ascii())?;
            if agreed.is_some_and(|a| a != n) {
                return None;
            }
            agreed = Some(n);
        }
    }
    agreed
}

/// Digits only: no sign, no spaces inside, no overflow.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits
        .iter()
        .try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// Removes hop-by-hop headers, including those named by `Connection`.
/// `te: trailers` survives because gRPC needs it end to end; an upgrade
/// keeps `Upgrade` and `Connection: upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names finds which are present; most messages carry
    // none, or only `Connection`, and hashing all nine for removal costs more.
    let hop = hop_by_hop();
    let mut present = [false; 8];
    let mut upgrade = false;
    for name in headers.keys() {
        match hop.iter().position(|h| *h == name) {
            Some(i) => present[i] = true,
            None => upgrade |= name == header::UPGRADE,
        }
    }
    if !keep_upgrade && !upgrade && !present.contains(&true) {
        return;
    }
    if present[CONNECTION_AT] {
        // Cloned (a reference count each) so that names can be removed while
        // reading them; an empty `rest` allocates nothing.
        let mut values = headers.get_all(header::CONNECTION).iter();
        let first = values.next().cloned();
        let rest: Vec<HeaderValue> = values.cloned().collect();
        for value in first.iter().chain(&rest) {
            let Ok(listed) = value.to_str() else { continue };
            for token in listed.split(',').map(str::trim) {
                if !(keep_upgrade && token.eq_ignore_ascii_case("upgrade")) {
                    // By text: an unknown name is looked up without being allocated.
                    headers.remove(token);
                }
            }
        }
    }
    let wants_trailers = present[TE_AT] && headers.get_all(header::TE).iter().any(|v| lists(v, "trailers"));
    for (name, _) in hop.iter().zip(present).filter(|(_, there)| *there) {
        headers.remove(*name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if upgrade {
        headers.remove(header::UPGRADE);
        // Belongs to an h2c upgrade, listed in Connection or not.
        headers.remove(&HTTP2_SETTINGS);
    }
    if wants_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_list_positions_name_the_right_fields() {
        assert_eq!(*hop_by_hop()[CONNECTION_AT], header::CONNECTION);
        assert_eq!(*hop_by_hop()[TE_AT], header::TE);
    }

    #[test]
    fn recycled_maps_come_back_empty_and_big_ones_are_not_kept() {
        std::thread::spawn(|| {
            let mut used = map_with_capacity(4);
            used.append("x-a", HeaderValue::from_static("1"));
            let at = used.capacity();
            recycle(used);
            let again = map_with_capacity(2);
            assert!(again.is_empty());
            assert_eq!(again.capacity(), at, "the spare map was reused");
            // A spare map smaller than asked for is taken and grown to fit.
            recycle(again);
            let spares = || SPARE.with(|spare| spare.borrow().len());
            assert_eq!(spares(), 1);
            let grown = map_with_capacity(at + 1);
            assert_eq!(spares(), 0, "the spare map was not taken");
            assert!(grown.capacity() > at, "the spare map was not grown");
            recycle(map_with_capacity(SPARE_MAP_CAPACITY * 2));
            assert_eq!(map_with_capacity(0).capacity(), 0, "a big map was kept");
            // Few names, many values: their storage is not in `capacity`.
            let mut repeated = map_with_capacity(1);
            for _ in 0..=SPARE_MAP_CAPACITY {
                repeated.append("x-a", HeaderValue::from_static("1"));
            }
            recycle(repeated);
            assert_eq!(
                map_with_capacity(0).capacity(),
                0,
                "a map of many values was kept"
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn removes_standard_and_named_hop_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "secret"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn names_listed_in_connection_go_whatever_their_case_and_spacing() {
        let mut h = map(&[
            ("connection", "Keep-Alive ,X-Private"),
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("x-private", "secret"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
        // Only Connection present, listing nothing else: it goes alone.
        let mut only = map(&[("connection", "keep-alive"), ("x-kept", "yes")]);
        strip_hop_by_hop(&mut only, false);
        assert_eq!(only.len(), 1);
        // A listed `te` goes even when it says trailers.
        let mut te = map(&[("connection", "te"), ("te", "trailers")]);
        strip_hop_by_hop(&mut te, false);
        assert!(te.is_empty());
    }

    #[test]
    fn te_trailers_survives_for_grpc() {
        let mut h = map(&[("te", "trailers")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["te"], "trailers");
        let mut g = map(&[("te", "gzip")]);
        strip_hop_by_hop(&mut g, false);
        assert!(g.get("te").is_none());
    }

    #[test]
    fn upgrade_is_kept_only_when_asked() {
        let req = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&req));
        let mut kept = req.clone();
        strip_hop_by_hop(&mut kept, true);
        assert_eq!(kept["upgrade"], "websocket");
        assert_eq!(kept["connection"], "upgrade");
        let mut dropped = req;
        strip_hop_by_hop(&mut dropped, false);
        assert!(dropped.get("upgrade").is_none());
    }

    #[test]
    fn h2c_upgrades_are_not_tunnelled() {
        let mut h2c = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQAAP__"),
        ]);
        assert!(!is_upgrade(&h2c));
        strip_hop_by_hop(&mut h2c, false);
        assert!(h2c.is_empty(), "{h2c:?}");
    }

    #[test]
    fn a_101_must_switch_to_what_was_asked() {
        let asked = HeaderValue::from_static("websocket");
        assert!(upgrade_agrees(&asked, &map(&[("upgrade", "WebSocket")])));
        assert!(!upgrade_agrees(&asked, &map(&[("upgrade", "h2c")])));
        assert!(!upgrade_agrees(&asked, &map(&[])));
    }
}
