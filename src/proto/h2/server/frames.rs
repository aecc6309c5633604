//! Reading frames: the connection preface, then each frame by kind. Control
//! frames and DATA are handled here; header blocks in `streams.rs`.

use super::frame::{self, Head, Reason};
use super::{Conn, ConnError, CALM_WINDOW, DRAIN_PING, MAX_IDLE_FRAMES, MAX_NET_RESETS, MAX_PROVOKED_RESETS};
use crate::io::read_buf::ReadBuffer;
use crate::proto::Handler;
use tokio::io::{AsyncRead, AsyncWrite};

impl<I: AsyncRead + AsyncWrite + Unpin, H: Handler> Conn<I, H> {
    pub(super) fn process_input(&mut self) -> Result<(), ConnError> {
        let mut input = std::mem::replace(&mut self.input, ReadBuffer::new(0));
        let result = self.process_frames(&mut input);
        self.input = input;
        result
    }

    fn process_frames(&mut self, input: &mut ReadBuffer) -> Result<(), ConnError> {
        if !self.preface_done {
            let got = input.unread();
            let n = got.len().min(frame::PREFACE.len());
            if got[..n] != frame::PREFACE[..n] {
                return Err(ConnError(Reason::Protocol, "not an HTTP/2 connection preface"));
            }
            if n < frame::PREFACE.len() {
                return Ok(());
            }
            input.consume(n);
            self.preface_done = true;
        }
        while !self.closing {
            let buf = input.unread();
            if buf.len() < frame::HEAD_LEN {
                break;
            }
            let head = frame::parse_head(buf);
            if head.len > frame::MIN_MAX_FRAME {
                return Err(ConnError(
                    Reason::FrameSize,
                    "frame larger than SETTINGS_MAX_FRAME_SIZE",
                ));
            }
            let end = frame::HEAD_LEN + head.len;
            if buf.len() < end {
                break;
            }
            self.frame(head, &buf[frame::HEAD_LEN..end])?;
            input.consume(end);
        }
        Ok(())
    }

    fn frame(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        let opens_with_settings = head.kind == frame::SETTINGS && head.flags & frame::ACK == 0;
        if !self.settings_seen && !opens_with_settings {
            return Err(ConnError(Reason::Protocol, "first frame is not SETTINGS"));
        }
        if let Some(p) = &self.pending {
            if head.kind != frame::CONTINUATION || head.stream != p.stream {
                return Err(ConnError(Reason::Protocol, "header block interrupted"));
            }
        }
        match head.kind {
            frame::DATA => self.on_data(head, payload),
            frame::HEADERS => self.on_headers(head, payload),
            frame::CONTINUATION => self.on_continuation(head, payload),
            frame::PRIORITY => match (head.stream, head.len) {
                (0, _) => Err(ConnError(Reason::Protocol, "PRIORITY on stream 0")),
                (id, 5) => {
                    self.count_idle_frame()?;
                    // A stream cannot depend on itself (RFC 9113, 5.3.1).
                    if frame::u32_at(payload) & 0x7fff_ffff == id {
                        self.reset_for_error(id, Reason::Protocol)?;
                    }
                    Ok(())
                }
                // Only a live stream is reset: idle ones must not be (RFC 9113, 5.1).
                (id, _) => {
                    let live = self.shared.lock().reset_stream_if_live(id, Reason::FrameSize);
                    self.count_provoked_reset(live)
                }
            },
            frame::RST_STREAM => self.on_reset(head, payload),
            frame::SETTINGS => self.on_settings(head, payload),
            frame::PING => self.on_ping(head, payload),
            frame::GOAWAY => match head.stream {
                _ if head.len < 8 => Err(ConnError(Reason::FrameSize, "GOAWAY shorter than 8 bytes")),
                0 => {
                    self.peer_done = true;
                    Ok(())
                }
                _ => Err(ConnError(Reason::Protocol, "GOAWAY on a stream")),
            },
            frame::WINDOW_UPDATE => self.on_window_update(head, payload),
            frame::PUSH_PROMISE => Err(ConnError(Reason::Protocol, "PUSH_PROMISE from a client")),
            // Unknown frame types are ignored (RFC 9113, 4.1), but not for free.
            _ => self.count_idle_frame(),
        }
    }

    /// A frame that did no useful work (a PING, SETTINGS, PRIORITY, empty
    /// DATA or unknown frame). Many within `CALM_WINDOW` are a flood
    /// (CVE-2019-9512, -9515, -9518), cut off as rapid reset is.
    pub(super) fn count_idle_frame(&mut self) -> Result<(), ConnError> {
        let now = crate::time::coarse::coarse_now();
        let seen = &mut self.idle_frames;
        seen.count += 1;
        if now.saturating_duration_since(seen.since) >= CALM_WINDOW {
            seen.since = now;
            seen.count = 1;
            seen.sent_before = self.shared.lock().data_frames_sent;
        }
        if seen.count <= MAX_IDLE_FRAMES {
            return Ok(());
        }
        // Over the base allowance: a client reading our DATA may ping as often.
        let sent = self.shared.lock().data_frames_sent - seen.sent_before;
        match seen.count > MAX_IDLE_FRAMES + sent {
            true => Err(ConnError(Reason::EnhanceYourCalm, "too many frames without work")),
            false => Ok(()),
        }
    }

