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

#[cfg(test)]
mod rfc7541_tests {
    //! What RFC 7541 asks of a decoder beyond the tests above: eviction in a
    //! small table (4.4, C.5, C.6), size updates (4.2, 6.3) and never-indexed
    //! literals (6.2.3).
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|d| u8::from_str_radix(std::str::from_utf8(d).unwrap(), 16).unwrap())
            .collect()
    }

    /// An integer with `flags` above an N-bit prefix (RFC 7541, 5.1).
    fn int(flags: u8, prefix: u8, mut value: usize) -> Vec<u8> {
        let max = (1usize << prefix) - 1;
        if value < max {
            return vec![flags | value as u8];
        }
        let mut out = vec![flags | max as u8];
        value -= max;
        while value >= 0x80 {
            out.push(value as u8 | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
        out
    }

    /// A literal field without Huffman: `kind` is 0x40 (incremental indexing),
    /// 0x00 (without indexing) or 0x10 (never indexed); `index` 0 means a new
    /// `name`.
    fn literal(kind: u8, index: usize, name: &str, value: &str) -> Vec<u8> {
        let prefix = if kind == 0x40 { 6 } else { 4 };
        let mut out = int(kind, prefix, index);
        for s in if index == 0 {
            vec![name, value]
        } else {
            vec![value]
        } {
            out.extend(int(0, 7, s.len()));
            out.extend_from_slice(s.as_bytes());
        }
        out
    }

    /// A field as the RFC writes it, `name: value`.
    fn line(name: &Name, value: &[u8]) -> String {
        let name = match name {
            Name::Pseudo(Pseudo::Method) => ":method",
            Name::Pseudo(Pseudo::Scheme) => ":scheme",
            Name::Pseudo(Pseudo::Authority) => ":authority",
            Name::Pseudo(Pseudo::Path) => ":path",
            Name::Pseudo(Pseudo::Status) => ":status",
            Name::Pseudo(Pseudo::Protocol) => ":protocol",
            Name::Header(h) => h.as_str(),
        };
        format!("{name}: {}", std::str::from_utf8(value).unwrap())
    }

    fn decode(decoder: &mut Decoder, block: &[u8]) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        decoder.decode(block, |n, v| out.push(line(&n, &v)))?;
        Ok(out)
    }

    /// Checks the dynamic table against a listing like the RFC's, newest
    /// entry (index 62) first, each with its size, then the table's size.
    #[track_caller]
    fn assert_table(decoder: &Decoder, entries: &[&str], size: usize) {
        let listed: Vec<String> = decoder
            .table
            .iter()
            .map(|e| {
                let (n, v) = e.field.as_ref().unwrap();
                format!("(s = {}) {}", e.size, line(n, v))
            })
            .collect();
        assert_eq!(listed, entries);
        assert_eq!(decoder.size, size);
        assert_eq!(decoder.table.iter().map(|e| e.size).sum::<usize>(), size);
    }

    /// C.5 and C.6 send the same three responses (without and with Huffman)
    /// through one 256-octet table, and list the same results.
    fn decode_the_rfc_responses(blocks: [&str; 3]) {
        let mut decoder = Decoder::new(256);
        let date = "date: Mon, 21 Oct 2013 20:13:21 GMT";
        let location = "location: https://www.example.com";

        let fields = decode(&mut decoder, &hex(blocks[0])).unwrap();
        assert_eq!(fields, [":status: 302", "cache-control: private", date, location]);
        assert_table(
            &decoder,
            &[
                "(s = 63) location: https://www.example.com",
                "(s = 65) date: Mon, 21 Oct 2013 20:13:21 GMT",
                "(s = 52) cache-control: private",
                "(s = 42) :status: 302",
            ],
            222,
        );

        // Adding ":status: 307" evicts ":status: 302"; the indexes that
        // follow it already count the new entry.
        let fields = decode(&mut decoder, &hex(blocks[1])).unwrap();
        assert_eq!(fields, [":status: 307", "cache-control: private", date, location]);
        assert_table(
            &decoder,
            &[
                "(s = 42) :status: 307",
                "(s = 63) location: https://www.example.com",
                "(s = 65) date: Mon, 21 Oct 2013 20:13:21 GMT",
                "(s = 52) cache-control: private",
            ],
            222,
        );

        let cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
        let fields = decode(&mut decoder, &hex(blocks[2])).unwrap();
        assert_eq!(
            fields,
            [
                ":status: 200",
                "cache-control: private",
                "date: Mon, 21 Oct 2013 20:13:22 GMT",
                location,
                "content-encoding: gzip",
                &format!("set-cookie: {cookie}"),
            ]
        );
        assert_table(
            &decoder,
            &[
                &format!("(s = 98) set-cookie: {cookie}"),
                "(s = 52) content-encoding: gzip",
                "(s = 65) date: Mon, 21 Oct 2013 20:13:22 GMT",
            ],
            215,
        );
        // Three entries left: 65 now refers to nothing.
        assert_eq!(decode(&mut decoder, &[0xc1]), Err(Error::Compression));
    }

    #[test]
    fn rfc_responses_without_huffman_evict_from_a_256_octet_table() {
        // RFC 7541 C.5.1 to C.5.3.
        decode_the_rfc_responses([
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
             6c65 2e63 6f6d",
            "4803 3330 37c1 c0bf",
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
             54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
             5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
             3d31",
        ]);
    }

    #[test]
    fn rfc_responses_with_huffman_evict_from_a_256_octet_table() {
        // RFC 7541 C.6.1 to C.6.3.
        decode_the_rfc_responses([
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
             2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            "4883 640e ffc1 c0bf",
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
             77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
             9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        ]);
    }

    #[test]
    fn an_entry_larger_than_the_table_empties_it_and_is_not_added() {
        let mut decoder = Decoder::new(256);
        let block = [literal(0x40, 0, "a", "1"), literal(0x40, 0, "b", "2")].concat();
        decode(&mut decoder, &block).unwrap();
        assert_table(&decoder, &["(s = 34) b: 2", "(s = 34) a: 1"], 68);

        // 1 + 224 + 32 = 257 octets, one more than the table holds. RFC 7541
        // 4.4: not an error; the field is still emitted.
        let big = "v".repeat(224);
        let fields = decode(&mut decoder, &literal(0x40, 0, "c", &big)).unwrap();
        assert_eq!(fields, [format!("c: {big}")]);
        assert_table(&decoder, &[], 0);
        // Neither the old entries nor the oversized one can be referenced.
        for index in [0xbe, 0xbf, 0xc0] {
            assert_eq!(decode(&mut decoder, &[index]), Err(Error::Compression));
        }

        // The table still works, and an entry of exactly 256 octets fits.
        decode(&mut decoder, &literal(0x40, 0, "a", "1")).unwrap();
        let fits = "v".repeat(223);
        decode(&mut decoder, &literal(0x40, 0, "c", &fits)).unwrap();
        assert_table(&decoder, &[&format!("(s = 256) c: {fits}")], 256);
        assert_eq!(decode(&mut decoder, &[0xbe]).unwrap(), [format!("c: {fits}")]);
    }

    #[test]
    fn a_literal_may_name_the_entry_its_own_insertion_evicts() {
        // RFC 7541 4.4: the name is resolved before eviction, so it survives
        // losing its entry.
        let mut decoder = Decoder::new(100);
        let block = [literal(0x40, 0, "custom-key", "v1"), literal(0x40, 0, "b", "2")].concat();
        decode(&mut decoder, &block).unwrap();
        assert_table(&decoder, &["(s = 34) b: 2", "(s = 44) custom-key: v1"], 78);

        // Name from 63, the oldest entry. The new entry (52 octets) needs it
        // evicted, and only it.
        let fields = decode(&mut decoder, &literal(0x40, 63, "", "0123456789")).unwrap();
        assert_eq!(fields, ["custom-key: 0123456789"]);
        assert_table(
            &decoder,
            &["(s = 52) custom-key: 0123456789", "(s = 34) b: 2"],
            86,
        );

        // Name from 62 for an entry too large to add (10 + 60 + 32 octets):
        // everything goes, the name included, and the field still decodes.
        let long = "x".repeat(60);
        let fields = decode(&mut decoder, &literal(0x40, 62, "", &long)).unwrap();
        assert_eq!(fields, [format!("custom-key: {long}")]);
        assert_table(&decoder, &[], 0);
    }

    #[test]
    fn two_size_updates_may_open_a_block() {
        let mut decoder = Decoder::new(256);
        decode(&mut decoder, &literal(0x40, 0, "a", "1")).unwrap();

        // RFC 7541 4.2: after settings changes the encoder signals the
        // smallest size (0, which empties the table), then the final one
        // (100: 0x3f then 100 - 31 = 0x45).
        let block = [vec![0x20, 0x3f, 0x45], literal(0x40, 0, "b", "2")].concat();
        assert_eq!(decode(&mut decoder, &block).unwrap(), ["b: 2"]);
        assert_table(&decoder, &["(s = 34) b: 2"], 34);

        // The table is now bounded by 100: a third 34-octet entry evicts one.
        let block = [literal(0x40, 0, "c", "3"), literal(0x40, 0, "d", "4")].concat();
        decode(&mut decoder, &block).unwrap();
        assert_table(&decoder, &["(s = 34) d: 4", "(s = 34) c: 3"], 68);

        // Growing back up to our advertised limit (256) is allowed too.
        decode(&mut decoder, &[0x3f, 0xe1, 0x01]).unwrap();
        let block = [literal(0x40, 0, "e", "5"), literal(0x40, 0, "f", "6")].concat();
        decode(&mut decoder, &block).unwrap();
        assert_table(
            &decoder,
            &["(s = 34) f: 6", "(s = 34) e: 5", "(s = 34) d: 4", "(s = 34) c: 3"],
            136,
        );
    }

    #[test]
    fn a_size_update_above_our_limit_is_a_compression_error() {
        // 257 (0x3f 0xe2 0x01) against an advertised 256, alone or as the
        // second of two updates (RFC 7541 6.3).
        for block in [&[0x3f, 0xe2, 0x01][..], &[0x20, 0x3f, 0xe2, 0x01]] {
            let mut decoder = Decoder::new(256);
            assert_eq!(decode(&mut decoder, block), Err(Error::Compression));
        }
    }

    #[test]
    fn a_size_update_after_a_field_is_a_compression_error() {
        // RFC 7541 4.2: updates only at the start of a block, whatever the
        // field before them, and even when an update opened the block.
        let blocks = [
            vec![0x20, 0x82, 0x20],
            [literal(0x40, 0, "a", "1"), vec![0x20]].concat(),
            [literal(0x00, 1, "", "x"), vec![0x3f, 0x45]].concat(),
            [vec![0x20], literal(0x10, 0, "a", "1"), vec![0x20]].concat(),
        ];
        for block in blocks {
            let mut decoder = Decoder::new(256);
            assert_eq!(
                decode(&mut decoder, &block),
                Err(Error::Compression),
                "{block:02x?}"
            );
        }
    }

    #[test]
    fn never_indexed_literals_decode_and_stay_out_of_the_table() {
        let mut decoder = Decoder::new(4096);
        decode(&mut decoder, &literal(0x40, 0, "custom-key", "v1")).unwrap();

        // RFC 7541 C.2.3: a new name.
        let block = hex("1008 7061 7373 776f 7264 0673 6563 7265 74");
        assert_eq!(decode(&mut decoder, &block).unwrap(), ["password: secret"]);

        // Indexed names: 4 (:path), 32 (cookie, past the 4-bit prefix: 0x1f
        // then 32 - 15) and 62 (the dynamic entry).
        let block = [
            literal(0x10, 4, "", "/sample/path"),
            vec![0x1f, 0x11, 3, b'k', b'=', b'v'],
            literal(0x10, 62, "", "v2"),
        ]
        .concat();
        assert_eq!(
            decode(&mut decoder, &block).unwrap(),
            [":path: /sample/path", "cookie: k=v", "custom-key: v2"]
        );

        // Nothing was added: the table still holds only the first entry.
        assert_table(&decoder, &["(s = 44) custom-key: v1"], 44);
        assert_eq!(decode(&mut decoder, &[0xbf]), Err(Error::Compression));
    }
}
