//! Compact JSON (as the daemon sends it) indented the way
//! `serde_json::to_string_pretty` writes it, without parsing it into
//! values: `list --json` of 10,000 instances is a few megabytes, and
//! parsing then re-serialising them cost more than the daemon's answer.

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
    const CHUNK: usize = 1 << 16;
    let mut out = Vec::with_capacity(2 * CHUNK);
    let mut depth = 0usize;
    let newline = |out: &mut Vec<u8>, depth: usize| {
        out.push(b'\n');
        out.resize(out.len() + 2 * depth, b' ');
    };
    let mut i = 0;
    while i < b.len() {
        if out.len() >= CHUNK {
            w.write_all(&out)?;
            out.clear();
        }
        let c = b[i];
        match c {
            b'"' => {
                // The whole string at once, to its closing quote (the
                // byte-at-a-time copy was most of a 10,000-instance list).
                let end = string_end(b, i + 1);
                out.extend_from_slice(&b[i..end]);
                i = end;
                continue;
            }
            b'[' | b'{' if matches!(b.get(i + 1), Some(b']' | b'}')) => {
                out.extend_from_slice(&b[i..i + 2]);
                i += 1;
            }
            b'[' | b'{' => {
                out.push(c);
                depth += 1;
                newline(&mut out, depth);
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            b',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            b':' => out.extend_from_slice(b": "),
            _ => {
                // A number, true, false or null: to the next structural byte.
                let end = b[i..]
                    .iter()
                    .position(|c| matches!(c, b',' | b']' | b'}' | b':' | b'"' | b'[' | b'{'))
                    .map_or(b.len(), |n| i + n);
                out.extend_from_slice(&b[i..end]);
                i = end;
                continue;
            }
        }
        i += 1;
    }
    w.write_all(&out)
}

/// Just past the quote that closes the string whose first byte after its
/// opening quote is at `from` (a backslash escapes the byte after it).
fn string_end(b: &[u8], from: usize) -> usize {
    let mut k = from;
    while let Some(n) = memchr::memchr2(b'"', b'\\', &b[k..]) {
        k += n;
        if b[k] == b'"' {
            return k + 1;
        }
        k += 2;
        if k >= b.len() {
            return b.len();
        }
    }
    b.len()
}

#[cfg(test)]
mod tests {
    use super::indent;
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
    }
}
