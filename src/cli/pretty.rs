//! Compact JSON (as the daemon sends it) indented the way
//! `serde_json::to_string_pretty` writes it, without parsing it into
//! values: `list --json` of 10,000 instances is a few megabytes, and
//! parsing then re-serialising them cost more than the daemon's answer.

/// `compact` must be JSON without whitespace outside strings (what
/// `serde_json::to_writer` writes); the result has the same bytes as
/// `to_string_pretty` of the same value.
pub fn indent(compact: &str) -> String {
    let b = compact.as_bytes();
    let mut out = Vec::with_capacity(b.len() * 2);
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    let newline = |out: &mut Vec<u8>, depth: usize| {
        out.push(b'\n');
        out.resize(out.len() + 2 * depth, b' ');
    };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_str = false;
            }
            i += 1;
            continue;
        }
        match c {
            b'"' => {
                in_str = true;
                out.push(c);
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
            _ => out.push(c),
        }
        i += 1;
    }
    // Only ASCII bytes were added between whole UTF-8 sequences.
    String::from_utf8(out).unwrap_or_default()
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
}
