//! A JSON object written field by field into a byte buffer, the same bytes
//! `serde_json::to_writer` writes for a struct of those fields: the keys
//! are literals (never escaped), a string is copied as it is when nothing
//! in it needs escaping, and anything else (nested structs, floats) goes
//! through serde. A list of 10,000 statuses spent most of its time in
//! serde's byte-at-a-time escaping of keys and plain strings.

use serde::Serialize;

pub struct Obj<'a> {
    buf: &'a mut Vec<u8>,
    first: bool,
}

/// Nothing in `s` needs an escape in JSON (serde_json escapes control
/// characters, the quote and the backslash, and nothing else).
fn plain(s: &str) -> bool {
    s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// `s` as a JSON string.
#[inline]
pub fn string(buf: &mut Vec<u8>, s: &str) {
    if plain(s) {
        buf.reserve(s.len() + 2);
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        serde(buf, s);
    }
}

/// `v` as serde_json writes it. Writing into a Vec cannot fail; a value
/// serde refuses (a map with non-string keys: none here) writes `null`.
pub fn serde(buf: &mut Vec<u8>, v: &(impl Serialize + ?Sized)) {
    let start = buf.len();
    if serde_json::to_writer(&mut *buf, v).is_err() {
        buf.truncate(start);
        buf.extend_from_slice(b"null");
    }
}

impl<'a> Obj<'a> {
    pub fn begin(buf: &'a mut Vec<u8>) -> Obj<'a> {
        buf.push(b'{');
        Obj { buf, first: true }
    }

    /// The key, which must need no escape (inlined: a constant key is
    /// then copied without a call).
    #[inline]
    fn key(&mut self, k: &'static str) -> &mut Vec<u8> {
        debug_assert!(plain(k), "{k}");
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        self.buf.push(b'"');
        self.buf.extend_from_slice(k.as_bytes());
        self.buf.extend_from_slice(b"\":");
        self.buf
    }

    #[inline]
    pub fn str(&mut self, k: &'static str, v: &str) -> &mut Self {
        string(self.key(k), v);
        self
    }

    pub fn opt_str(&mut self, k: &'static str, v: Option<&str>) -> &mut Self {
        match v {
            Some(v) => self.str(k, v),
            None => self.raw(k, "null"),
        }
    }

    pub fn bool(&mut self, k: &'static str, v: bool) -> &mut Self {
        self.raw(k, if v { "true" } else { "false" })
    }

    /// A number, an Option, a struct, a list: as serde writes it.
    pub fn value(&mut self, k: &'static str, v: &(impl Serialize + ?Sized)) -> &mut Self {
        serde(self.key(k), v);
        self
    }

    /// Text that is already JSON.
    pub fn raw(&mut self, k: &'static str, json: &str) -> &mut Self {
        self.key(k).extend_from_slice(json.as_bytes());
        self
    }

    /// The buffer, to write the value of `k` into directly.
    pub fn field(&mut self, k: &'static str) -> &mut Vec<u8> {
        self.key(k)
    }

    pub fn end(self) {
        self.buf.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct S<'a> {
        a: &'a str,
        b: Option<&'a str>,
        c: bool,
        d: Option<u64>,
        e: Vec<f64>,
    }

    fn by_hand(s: &S) -> String {
        let mut buf = Vec::new();
        let mut o = Obj::begin(&mut buf);
        o.str("a", s.a)
            .opt_str("b", s.b)
            .bool("c", s.c)
            .value("d", &s.d)
            .value("e", &s.e);
        o.end();
        String::from_utf8(buf).unwrap()
    }

    proptest::proptest! {
        /// Strings of anything (quotes, backslashes, control characters,
        /// DEL, non-ASCII): the bytes serde writes.
        #[test]
        fn the_same_bytes_as_serde(a in "\\PC*|[\"\\\\\u{0}-\u{1f}\u{7f}é]{0,6}", b in proptest::option::of("[ -~]{0,8}"), c: bool, d: Option<u64>, e in proptest::collection::vec(-1e9f64..1e9, 0..3)) {
            let s = S { a: &a, b: b.as_deref(), c, d, e };
            proptest::prop_assert_eq!(by_hand(&s), serde_json::to_string(&s).unwrap());
        }
    }
}
