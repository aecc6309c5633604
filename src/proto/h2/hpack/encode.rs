//! Encoding response heads as literals without indexing: no dynamic table,
//! so nothing to keep in step with the peer, and no Huffman pass.

/// `:status`, indexed when the static table has it.
pub fn encode_status(status: u16, out: &mut Vec<u8>) {
    let index = match status {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => {
            // Literal without indexing, name from entry 8 (`:status`).
            out.extend_from_slice(&[0x08, 3]);
            out.extend_from_slice(&[
                b'0' + (status / 100 % 10) as u8,
                b'0' + (status / 10 % 10) as u8,
                b'0' + (status % 10) as u8,
            ]);
            return;
        }
    };
    out.push(0x80 | index);
}

/// One header field; `name` is lower case, as `http::HeaderName` keeps it.
pub fn encode_field(name: &str, value: &[u8], out: &mut Vec<u8>) {
    match static_name(name) {
        Some(index) => integer(index, 4, 0x00, out),
        None => {
            out.push(0x00);
            string(name.as_bytes(), out);
        }
    }
    string(value, out);
}

fn static_name(name: &str) -> Option<usize> {
    Some(match name {
        "accept-ranges" => 18,
        "cache-control" => 24,
        "content-encoding" => 26,
        "content-length" => 28,
        "content-type" => 31,
        "date" => 33,
        "etag" => 34,
        "last-modified" => 44,
        "location" => 46,
        "server" => 54,
        "set-cookie" => 55,
        "vary" => 59,
        _ => return None,
    })
}

fn string(bytes: &[u8], out: &mut Vec<u8>) {
    integer(bytes.len(), 7, 0x00, out);
    out.extend_from_slice(bytes);
}

/// An HPACK integer with an N-bit prefix; `flags` fills the bits above it.
fn integer(mut value: usize, prefix: u8, flags: u8, out: &mut Vec<u8>) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::super::{Decoder, Name, Pseudo};
    use super::*;

    #[test]
    fn the_decoder_reads_what_the_encoder_writes() {
        let mut block = Vec::new();
        encode_status(200, &mut block);
        encode_status(503, &mut block);
        encode_field("content-type", b"text/plain", &mut block);
        encode_field("x-long", &[b'v'; 300], &mut block);
        let mut fields = Vec::new();
        Decoder::new(4096)
            .decode(&block, |n, v| fields.push((n, v)))
            .unwrap();
        let status = |s: &'static str| {
            (
                Name::Pseudo(Pseudo::Status),
                bytes::Bytes::from_static(s.as_bytes()),
            )
        };
        assert_eq!(fields[0], status("200"));
        assert_eq!(fields[1], status("503"));
        assert_eq!(fields[2].0, Name::Header(http::header::CONTENT_TYPE));
        assert_eq!(fields[2].1, "text/plain".as_bytes());
        assert_eq!(fields[3].1.len(), 300);
    }
}
