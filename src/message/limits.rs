//! The limits on an HTTP head, one set for every engine: the own HTTP/1.1
//! server and client, hyper behind them, and the own HTTP/2 server.

/// The largest head, request or response, like Envoy's 60-96 KiB. A request
/// head past it gets 431; for HTTP/2 it is the decoded size RFC 9113 (6.5.2)
/// counts, advertised as SETTINGS_MAX_HEADER_LIST_SIZE.
pub const MAX_HEAD_BYTES: usize = 96 * 1024;

/// Header fields in one HTTP/1.1 head: hyper's own limit, so that the own
/// fast paths and hyper behind them agree.
pub const MAX_HEADERS: usize = 100;
