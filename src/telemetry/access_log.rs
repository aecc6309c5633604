//! Access logs: one line per request, as JSON or in the Common Log Format, to
//! a file or stdout. A request only offers its packed summary to a bounded
//! queue; a background thread formats the lines and writes them. When the
//! writer falls behind (a slow disk, a stdout nobody reads) lines are dropped
//! and counted, never waited for. A file rotated away by an external tool is
//! followed by path.

use super::record::Unpacker;
use super::spool::{self, Spool};
use super::summary::protocol;
use super::text;
use super::Summary;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the writer looks whether its file was rotated away.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// The writer writes at once when this much is queued (or half its queue's
/// lines), without waiting for the rest of `GATHER`.
const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// How long the writer lets lines gather after the first: woken for each
/// one, it would cost the proxy's core a context switch per request.
const GATHER: Duration = Duration::from_millis(10);
/// A batch buffer grown past this by a burst is given back after its write.
const KEEP_BYTES: usize = 8 * 1024 * 1024;
/// How long dropping an access log waits for its queued lines to be written:
/// a writer stuck on a stdout nobody reads must not hang shutdown.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Common,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Stdout => f.write_str("stdout"),
            Target::File(path) => write!(f, "{}", path.display()),
        }
    }
}

#[derive(Default)]
struct Counters {
    written: AtomicU64,
    dropped_behind: AtomicU64,
    dropped_write: AtomicU64,
}

/// One access log and the thread writing it. Dropping it writes what is
/// queued (waiting at most `DRAIN_LIMIT`) and ends the thread.
pub struct AccessLog {
    target: Target,
    format: Format,
    lines: Arc<Spool>,
    counters: Arc<Counters>,
    writer: Option<JoinHandle<()>>,
    /// Disconnects when the writer thread ends (it never sends). In a mutex
    /// so that the log can be shared between workers (a receiver is not Sync).
    finished: Mutex<Receiver<()>>,
}

impl AccessLog {
    /// Opens (or creates, mode 0640, appending) the file now, so a bad path is
    /// an error at config time, and starts the writer with room for
    /// `capacity` lines in its queue. A missing directory is an error.
    pub fn open(target: Target, format: Format, capacity: usize) -> io::Result<AccessLog> {
        Self::start(target, format, capacity, None)
    }

    /// `gate`: the writer waits for it before writing anything (tests).
    fn start(
        target: Target,
        format: Format,
        capacity: usize,
        gate: Option<Receiver<()>>,
    ) -> io::Result<AccessLog> {
        let sink = Sink::open(&target)?;
        let lines = Arc::new(Spool::new(capacity));
        let (finished_guard, finished) = sync_channel::<()>(0);
        let counters = Arc::new(Counters::default());
        let writer = {
            let counters = counters.clone();
            let lines = lines.clone();
            std::thread::Builder::new()
                .name("meshcore-access-log".into())
                .spawn(move || {
                    let _finished = finished_guard;
                    if let Some(gate) = gate {
                        let _ = gate.recv();
                    }
                    write_until_closed(&lines, format, sink, &counters);
                })?
        };
        Ok(AccessLog {
            target,
            format,
            lines,
            counters,
            writer: Some(writer),
            finished: Mutex::new(finished),
        })
    }

    /// Logs a finished request, packed by `record::pack`. Never blocks: when
    /// the writer's queue is full, the line is dropped (and counted).
    pub fn queue(&self, record: &[u8]) {
        if !self.lines.push(record) {
            self.counters.dropped_behind.fetch_add(1, Relaxed);
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Lines written whole.
    pub fn written(&self) -> u64 {
        self.counters.written.load(Relaxed)
    }

    /// Lines dropped because the writer's queue was full.
    pub fn dropped_behind(&self) -> u64 {
        self.counters.dropped_behind.load(Relaxed)
    }

    /// Lines dropped because writing them failed (a full disk, EIO).
    pub fn dropped_write(&self) -> u64 {
        self.counters.dropped_write.load(Relaxed)
    }
}

impl fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessLog")
            .field("target", &self.target)
            .field("format", &self.format)
            .field("written", &self.written())
            .field("dropped_behind", &self.dropped_behind())
            .field("dropped_write", &self.dropped_write())
            .finish()
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.lines.close();
        // Disconnected: the writer wrote what was queued and ended; a timeout
        // leaves a stuck writer behind rather than hanging whoever drops this.
        let finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(RecvTimeoutError::Disconnected) = finished.recv_timeout(DRAIN_LIMIT) {
            if let Some(writer) = self.writer.take() {
                let _ = writer.join();
            }
        }
    }
}

