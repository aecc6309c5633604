//! Decoding header blocks, with the dynamic table they maintain.

use super::{huffman, STATIC};
use bytes::Bytes;
use http::HeaderName;
use std::collections::VecDeque;
use std::sync::OnceLock;

/// Per-entry overhead counted against the table size (RFC 7541, 4.1).
const ENTRY_OVERHEAD: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pseudo {
    Method,
    Scheme,
    Authority,
    Path,
    Status,
    Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Name {
    Pseudo(Pseudo),
    Header(HeaderName),
}

impl Name {
    fn parse(bytes: &[u8]) -> Result<Name, Error> {
        let pseudo = match bytes {
            b":method" => Pseudo::Method,
            b":scheme" => Pseudo::Scheme,
            b":authority" => Pseudo::Authority,
            b":path" => Pseudo::Path,
            b":status" => Pseudo::Status,
            b":protocol" => Pseudo::Protocol,
            // Upper case is malformed in HTTP/2, so no normalising parse.
            _ => {
                return HeaderName::from_lowercase(bytes)
                    .map(Name::Header)
                    .map_err(|_| Error::BadName)
            }
        };
        Ok(Name::Pseudo(pseudo))
    }

    fn len(&self) -> usize {
        match self {
            Name::Pseudo(Pseudo::Method) => 7,
            Name::Pseudo(Pseudo::Scheme) => 7,
            Name::Pseudo(Pseudo::Authority) => 10,
            Name::Pseudo(Pseudo::Path) => 5,
            Name::Pseudo(Pseudo::Status) => 7,
            Name::Pseudo(Pseudo::Protocol) => 9,
            Name::Header(h) => h.as_str().len(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The block cannot be decoded: the connection's HPACK state is lost
    /// (COMPRESSION_ERROR).
    Compression,
    /// A field name HTTP does not allow: the request is malformed, but the
    /// block was decoded and the table stays in step. (Values are checked
    /// where they become header values.)
    BadName,
}

type Field = (Name, Bytes);

/// A table entry: a field, or the reason it is not one HTTP allows. Bad
/// entries still take their place (and size), so later indexes stay right.
#[derive(Clone)]
struct Entry {
    field: Result<Field, Error>,
    name_len: usize,
    size: usize,
}

fn static_table() -> &'static [Field] {
    static TABLE: OnceLock<Vec<Field>> = OnceLock::new();
    TABLE.get_or_init(|| {
        STATIC
            .iter()
            .map(|(n, v)| {
                (
                    Name::parse(n.as_bytes()).unwrap(),
                    Bytes::from_static(v.as_bytes()),
                )
            })
            .collect()
    })
}

pub struct Decoder {
    table: VecDeque<Entry>,
    size: usize,
    /// The size the peer chose, never above `limit`.
    max_size: usize,
    /// SETTINGS_HEADER_TABLE_SIZE as we advertised it.
    limit: usize,
    scratch: Vec<u8>,
}

impl Decoder {
    pub fn new(limit: usize) -> Self {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: limit,
            limit,
            scratch: Vec::new(),
        }
    }

    /// Decodes a whole header block, handing each field to `emit`. A field
    /// HTTP does not allow is reported after the block is fully decoded, so
    /// the table stays in step with the peer's encoder.
    pub fn decode(&mut self, mut src: &[u8], mut emit: impl FnMut(Name, Bytes)) -> Result<(), Error> {
        let mut malformed = None;
        let mut first = true;
        while let Some(&b) = src.first() {
            let field = if b & 0x80 != 0 {
                let index = integer(&mut src, 7)?;
                self.get(index)?
            } else if b & 0xe0 == 0x20 {
                // Table size updates may only open a block.
                let size = integer(&mut src, 5)?;
                if !first || size > self.limit {
                    return Err(Error::Compression);
                }
                self.max_size = size;
                self.evict(0);
                continue;
            } else {
                let (prefix, index_it) = if b & 0x40 != 0 { (6, true) } else { (4, false) };
                let index = integer(&mut src, prefix)?;
                let (name, name_len) = if index == 0 {
                    let raw = self.string(&mut src)?;
                    (Name::parse(&raw), raw.len())
                } else {
                    let len = self.name_len(index)?;
                    (self.get(index)?.map(|(name, _)| name), len)
                };
                let raw = self.string(&mut src)?;
                let size = name_len + raw.len() + ENTRY_OVERHEAD;
                let field = name.map(|n| (n, raw));
                if index_it {
                    self.insert(Entry {
                        field: field.clone(),
                        name_len,
                        size,
                    });
                }
                field
            };
            first = false;
            match field {
                Ok((name, value)) => emit(name, value),
                Err(e) => malformed = malformed.or(Some(e)),
            }
        }
        malformed.map_or(Ok(()), Err)
    }

    /// The entry at `index`, or a compression error if there is none.
    fn get(&self, index: usize) -> Result<Result<Field, Error>, Error> {
        let statics = static_table();
        match index {
            0 => Err(Error::Compression),
            i if i <= statics.len() => Ok(Ok(statics[i - 1].clone())),
            i => self
                .table
                .get(i - statics.len() - 1)
                .map(|e| e.field.clone())
                .ok_or(Error::Compression),
        }
    }

    fn name_len(&self, index: usize) -> Result<usize, Error> {
        let statics = static_table();
        match index {
            0 => Err(Error::Compression),
            i if i <= statics.len() => Ok(statics[i - 1].0.len()),
            i => self
                .table
                .get(i - statics.len() - 1)
                .map(|e| e.name_len)
                .ok_or(Error::Compression),
        }
    }

    fn insert(&mut self, entry: Entry) {
        self.evict(entry.size);
        if entry.size <= self.max_size {
            self.size += entry.size;
            self.table.push_front(entry);
        }
    }

    /// Evicts oldest entries until `room` more bytes fit (or the table is empty).
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            let Some(e) = self.table.pop_back() else {
                break;
            };
            self.size -= e.size;
        }
    }

    fn string(&mut self, src: &mut &[u8]) -> Result<Bytes, Error> {
        let huffman = src.first().is_some_and(|b| b & 0x80 != 0);
        let len = integer(src, 7)?;
        if len > src.len() {
            return Err(Error::Compression);
        }
        let (raw, rest) = src.split_at(len);
        *src = rest;
        if !huffman {
            return Ok(Bytes::copy_from_slice(raw));
        }
        self.scratch.clear();
        huffman::decode(raw, &mut self.scratch).ok_or(Error::Compression)?;
        Ok(Bytes::copy_from_slice(&self.scratch))
    }
}

