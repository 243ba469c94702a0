//! Compact JSON (as the daemon sends it) indented the way
//! `serde_json::to_string_pretty` writes it, without parsing it into
//! values: `list --json` of 10,000 instances is a few megabytes, and
//! parsing then re-serialising them cost more than the daemon's answer.
//! It is indented a piece at a time as it arrives from the socket
//! ([`Indent::feed`]), so the client's work overlaps the daemon's.

use std::io::{self, Write};

/// `compact` must be JSON without whitespace outside strings (what
/// `serde_json::to_writer` writes); the result has the same bytes as
/// `to_string_pretty` of the same value.
#[cfg(test)]
pub fn indent(compact: &str) -> String {
    let mut out = Vec::new();
    indent_to(compact.as_bytes(), &mut out).unwrap();
    // Only ASCII bytes were added between whole UTF-8 sequences.
    String::from_utf8(out).unwrap()
}

/// [`indent`], written to `w` a chunk at a time as it is made (the
/// indented list of 10,000 instances is never held whole).
pub fn indent_to(b: &[u8], w: &mut impl Write) -> io::Result<()> {
    let mut ind = Indent::default();
    let mut out = Vec::with_capacity(2 * Indent::CHUNK);
    for part in b.chunks(Indent::CHUNK) {
        ind.feed(part, &mut out);
        w.write_all(&out)?;
        out.clear();
    }
    ind.finish(&mut out);
    w.write_all(&out)
}

/// Where the indenter is between two pieces of the input.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum At {
    #[default]
    Between,
    /// Inside a string, after its opening quote.
    InString,
    /// Inside a string, just after a backslash.
    Escaped,
    /// Just after a `[` or `{` (written or not yet, by whether the next
    /// byte closes it: an empty one is written `[]`).
    Opened(u8),
}

/// The indenter, fed the compact text in pieces cut anywhere.
#[derive(Debug, Default)]
pub struct Indent {
    depth: usize,
    at: At,
}

impl Indent {
    /// The size of the pieces worth writing out.
    pub const CHUNK: usize = 1 << 16;

    fn newline(&self, out: &mut Vec<u8>) {
        out.push(b'\n');
        out.resize(out.len() + 2 * self.depth, b' ');
    }

    /// Appends to `out` the indented text of `b`, the next piece.
    pub fn feed(&mut self, b: &[u8], out: &mut Vec<u8>) {
        let mut i = 0;
        while i < b.len() {
            match self.at {
                At::InString => match memchr::memchr2(b'"', b'\\', &b[i..]) {
                    // The rest of the string at once, to its closing quote
                    // (a byte at a time was most of a 10,000-instance list).
                    Some(n) => {
                        let c = b[i + n];
                        out.extend_from_slice(&b[i..=i + n]);
                        i += n + 1;
                        self.at = if c == b'"' { At::Between } else { At::Escaped };
                    }
                    None => {
                        out.extend_from_slice(&b[i..]);
                        return;
                    }
                },
                At::Escaped => {
                    out.push(b[i]);
                    i += 1;
                    self.at = At::InString;
                }
                At::Opened(open) => {
                    self.at = At::Between;
                    if matches!(b[i], b']' | b'}') {
                        out.extend_from_slice(&[open, b[i]]);
                        i += 1;
                    } else {
                        out.push(open);
                        self.depth += 1;
                        self.newline(out);
                    }
                }
                At::Between => i = self.between(b, i, out),
            }
        }
    }

    /// Outside strings: the byte at `i` (a number, true, false or null to
    /// the next structural byte); returns where to go on.
    fn between(&mut self, b: &[u8], i: usize, out: &mut Vec<u8>) -> usize {
        let c = b[i];
        match c {
            b'"' => {
                out.push(c);
                self.at = At::InString;
            }
            b'[' | b'{' => self.at = At::Opened(c),
            b']' | b'}' => {
                self.depth = self.depth.saturating_sub(1);
                self.newline(out);
                out.push(c);
            }
            b',' => {
                out.push(c);
                self.newline(out);
            }
            b':' => out.extend_from_slice(b": "),
            _ => {
                let end = b[i..]
                    .iter()
                    .position(|c| matches!(c, b',' | b']' | b'}' | b':' | b'"' | b'[' | b'{'))
                    .map_or(b.len(), |n| i + n);
                out.extend_from_slice(&b[i..end]);
                return end;
            }
        }
        i + 1
    }

    /// The end of the input: a `[` or `{` it ended on is written.
    pub fn finish(self, out: &mut Vec<u8>) {
        if let At::Opened(open) = self.at {
            out.push(open);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Indent, indent};
    use serde_json::json;

    #[test]
    fn same_bytes_as_serde_pretty() {
        let values = [
            json!([]),
            json!({}),
            json!([{"id": "a\"b\\", "x": [], "y": {}, "z": null, "n": -1.5e-7,
                    "s": "{[,:]}", "u": "é\u{1}", "nested": [[1, 2], {"k": [true]}]}]),
            json!(3),
            json!("text"),
        ];
        for v in values {
            let compact = serde_json::to_string(&v).unwrap();
            assert_eq!(indent(&compact), serde_json::to_string_pretty(&v).unwrap());
        }
    }

    /// Any JSON value: strings of quotes, backslashes, control and
    /// non-ASCII characters, numbers, nesting.
    fn value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let text = "[\"\\\\{}\\[\\],: a-zé\u{1}\u{7f}\u{2028}😀]{0,12}";
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            text.prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(text, inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn same_bytes_as_serde_pretty_for_any_value(v in value()) {
            let compact = serde_json::to_string(&v).unwrap();
            proptest::prop_assert_eq!(indent(&compact), serde_json::to_string_pretty(&v).unwrap());
        }

        /// As it comes from a socket: cut anywhere, in a string, an
        /// escape, a number, between a bracket and its close.
        #[test]
        fn the_same_bytes_however_the_input_is_cut(v in value(), size in 1usize..9, first in 0usize..40) {
            let compact = serde_json::to_string(&v).unwrap();
            let b = compact.as_bytes();
            let first = first.min(b.len());
            let mut ind = Indent::default();
            let mut out = Vec::new();
            ind.feed(&b[..first], &mut out);
            for piece in b[first..].chunks(size) {
                ind.feed(piece, &mut out);
            }
            ind.finish(&mut out);
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string_pretty(&v).unwrap());
        }
    }
}