/// The writer thread: waits for a request, lets more gather for `GATHER` (or
/// until half the queue or `BATCH_BYTES` is filled), formats their lines and
/// writes them in one go, and looks for rotation each second. Ends once the
/// queue is closed and written.
fn write_until_closed(requests: &Spool, format: Format, mut sink: Sink, counters: &Counters) {
    let mut next_check = Instant::now() + CHECK_EVERY;
    let (mut taken, mut batch) = (Vec::new(), Vec::new());
    let mut unpacker = Unpacker::default();
    let half = requests.capacity().div_ceil(2);
    loop {
        if requests.wait(1, usize::MAX, next_check) > 0 {
            requests.wait(half, BATCH_BYTES, Instant::now() + GATHER);
        }
        let took = requests.take(&mut taken);
        let mut lines = 0;
        for record in spool::records(&taken) {
            // Only `record::pack` fills the queue: each record unpacks.
            if unpacker.unpack(record) {
                match format {
                    Format::Json => unpacker.summary.json_line(&mut batch),
                    Format::Common => common_line(&unpacker.summary, &mut batch),
                }
                lines += 1;
            }
        }
        if !batch.is_empty() {
            sink.write(&batch, lines, counters);
        }
        for buffer in [&mut taken, &mut batch] {
            buffer.clear();
            if buffer.capacity() > KEEP_BYTES {
                *buffer = Vec::new();
            }
        }
        if took.closed {
            return;
        }
        if Instant::now() >= next_check {
            sink.follow_rotation();
            next_check = Instant::now() + CHECK_EVERY;
        }
    }
}

/// Where the writer writes.
struct Sink {
    out: File,
    /// The path followed through rotations; None for stdout.
    path: Option<PathBuf>,
    /// Device and inode of `out`, to notice the path now names another file.
    id: (u64, u64),
    /// The last write stopped inside a line: a newline goes first, so the
    /// torn line does not swallow the next one.
    torn: bool,
}

impl Sink {
    fn open(target: &Target) -> io::Result<Sink> {
        let (out, path, id) = match target {
            // A descriptor of our own: one write per batch, without std's
            // stdout lock and line buffering.
            Target::Stdout => (
                File::from(io::stdout().as_fd().try_clone_to_owned()?),
                None,
                (0, 0),
            ),
            Target::File(path) => {
                let (out, id) = open_append(path)
                    .map_err(|e| io::Error::new(e.kind(), format!("access log {}: {e}", path.display())))?;
                (out, Some(path.clone()), id)
            }
        };
        Ok(Sink {
            out,
            path,
            id,
            torn: false,
        })
    }

    /// Writes a batch of `lines` lines; lines that did not reach the file
    /// whole are dropped and counted. A failure waits for the next batch: no
    /// retry loop.
    fn write(&mut self, batch: &[u8], lines: u64, counters: &Counters) {
        let (done, result) = match self.torn {
            true => match self.write_some(b"\n") {
                (1, _) => {
                    self.torn = false;
                    self.write_some(batch)
                }
                (_, result) => (0, result),
            },
            false => self.write_some(batch),
        };
        // Every line ends in its only newline (both formats escape the rest).
        let whole = match done == batch.len() {
            true => lines,
            false => batch[..done].iter().filter(|&&b| b == b'\n').count() as u64,
        };
        counters.written.fetch_add(whole, Relaxed);
        if done > 0 {
            self.torn = batch[done - 1] != b'\n';
        }
        if let Err(e) = result {
            counters.dropped_write.fetch_add(lines - whole, Relaxed);
            crate::throttled!(
                "access log {}: {e}; dropping lines until it can be written",
                self.name()
            );
        }
    }

    /// Writes `bytes` until done or an error: how much was written, and the error.
    fn write_some(&mut self, bytes: &[u8]) -> (usize, io::Result<()>) {
        let mut done = 0;
        while done < bytes.len() {
            match self.out.write(&bytes[done..]) {
                Ok(0) => return (done, Err(io::Error::from(io::ErrorKind::WriteZero))),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (done, Err(e)),
            }
        }
        (done, Ok(()))
    }

    /// Reopens the path if it no longer names the open file: logrotate's
    /// rename-and-create, `mv`, `rm`. (copytruncate needs nothing: O_APPEND.)
    fn follow_rotation(&mut self) {
        let Some(path) = &self.path else { return };
        match std::fs::metadata(path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.id => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                crate::throttled!("access log {}: {e}", path.display());
                return;
            }
        }
        match open_append(path) {
            Ok((out, id)) => {
                self.out = out;
                self.id = id;
                self.torn = false;
            }
            Err(e) => crate::throttled!(
                "access log {}: cannot reopen after rotation: {e}; writing on to the file it had open",
                path.display()
            ),
        }
    }

    fn name(&self) -> String {
        self.path
            .as_deref()
            .map_or_else(|| "stdout".to_owned(), |p| p.display().to_string())
    }
}

