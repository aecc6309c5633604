//! HPACK's Huffman code (RFC 7541, Appendix B). The code is canonical, so
//! the code lengths alone define it; decoding walks a table of 4-bit steps
//! built from them once.

use std::sync::OnceLock;

/// Code length in bits of each octet, then of EOS (256), from RFC 7541 Appendix B.
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, //
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, //
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, //
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, //
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, //
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, //
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, //
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, //
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, //
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, //
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, //
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, //
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, //
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, //
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, //
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, //
    30,
];

const EOS: u16 = 256;

/// Canonical codes: symbols ordered by (length, symbol) take consecutive values.
fn codes() -> [u32; 257] {
    let mut order: Vec<u16> = (0..=EOS).collect();
    order.sort_by_key(|&s| (LENGTHS[s as usize], s));
    let mut codes = [0u32; 257];
    let (mut code, mut len) = (0u32, LENGTHS[order[0] as usize]);
    for (i, &s) in order.iter().enumerate() {
        let l = LENGTHS[s as usize];
        if i > 0 {
            code = (code + 1) << (l - len);
        }
        len = l;
        codes[s as usize] = code;
    }
    codes
}

/// One 4-bit step from a node of the code tree.
#[derive(Clone, Copy, Default)]
struct Step {
    next: u16,
    /// The octet completed on the way, if any (at most one: codes are ≥ 5 bits).
    emit: Option<u8>,
    /// The step ran into EOS, which must never appear in a string.
    fail: bool,
}

struct Table {
    steps: Vec<[Step; 16]>,
    /// Whether input may end at a node: it lies on the all-ones path, at most 7 bits deep.
    may_end: Vec<bool>,
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(build)
}

fn build() -> Table {
    // Binary tree: children[node] = [zero, one]; leaves are 0x8000 | symbol.
    const LEAF: u16 = 0x8000;
    let codes = codes();
    let mut children: Vec<[u16; 2]> = vec![[0, 0]];
    let mut depth = vec![0u8];
    let mut ones = vec![true];
    for s in 0..=EOS {
        let (code, len) = (codes[s as usize], LENGTHS[s as usize]);
        let mut node = 0usize;
        for bit in (0..len).rev() {
            let b = ((code >> bit) & 1) as usize;
            if bit == 0 {
                children[node][b] = LEAF | s;
            } else {
                if children[node][b] == 0 {
                    children.push([0, 0]);
                    depth.push(depth[node] + 1);
                    ones.push(ones[node] && b == 1);
                    children[node][b] = (children.len() - 1) as u16;
                }
                node = children[node][b] as usize;
            }
        }
    }
    let steps = (0..children.len())
        .map(|start| {
            let mut row = [Step::default(); 16];
            for (nibble, step) in row.iter_mut().enumerate() {
                let mut node = start as u16;
                for bit in (0..4).rev() {
                    let child = children[node as usize][(nibble >> bit) & 1];
                    if child & LEAF != 0 {
                        let symbol = child & !LEAF;
                        if symbol == EOS {
                            step.fail = true;
                            break;
                        }
                        step.emit = Some(symbol as u8);
                        node = 0;
                    } else {
                        node = child;
                    }
                }
                step.next = node;
            }
            row
        })
        .collect();
    let may_end = depth.iter().zip(&ones).map(|(&d, &o)| o && d <= 7).collect();
    Table { steps, may_end }
}

/// Decodes a Huffman-coded string; None if it is not valid HPACK Huffman.
pub fn decode(src: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let table = table();
    out.reserve(src.len() * 8 / 5);
    let mut node = 0u16;
    for &byte in src {
        for nibble in [byte >> 4, byte & 0xf] {
            let step = table.steps[node as usize][nibble as usize];
            if step.fail {
                return None;
            }
            if let Some(octet) = step.emit {
                out.push(octet);
            }
            node = step.next;
        }
    }
    table.may_end[node as usize].then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(s: &[u8]) -> Vec<u8> {
        let codes = codes();
        let (mut acc, mut bits, mut out) = (0u64, 0u32, Vec::new());
        for &b in s {
            acc = (acc << LENGTHS[b as usize]) | codes[b as usize] as u64;
            bits += LENGTHS[b as usize] as u32;
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        if bits > 0 {
            out.push(((acc << (8 - bits)) as u8) | (0xff >> bits));
        }
        out
    }

    #[test]
    fn codes_match_the_rfc_at_both_ends() {
        let c = codes();
        assert_eq!((c[b'0' as usize], LENGTHS[b'0' as usize]), (0x0, 5));
        assert_eq!((c[b'a' as usize], LENGTHS[b'a' as usize]), (0x3, 5));
        assert_eq!((c[0], LENGTHS[0]), (0x1ff8, 13));
        assert_eq!((c[256], LENGTHS[256]), (0x3fff_ffff, 30));
    }

    #[test]
    fn decodes_the_rfc_examples() {
        // RFC 7541 C.4.1 and C.6.1.
        let www = [
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        let mut out = Vec::new();
        decode(&www, &mut out).unwrap();
        assert_eq!(out, b"www.example.com");
        let date = [
            0xd0, 0x7a, 0xbe, 0x94, 0x10, 0x54, 0xd4, 0x44, 0xa8, 0x20, 0x05, 0x95, 0x04, 0x0b, 0x81, 0x66,
            0xe0, 0x82, 0xa6, 0x2d, 0x1b, 0xff,
        ];
        out.clear();
        decode(&date, &mut out).unwrap();
        assert_eq!(out, b"Mon, 21 Oct 2013 20:13:21 GMT");
    }

    #[test]
    fn every_octet_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        let mut out = Vec::new();
        decode(&encode(&all), &mut out).unwrap();
        assert_eq!(out, all);
    }

    #[test]
    fn bad_padding_and_eos_are_refused() {
        let mut out = Vec::new();
        // 'a' (00011) padded with zeros instead of ones.
        assert!(decode(&[0b0001_1000], &mut out).is_none());
        // More than 7 bits of padding: 'a' then a whole 0xff byte.
        assert!(decode(&[0b0001_1111, 0xff], &mut out).is_none());
        // EOS spelled out in full.
        assert!(decode(&[0xff, 0xff, 0xff, 0xff], &mut out).is_none());
    }
}