/// An HPACK integer with an N-bit prefix (RFC 7541, 5.1).
fn integer(src: &mut &[u8], prefix: u8) -> Result<usize, Error> {
    let mask = (1u8 << prefix) - 1;
    let (&first, mut rest) = src.split_first().ok_or(Error::Compression)?;
    let mut value = (first & mask) as usize;
    if value == mask as usize {
        let mut shift = 0;
        loop {
            let (&b, tail) = rest.split_first().ok_or(Error::Compression)?;
            rest = tail;
            // Anything past 2^28 is more than any table or string here.
            if shift > 21 {
                return Err(Error::Compression);
            }
            value += ((b & 0x7f) as usize) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    *src = rest;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(fields: &[(Name, Bytes)]) -> Vec<String> {
        fields
            .iter()
            .map(|(n, v)| format!("{n:?}={}", std::str::from_utf8(v).unwrap()))
            .collect()
    }

    #[test]
    fn decodes_the_rfc_request_sequence_with_huffman() {
        // RFC 7541 C.4: three requests sharing one dynamic table.
        let blocks: [&[u8]; 3] = [
            &[
                0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90,
                0xf4, 0xff,
            ],
            &[
                0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
            ],
            &[
                0x82, 0x87, 0x85, 0xbf, 0x40, 0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f, 0x89,
                0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf,
            ],
        ];
        let mut decoder = Decoder::new(4096);
        let mut out = Vec::new();
        for block in blocks {
            let mut fields = Vec::new();
            decoder.decode(block, |n, v| fields.push((n, v))).unwrap();
            out.push(names(&fields));
        }
        assert_eq!(out[0][3], "Pseudo(Authority)=www.example.com");
        assert_eq!(out[1][4], "Header(\"cache-control\")=no-cache");
        assert_eq!(out[2][1], "Pseudo(Scheme)=https");
        assert_eq!(out[2][2], "Pseudo(Path)=/index.html");
        assert_eq!(out[2][4], "Header(\"custom-key\")=custom-value");
        // custom-key (54), cache-control (53) and :authority (57) remain.
        assert_eq!(decoder.size, 164);
    }

    #[test]
    fn a_bad_field_is_malformed_but_keeps_the_table_in_step() {
        let mut decoder = Decoder::new(4096);
        // Literal with indexing, new name "X-Up" (upper case): malformed.
        let block = [0x40, 4, b'X', b'-', b'U', b'p', 1, b'v'];
        assert_eq!(decoder.decode(&block, |_, _| {}), Err(Error::BadName));
        // A later block may index it (62) and is malformed again; a new valid
        // entry after it (63 after the insert) still decodes.
        assert_eq!(decoder.decode(&[0xbe], |_, _| {}), Err(Error::BadName));
        let block = [0x40, 1, b'a', 1, b'b', 0xbf];
        assert_eq!(decoder.decode(&block, |_, _| {}), Err(Error::BadName));
        let mut got = Vec::new();
        decoder.decode(&[0xbe], |n, v| got.push((n, v))).unwrap();
        assert_eq!(names(&got), ["Header(\"a\")=b"]);
    }

    #[test]
    fn truncated_and_out_of_range_input_is_a_compression_error() {
        let mut decoder = Decoder::new(4096);
        assert_eq!(decoder.decode(&[0xbe], |_, _| {}), Err(Error::Compression));
        assert_eq!(decoder.decode(&[0x80], |_, _| {}), Err(Error::Compression));
        assert_eq!(
            decoder.decode(&[0x40, 5, b'a'], |_, _| {}),
            Err(Error::Compression)
        );
        assert_eq!(
            decoder.decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff], |_, _| {}),
            Err(Error::Compression)
        );
        // A size update above the advertised limit, or after a field.
        assert_eq!(
            decoder.decode(&[0x3f, 0xe2, 0x1f], |_, _| {}),
            Err(Error::Compression)
        );
        assert_eq!(decoder.decode(&[0x82, 0x20], |_, _| {}), Err(Error::Compression));
        // A size update to zero empties the table.
        decoder.decode(&[0x40, 1, b'a', 1, b'b'], |_, _| {}).unwrap();
        decoder.decode(&[0x20], |_, _| {}).unwrap();
        assert_eq!(decoder.size, 0);
    }
}
