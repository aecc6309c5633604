//! Why an upstream exchange failed; the dispatch stage maps these to retry
//! outcomes and to the proxy's own answers (502, 504).

use super::h1 as inline_h1;

#[derive(Debug)]
pub enum UpstreamError {
    Connect(std::io::Error),
    ConnectTimeout,
    Tls(std::io::Error),
    Http(hyper::Error),
    /// From a connection driven inline.
    Io(std::io::Error),
    Protocol(&'static str),
    /// The endpoint answered the HTTP/2 preface with something else.
    NotHttp2,
}

impl From<inline_h1::Error> for UpstreamError {
    fn from(e: inline_h1::Error) -> Self {
        match e {
            inline_h1::Error::Stale(e) | inline_h1::Error::Io(e) => UpstreamError::Io(e),
            inline_h1::Error::Protocol(why) => UpstreamError::Protocol(why),
        }
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "connect failed: {e}"),
            UpstreamError::ConnectTimeout => write!(f, "connect timed out"),
            UpstreamError::Tls(e) => write!(f, "tls: {e}"),
            UpstreamError::Http(e) => write!(f, "upstream error: {e}"),
            UpstreamError::Io(e) => write!(f, "upstream error: {e}"),
            UpstreamError::Protocol(why) => write!(f, "upstream error: {why}"),
            UpstreamError::NotHttp2 => write!(f, "upstream does not speak HTTP/2"),
        }
    }
}