fn open_append(path: &Path) -> io::Result<(File, (u64, u64))> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)?;
    let meta = file.metadata()?;
    Ok((file, (meta.dev(), meta.ino())))
}

/// The NCSA Common Log Format and a newline:
/// `client_ip - user [dd/Mon/yyyy:HH:MM:SS +0000] "METHOD path PROTOCOL" status bytes`,
/// `-` for what is unknown; the user is the client's SPIFFE ID. The time is
/// when the request arrived, in UTC.
pub fn common_line(summary: &Summary, out: &mut Vec<u8>) {
    match summary.client {
        Some(client) => text::push_ip(client.ip(), out),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" - ");
    escaped_or_dash(summary.identity.as_deref().unwrap_or(""), true, out);
    out.extend_from_slice(b" [");
    text::clf_time(summary.start, out);
    out.extend_from_slice(b"] \"");
    escaped_or_dash(summary.method.as_str(), false, out);
    out.push(b' ');
    escaped_or_dash(&summary.path, false, out);
    out.push(b' ');
    out.extend_from_slice(protocol(summary.version).as_bytes());
    out.extend_from_slice(b"\" ");
    let mut itoa = itoa::Buffer::new();
    match summary.status {
        0 => out.push(b'-'),
        status => out.extend_from_slice(itoa.format(status).as_bytes()),
    }
    // As Apache's %b: "-" for no body bytes.
    match summary.response_bytes {
        0 => out.extend_from_slice(b" -\n"),
        bytes => {
            out.push(b' ');
            out.extend_from_slice(itoa.format(bytes).as_bytes());
            out.push(b'\n');
        }
    }
}

