//! The read buffer of the proxy's own HTTP/1.1 paths: zeroed once, so reads
//! into it need no unsafe code, with a window of bytes read but not yet used.

use bytes::{Bytes, BytesMut};
use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

pub struct ReadBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuffer {
    pub fn new(capacity: usize) -> Self {
        ReadBuffer {
            buf: vec![0; capacity],
            start: 0,
            end: 0,
        }
    }

    pub fn unread(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads once into the free end, first moving unread bytes to the front
    /// or growing up to `limit` when the end is reached. Ready(Ok(0)) at end
    /// of stream; an error when the unread bytes already fill `limit`.
    pub fn poll_read_from<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        limit: usize,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < limit {
                self.buf.resize((self.buf.len() * 2).max(64).min(limit), 0);
            } else {
                return Poll::Ready(Err(io::Error::other("message head too large")));
            }
        }
        let mut read = ReadBuf::new(&mut self.buf[self.end..]);
        ready!(Pin::new(io).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        self.end += n;
        Poll::Ready(Ok(n))
    }

    /// Gives back what a large head made it grow to, once it holds nothing.
    pub fn shrink_to(&mut self, capacity: usize) {
        if self.buf.len() > capacity && self.is_empty() {
            self.buf.truncate(capacity);
            self.buf.shrink_to_fit();
        }
    }
}

/// The per-thread buffer heads are carved from. Small: a head kept for
/// long (its authority labels a response that streams for hours) keeps its
/// block alive, and reuse needs only the heads of the moment to fit.
const ARENA: usize = 4 * 1024;

thread_local! {
    static COPIES: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// A shared copy of a message head (or of a short value such as an
/// authority), for header values and the target to point into. Copies are
/// carved from one per-thread buffer: a fresh `Bytes`
/// would cost an allocation for the copy and another when it is first
/// sliced. The buffer is reused in place once its heads are dropped; a head
/// still held keeps only its own block alive.
pub fn shared_copy(bytes: &[u8]) -> Bytes {
    if bytes.is_empty() {
        return Bytes::new();
    }
    COPIES.with(|copies| {
        let mut copies = copies.borrow_mut();
        if copies.capacity() < bytes.len() {
            copies.reserve(bytes.len().max(ARENA));
        }
        copies.extend_from_slice(bytes);
        copies.split().freeze()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_share_a_buffer_until_it_is_full_and_outlive_it() {
        let first = shared_copy(b"GET / HTTP/1.1\r\n\r\n");
        let second = shared_copy(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(&first[..], b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(&second[..], b"HTTP/1.1 200 OK\r\n\r\n");
        // Carved from one buffer: the second starts where the first ends.
        assert_eq!(first.as_ptr_range().end, second.as_ptr());
        let big = shared_copy(&vec![b'x'; ARENA * 2]);
        assert_eq!(big.len(), ARENA * 2);
        drop((second, big));
        let after = shared_copy(b"again");
        assert_eq!(&after[..], b"again");
        assert_eq!(&first[..], b"GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn a_block_is_reused_in_place_once_its_copies_are_dropped() {
        std::thread::spawn(|| {
            let full = shared_copy(&[1; ARENA]);
            let at = full.as_ptr();
            drop(full);
            assert_eq!(shared_copy(b"next").as_ptr(), at, "a new block was allocated");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn unread_bytes_move_to_the_front_and_the_buffer_grows_to_its_limit() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut buf = ReadBuffer::new(4);
            let mut input: &[u8] = b"abcdefghij";
            let read = |buf: &mut ReadBuffer, input: &mut &[u8], limit| {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                buf.poll_read_from(input, limit, &mut cx)
            };
            assert!(matches!(read(&mut buf, &mut input, 8), Poll::Ready(Ok(4))));
            buf.consume(3);
            assert_eq!(buf.unread(), b"d");
            // Full at the end: the unread byte moves to the front.
            assert!(matches!(read(&mut buf, &mut input, 8), Poll::Ready(Ok(3))));
            assert_eq!(buf.unread(), b"defg");
            // Full from the front: it grows, but not past the limit.
            assert!(matches!(read(&mut buf, &mut input, 6), Poll::Ready(Ok(2))));
            assert_eq!(buf.unread(), b"defghi");
            assert!(matches!(read(&mut buf, &mut input, 6), Poll::Ready(Err(_))));
            buf.consume(6);
            buf.shrink_to(4);
            assert!(buf.is_empty());
            assert!(matches!(read(&mut buf, &mut input, 6), Poll::Ready(Ok(1))));
            assert_eq!(buf.unread(), b"j");
        });
    }
}