    /// A stream error for a stream that may be idle, live or closed: reset
    /// it (once) and, if it was live, count it as provoked.
    pub(super) fn reset_for_error(&mut self, id: u32, reason: Reason) -> Result<(), ConnError> {
        let mut state = self.shared.lock();
        let live = state.reset_stream(id, reason);
        if !live && id > self.last_stream {
            // An idle stream: the reset closes it, so later frames on it are
            // frames on a stream we reset.
            state.remember_reset(id);
        }
        drop(state);
        self.count_provoked_reset(live)
    }

    fn on_settings(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream != 0 {
            return Err(ConnError(Reason::Protocol, "SETTINGS on a stream"));
        }
        if head.flags & frame::ACK != 0 {
            return match head.len {
                0 => Ok(()),
                _ => Err(ConnError(Reason::FrameSize, "SETTINGS ack with a payload")),
            };
        }
        if !head.len.is_multiple_of(6) {
            return Err(ConnError(
                Reason::FrameSize,
                "SETTINGS length not a multiple of 6",
            ));
        }
        if self.settings_seen {
            self.count_idle_frame()?;
        }
        self.settings_seen = true;
        let mut state = self.shared.lock();
        let state = &mut *state;
        // Only the last window in a frame is applied: one pass over the
        // streams per frame, not per entry.
        let mut new_window = None;
        for setting in payload.chunks(6) {
            let value = frame::u32_at(&setting[2..]);
            match u16::from_be_bytes([setting[0], setting[1]]) {
                frame::SETTINGS_ENABLE_PUSH if value > 1 => {
                    return Err(ConnError(Reason::Protocol, "SETTINGS_ENABLE_PUSH above 1"));
                }
                frame::SETTINGS_INITIAL_WINDOW_SIZE => {
                    if value as i64 > frame::MAX_WINDOW {
                        return Err(ConnError(
                            Reason::FlowControl,
                            "SETTINGS_INITIAL_WINDOW_SIZE too large",
                        ));
                    }
                    new_window = Some(value as i64);
                }
                // Our encoder never indexes; a shrunk table only needs saying so.
                frame::SETTINGS_HEADER_TABLE_SIZE => state.announce_table_size = true,
                frame::SETTINGS_MAX_FRAME_SIZE => {
                    if !(frame::MIN_MAX_FRAME as u32..=0xff_ffff).contains(&value) {
                        return Err(ConnError(
                            Reason::Protocol,
                            "SETTINGS_MAX_FRAME_SIZE out of range",
                        ));
                    }
                    // Bigger frames save little once they pass 64 KiB.
                    state.max_frame = (value as usize).min(64 * 1024);
                }
                _ => {}
            }
        }
        if let Some(value) = new_window {
            let delta = value - state.initial_send_window;
            state.initial_send_window = value;
            for stream in state.streams.values_mut() {
                stream.send_window += delta;
                if stream.send_window > frame::MAX_WINDOW {
                    return Err(ConnError(Reason::FlowControl, "stream window above 2^31-1"));
                }
                if delta > 0 {
                    if let Some(w) = stream.sender.take() {
                        w.wake();
                    }
                }
            }
        }
        frame::settings_ack(&mut state.out);
        Ok(())
    }

    fn on_ping(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream != 0 {
            return Err(ConnError(Reason::Protocol, "PING on a stream"));
        }
        if head.len != 8 {
            return Err(ConnError(Reason::FrameSize, "PING length is not 8"));
        }
        if head.flags & frame::ACK == 0 {
            self.count_idle_frame()?;
            frame::ping_ack(&mut self.shared.lock().out, payload);
        } else if self.drain_pinged && payload == DRAIN_PING {
            self.send_goaway(Reason::NoError);
        }
        Ok(())
    }

    fn on_window_update(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.len != 4 {
            return Err(ConnError(Reason::FrameSize, "WINDOW_UPDATE length is not 4"));
        }
        let increment = (frame::u32_at(payload) & 0x7fff_ffff) as i64;
        let mut guard = self.shared.lock();
        let state = &mut *guard;
        if head.stream == 0 {
            if increment == 0 {
                return Err(ConnError(Reason::Protocol, "WINDOW_UPDATE of 0"));
            }
            state.send_window += increment;
            if state.send_window > frame::MAX_WINDOW {
                return Err(ConnError(Reason::FlowControl, "connection window above 2^31-1"));
            }
            state.wake_blocked();
            return Ok(());
        }
        if head.stream > self.last_stream {
            return Err(ConnError(Reason::Protocol, "WINDOW_UPDATE on an idle stream"));
        }
        let Some(stream) = state.streams.get_mut(&head.stream) else {
            return Ok(()); // closed: ignored
        };
        stream.send_window += increment;
        let problem = match increment {
            0 => Some(Reason::Protocol),
            _ if stream.send_window > frame::MAX_WINDOW => Some(Reason::FlowControl),
            _ => None,
        };
        if let Some(reason) = problem {
            let live = state.reset_stream(head.stream, reason);
            drop(guard);
            return self.count_provoked_reset(live);
        }
        if let Some(w) = stream.sender.take() {
            w.wake();
        }
        Ok(())
    }

