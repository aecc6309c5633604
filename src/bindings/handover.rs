//! Taking over the listening sockets of a running meshcore, as
//! `meshcore run --upgrade` does: the descriptors arrive over a Unix socket
//! (SCM_RIGHTS), so connections queued on them are not lost.
//!
//! The old process (Python, `socket.send_fds`) sends one JSON line of
//! metadata, which says how many descriptors follow in `"fds"`, with the
//! descriptors in batches (the kernel passes at most 253 per message).

use super::errors::MeshcoreError;
use super::guarded;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use std::io::{IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::Duration;

/// The most descriptors one handover carries (a socket per worker per listener).
const MAX_FDS: usize = 4096;
const MAX_META: usize = 64 * 1024;
/// How long the old process may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Descriptors received from the process being replaced, each taken once:
/// by `ProxyCore.start` for listeners, or by Python (`take`) for the admin API.
#[pyclass(module = "meshcore._core")]
pub struct Inherited {
    fds: Mutex<Vec<Option<OwnedFd>>>,
    control: Mutex<Option<UnixStream>>,
}

impl Inherited {
    /// Takes descriptor `index` out; an error if it was taken or never sent.
    pub fn take_fd(&self, index: usize) -> PyResult<OwnedFd> {
        let mut fds = self.fds.lock().unwrap_or_else(|p| p.into_inner());
        let count = fds.len();
        fds.get_mut(index).and_then(Option::take).ok_or_else(|| {
            MeshcoreError::new_err(format!(
                "inherited socket {index} was taken already or not sent (got {count})"
            ))
        })
    }
}

#[pymethods]
impl Inherited {
    /// How many descriptors arrived.
    fn count(&self) -> usize {
        self.fds.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Hands descriptor `index` to the caller, who then owns (and closes) it.
    fn take(&self, index: usize) -> PyResult<i32> {
        Ok(self.take_fd(index)?.into_raw_fd())
    }

    /// Hands the connected Unix stream to the caller, for the rest of the
    /// conversation with the old process.
    fn control(&self) -> PyResult<i32> {
        let stream = self.control.lock().unwrap_or_else(|p| p.into_inner()).take();
        let stream = stream.ok_or_else(|| MeshcoreError::new_err("the control stream was taken already"))?;
        Ok(stream.into_raw_fd())
    }
}

fn failed(path: &str, e: impl std::fmt::Display) -> PyErr {
    MeshcoreError::new_err(format!("taking over the sockets of the process at {path}: {e}"))
}

/// Connects to the old process's Unix socket at `path`, sends `hello`, and
/// receives its metadata line and descriptors.
#[pyfunction]
pub fn inherit_sockets<'py>(
    py: Python<'py>,
    path: &str,
    hello: &[u8],
) -> PyResult<(Bound<'py, PyBytes>, Inherited)> {
    guarded(|| {
        let (meta, fds, stream) = py.detach(|| receive(path, hello)).map_err(|e| failed(path, e))?;
        let inherited = Inherited {
            fds: Mutex::new(fds.into_iter().map(Some).collect()),
            control: Mutex::new(Some(stream)),
        };
        Ok((PyBytes::new(py, &meta), inherited))
    })
}

fn receive(path: &str, hello: &[u8]) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>, UnixStream)> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let mut line = hello.to_vec();
    if !line.ends_with(b"\n") {
        line.push(b'\n');
    }
    // An old process that refuses (another upgrade under way) may answer and
    // close before the hello is written: its answer is still there to read.
    if let Err(e) = stream.write_all(&line) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e);
        }
    }
    let mut meta: Vec<u8> = Vec::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut expected: Option<usize> = None;
    let mut chunk = vec![0u8; 16 * 1024];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253))];
    loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = recvmsg(
            &stream,
            &mut [IoSliceMut::new(&mut chunk)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if fds.len() > MAX_FDS {
            return Err(invalid(format!("more than {MAX_FDS} descriptors")));
        }
        if expected.is_none() {
            meta.extend_from_slice(&chunk[..got.bytes]);
            if let Some(end) = meta.iter().position(|&b| b == b'\n') {
                meta.truncate(end);
                expected = Some(declared_fds(&meta)?.unwrap_or(fds.len()));
            } else if meta.len() > MAX_META {
                return Err(invalid(format!("metadata longer than {MAX_META} bytes")));
            }
        }
        if expected.is_some_and(|n| fds.len() >= n) {
            return Ok((meta, fds, stream));
        }
        if got.bytes == 0 {
            return Err(invalid(
                "the old process closed the connection before sending its sockets".into(),
            ));
        }
    }
}

/// The `"fds"` count the metadata declares, when it does.
fn declared_fds(meta: &[u8]) -> std::io::Result<Option<usize>> {
    let value: serde_json::Value =
        serde_json::from_slice(meta).map_err(|e| invalid(format!("metadata is not JSON: {e}")))?;
    if let Some(error) = value.get("error").and_then(|e| e.as_str()) {
        return Err(invalid(format!("the old process refused: {error}")));
    }
    Ok(value.get("fds").and_then(|n| n.as_u64()).map(|n| n as usize))
}

fn invalid(reason: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, reason)
}