/// `text` with what could end the line or the field, or that a terminal would
/// act on, escaped as nginx does (`\xHH`): control bytes, `"`, `\`, bytes from
/// 0x7f up, and in an unquoted field the space. `-` when empty.
fn escaped_or_dash(text: &str, unquoted: bool, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if text.is_empty() {
        out.push(b'-');
        return;
    }
    for &b in text.as_bytes() {
        if !(0x20..0x7f).contains(&b) || b == b'"' || b == b'\\' || (unquoted && b == b' ') {
            out.extend_from_slice(&[b'\\', b'x', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        } else {
            out.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::time::SystemTime;

    impl AccessLog {
        /// Queues `summary` as the request path does.
        fn send(&self, summary: &Summary) {
            spool::with_scratch(|out| {
                crate::telemetry::record::pack(summary, None, out);
                self.queue(out)
            })
        }
    }

    fn sample() -> Summary {
        Summary {
            start: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_651_199_042),
            listener: "outbound".into(),
            client: Some("127.0.0.1:5000".parse().unwrap()),
            method: http::Method::GET,
            path: "/a?b=1".into(),
            authority: "web.local".into(),
            route: Some("web".into()),
            service: Some("web".into()),
            endpoint: Some("10.0.0.7:8080".parse().unwrap()),
            zone: Some("z1".into()),
            status: 200,
            duration_ms: 1.23456,
            ttfb_ms: 0.5,
            response_bytes: 512,
            ..Default::default()
        }
    }

    fn common(summary: &Summary) -> String {
        let mut out = Vec::new();
        common_line(summary, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// A directory of its own under the system's temp dir, removed at the end.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("meshcore-access-log-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_default()
    }

    /// Sends numbered lines until one shows in `path`; returns how many were sent.
    fn send_until_in(log: &AccessLog, path: &Path, mut summary: Summary) -> usize {
        let mut sent = 0;
        wait_for("a line in the file now at the path", || {
            summary.path = format!("/after/{sent}");
            log.send(&summary);
            sent += 1;
            read(path).contains("/after/")
        });
        sent
    }

    #[test]
    fn a_common_line_names_client_user_time_request_status_and_bytes() {
        assert_eq!(
            common(&sample()),
            "127.0.0.1 - - [25/Nov/2026:23:59:59 +0000] \"GET /a?b=1 HTTP/1.1\" 200 512\n"
        );
        let summary = Summary {
            client: Some("[::1]:443".parse().unwrap()),
            identity: Some("spiffe://mesh.local/ns/shop/sa/cart".into()),
            version: http::Version::HTTP_2,
            ..sample()
        };
        assert_eq!(
            common(&summary),
            "::1 - spiffe://mesh.local/ns/shop/sa/cart [25/Nov/2026:23:59:59 +0000] \"GET /a?b=1 HTTP/2\" 200 512\n"
        );
        let unknown = Summary {
            start: SystemTime::UNIX_EPOCH,
            ..Default::default()
        };
        assert_eq!(
            common(&unknown),
            "- - - [01/Jan/1970:00:00:00 +0000] \"GET - HTTP/1.1\" - -\n"
        );
    }

    #[test]
    fn a_common_line_cannot_be_split_or_given_extra_fields_by_the_request() {
        // A method is a token (no quote, space or control byte): http::Method
        // refuses any other, so only the path and identity can try.
        let summary = Summary {
            path: "/a\n127.0.0.1 - - [x] \"GET /forged\\ é\u{7f}\u{1b}[2J".into(),
            identity: Some("spiffe://x/a b\"c".into()),
            ..sample()
        };
        assert_eq!(
            common(&summary),
            "127.0.0.1 - spiffe://x/a\\x20b\\x22c [25/Nov/2026:23:59:59 +0000] \
             \"GET /a\\x0A127.0.0.1 - - [x] \\x22GET /forged\\x5C \\xC3\\xA9\\x7F\\x1B[2J HTTP/1.1\" \
             200 512\n"
        );
    }

    #[test]
    fn both_formats_are_written_to_a_file_one_line_each() {
        let dir = TempDir::new("formats");
        for (format, name) in [(Format::Json, "json.log"), (Format::Common, "common.log")] {
            let path = dir.join(name);
            let log = AccessLog::open(Target::File(path.clone()), format, 16).unwrap();
            log.send(&sample());
            drop(log);
            let expected = match format {
                Format::Json => concat!(
                    r#"{"time":"2026-11-25T23:59:59.042Z","listener":"outbound","client":"127.0.0.1:5000","#,
                    r#""method":"GET","path":"/a?b=1","protocol":"HTTP/1.1","authority":"web.local","#,
                    r#""status":200,"grpc_status":null,"failed":false,"duration_ms":1.235,"ttfb_ms":0.5,"#,
                    r#""bytes":512,"route":"web","service":"web","endpoint":"10.0.0.7:8080","zone":"z1","#,
                    r#""identity":null,"trace_id":null,"retried":false}"#,
                    "\n"
                ),
                Format::Common => {
                    "127.0.0.1 - - [25/Nov/2026:23:59:59 +0000] \"GET /a?b=1 HTTP/1.1\" 200 512\n"
                }
            };
            assert_eq!(read(&path), expected);
            let mode = fs::metadata(&path).unwrap().mode() & 0o777;
            assert_eq!(mode & !0o640, 0, "mode {mode:o}");
        }
    }

    #[test]
    fn stdout_is_written_through_a_descriptor_of_its_own() {
        // The line shows in the test's output: cargo captures print!, not fd 1.
        let log = AccessLog::open(Target::Stdout, Format::Common, 16).unwrap();
        assert_eq!(log.target().to_string(), "stdout");
        log.send(&sample());
        let counters = log.counters.clone();
        drop(log);
        assert_eq!(counters.written.load(Relaxed), 1);
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_path() {
        let dir = TempDir::new("missing");
        let path = dir.join("nope/access.log");
        let err = AccessLog::open(Target::File(path.clone()), Format::Common, 16).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    }

    #[test]
    fn a_file_renamed_away_is_followed_by_a_new_file_at_the_path() {
        let dir = TempDir::new("rename");
        let path = dir.join("access.log");
        let rotated = dir.join("access.log.1");
        let log = AccessLog::open(Target::File(path.clone()), Format::Common, 1024).unwrap();
        log.send(&Summary {
            path: "/before".into(),
            ..sample()
        });
        wait_for("the first line", || read(&path).contains("/before"));
        fs::rename(&path, &rotated).unwrap();
        let sent = send_until_in(&log, &path, sample());
        drop(log);
        let (old, new) = (read(&rotated), read(&path));
        assert!(old.starts_with("127.0.0.1") && old.contains("/before"), "{old}");
        assert!(!new.contains("/before"), "{new}");
        // Each line in exactly one of the files, in order, none torn.
        let lines: Vec<&str> = old.lines().chain(new.lines()).skip(1).collect();
        assert_eq!(lines.len(), sent);
        for (i, line) in lines.iter().enumerate() {
            assert!(
                line.contains(&format!("\"GET /after/{i} HTTP/1.1\" 200 512")),
                "{line}"
            );
        }
    }

    #[test]
    fn a_file_removed_is_created_again_and_one_truncated_is_appended_to_from_its_start() {
        let dir = TempDir::new("remove");
        let path = dir.join("access.log");
        let log = AccessLog::open(Target::File(path.clone()), Format::Common, 1024).unwrap();
        log.send(&sample());
        wait_for("the first line", || !read(&path).is_empty());
        fs::remove_file(&path).unwrap();
        let sent = send_until_in(&log, &path, sample());
        wait_for("every line written", || log.written() == 1 + sent as u64);

        // copytruncate: the file is emptied under the writer, which appends at its new end.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        log.send(&Summary {
            path: "/truncated".into(),
            ..sample()
        });
        wait_for("the line after truncation", || read(&path).contains("/truncated"));
        let text = read(&path);
        assert!(
            text.starts_with("127.0.0.1 - - ") && text.lines().count() == 1,
            "{text:?}"
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts_lines_and_the_queued_ones_are_written_on_drop() {
        let dir = TempDir::new("behind");
        let path = dir.join("access.log");
        let (release, gate) = sync_channel(0);
        let log = AccessLog::start(Target::File(path.clone()), Format::Common, 3, Some(gate)).unwrap();
        for _ in 0..10 {
            log.send(&sample());
        }
        assert_eq!(log.dropped_behind(), 7);
        assert_eq!(log.written(), 0);
        drop(release);
        let counters = log.counters.clone();
        drop(log);
        assert_eq!(counters.written.load(Relaxed), 3);
        assert_eq!(counters.dropped_write.load(Relaxed), 0);
        assert_eq!(read(&path).lines().count(), 3);
    }

    #[test]
    fn lines_that_cannot_be_written_are_dropped_and_counted() {
        let log = AccessLog::open(Target::File("/dev/full".into()), Format::Json, 16).unwrap();
        for _ in 0..3 {
            log.send(&sample());
        }
        let counters = log.counters.clone();
        drop(log);
        assert_eq!(counters.dropped_write.load(Relaxed), 3);
        assert_eq!(counters.written.load(Relaxed), 0);
        assert_eq!(counters.dropped_behind.load(Relaxed), 0);
    }

    #[test]
    fn writing_resumes_once_the_path_can_be_written_again() {
        let dir = TempDir::new("resume");
        let path = dir.join("access.log");
        let real = dir.join("real.log");
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        let log = AccessLog::open(Target::File(path.clone()), Format::Common, 1024).unwrap();
        log.send(&sample());
        wait_for("a failed write", || log.dropped_write() == 1);
        // The path now names a writable file: the writer's stat sees another inode.
        fs::write(&real, "").unwrap();
        let next = dir.join("next");
        std::os::unix::fs::symlink(&real, &next).unwrap();
        fs::rename(&next, &path).unwrap();
        let sent = send_until_in(&log, &real, sample());
        let counters = log.counters.clone();
        drop(log);
        let written = counters.written.load(Relaxed);
        assert!(written >= 1);
        assert_eq!(written + counters.dropped_write.load(Relaxed), sent as u64 + 1);
        assert_eq!(read(&real).lines().count() as u64, written);
    }

    #[test]
    fn a_line_torn_by_a_failed_write_is_ended_before_the_next_batch() {
        use std::io::Read;
        use std::os::unix::net::UnixStream;
        // A socket nobody reads, non-blocking: a big batch is written only in part.
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut sink = Sink {
            out: File::from(std::os::fd::OwnedFd::from(ours)),
            path: None,
            id: (0, 0),
            torn: false,
        };
        let counters = Counters::default();
        let line = format!("{}\n", "x".repeat(96));
        let pushed = 100_000;
        let batch = line.repeat(pushed as usize);
        sink.write(batch.as_bytes(), pushed, &counters);
        let written = counters.written.load(Relaxed);
        assert!(written > 0 && written < pushed, "{written}");
        assert_eq!(written + counters.dropped_write.load(Relaxed), pushed);

        theirs.set_nonblocking(true).unwrap();
        let mut received = Vec::new();
        let _ = theirs.read_to_end(&mut received);
        let torn = !received.ends_with(b"\n");
        assert_eq!(sink.torn, torn);
        sink.write(b"next\n", 1, &counters);
        received.clear();
        let _ = theirs.read_to_end(&mut received);
        let expected: &[u8] = if torn { b"\nnext\n" } else { b"next\n" };
        assert_eq!(received, expected);
        assert_eq!(counters.written.load(Relaxed), written + 1);
    }
}