    fn on_reset(&mut self, head: Head, _payload: &[u8]) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(ConnError(Reason::Protocol, "RST_STREAM on stream 0"));
        }
        if head.len != 4 {
            return Err(ConnError(Reason::FrameSize, "RST_STREAM length is not 4"));
        }
        if head.stream > self.last_stream {
            return Err(ConnError(Reason::Protocol, "RST_STREAM on an idle stream"));
        }
        let live = self.shared.lock().cancel_stream(head.stream).is_some();
        self.count_reset(live)
    }

    /// Streams the client reset while in progress, minus those served: too
    /// many is an attack (CVE-2023-44487), not a client changing its mind.
    fn count_reset(&mut self, live: bool) -> Result<(), ConnError> {
        count_against(
            &mut self.net_resets,
            live,
            MAX_NET_RESETS,
            "too many streams reset in progress",
        )
    }

    /// Live streams the server reset because of what the client sent
    /// (CVE-2025-8671); a correct client causes none.
    pub(super) fn count_provoked_reset(&mut self, live: bool) -> Result<(), ConnError> {
        count_against(
            &mut self.provoked_resets,
            live,
            MAX_PROVOKED_RESETS,
            "too many streams reset for errors",
        )
    }

    fn on_data(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        let id = head.stream;
        if id == 0 {
            return Err(ConnError(Reason::Protocol, "DATA on stream 0"));
        }
        let data = unpad(head, payload)?;
        let end = head.flags & frame::END_STREAM != 0;
        if head.len == 0 && !end {
            self.count_idle_frame()?;
        }
        let mut guard = self.shared.lock();
        let state = &mut *guard;
        state.recv_window -= head.len as i64;
        if state.recv_window < 0 {
            return Err(ConnError(
                Reason::FlowControl,
                "DATA beyond the connection window",
            ));
        }
        let Some(stream) = state.streams.get_mut(&id) else {
            if id > self.last_stream {
                return Err(ConnError(Reason::Protocol, "DATA on an idle stream"));
            }
            // A stream already closed or reset: only the connection window counts.
            state.return_connection_window(head.len);
            // Frames may still be in flight for a stream we reset; on a
            // stream the client closed or reset, DATA is an error (RFC 9113, 5.1).
            if !state.recently_reset.contains(&id) {
                frame::rst_stream(&mut state.out, id, Reason::StreamClosed);
                state.remember_reset(id);
                drop(guard);
                return self.count_idle_frame();
            }
            return Ok(());
        };
        stream.recv_window -= head.len as i64;
        stream.received += data.len() as u64;
        let problem = if !stream.remote_open {
            Some(Reason::StreamClosed)
        } else if stream.recv_window < 0 {
            Some(Reason::FlowControl)
        } else if stream
            .expected
            .is_some_and(|n| stream.received > n || (end && stream.received != n))
        {
            Some(Reason::Protocol) // content-length disagrees with the DATA (RFC 9113, 8.1.1)
        } else {
            None
        };
        if let Some(reason) = problem {
            let live = state.reset_stream(id, reason);
            state.return_connection_window(head.len);
            drop(guard);
            return self.count_provoked_reset(live);
        }
        stream.remote_open &= !end;
        match state.bodies.get_mut(&id) {
            Some(body) => {
                body.push(data);
                body.ended |= end;
                body.wake();
                // Padding is returned at once; data once it is read.
                let padding = head.len - data.len();
                if padding > 0 {
                    state.return_connection_window(padding);
                    state.return_stream_window(id, padding);
                }
            }
            None => state.return_connection_window(head.len),
        }
        Ok(())
    }
}

fn count_against(count: &mut u32, live: bool, limit: u32, why: &'static str) -> Result<(), ConnError> {
    *count += u32::from(live);
    match *count > limit {
        true => Err(ConnError(Reason::EnhanceYourCalm, why)),
        false => Ok(()),
    }
}

/// A DATA or HEADERS payload without its padding.
pub(super) fn unpad(head: Head, payload: &[u8]) -> Result<&[u8], ConnError> {
    if head.flags & frame::PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload
        .split_first()
        .ok_or(ConnError(Reason::FrameSize, "padded frame without a pad length"))?;
    rest.len()
        .checked_sub(pad as usize)
        .map(|n| &rest[..n])
        .ok_or(ConnError(Reason::Protocol, "padding longer than the frame"))
}
