//! A typed reader over toml's spanned document tree.
//!
//! serde's `deny_unknown_fields` stops at the first unknown key of a file; an
//! operator fixing a config wants every problem at once, each with its line
//! (Horust and ripgrep do the same). So the instances file is parsed into
//! `DeTable` (every key and value keeps its byte span) and read field by
//! field here; every mistake becomes a [`Diag`] and reading goes on.

use std::cell::RefCell;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::model::Origin;

mod nested;
mod suggest;

pub use suggest::did_you_mean;

/// One problem in the instances file, printed as `FILE:LINE: message`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diag {
    pub file: Arc<Path>,
    /// 1-based; 0 when the problem concerns the whole file.
    pub line: u32,
    pub message: String,
}

impl std::fmt::Display for Diag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
        }
    }
}

/// A value and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct At<T> {
    pub v: T,
    pub at: Origin,
}

/// One source file: its text and line index.
pub struct Source {
    pub path: Arc<Path>,
    pub text: String,
    line_starts: Vec<usize>,
}

impl Source {
    pub fn new(path: &Path, text: String) -> Source {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Source {
            path: Arc::from(path),
            text,
            line_starts,
        }
    }

    pub fn line_of(&self, offset: usize) -> u32 {
        let idx = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        idx as u32 + 1
    }

    pub fn origin(&self, span: Range<usize>) -> Origin {
        Origin {
            file: self.path.clone(),
            line: self.line_of(span.start),
        }
    }
}

/// Collects diagnostics across every file of the directory.
#[derive(Default)]
pub struct Diags(RefCell<Vec<Diag>>);

impl Diags {
    pub fn push(&self, at: &Origin, message: impl Into<String>) {
        self.0.borrow_mut().push(Diag {
            file: at.file.clone(),
            line: at.line,
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.borrow().len()
    }

    /// Sorted by file and line, duplicates removed.
    pub fn into_sorted(self) -> Vec<Diag> {
        let mut v = self.0.into_inner();
        v.sort();
        v.dedup();
        v
    }
}

/// The key names of a table kind, for "unknown field" and "did you mean".
pub type Known = &'static [&'static str];

/// Reads one TOML table, remembering where it is and what it may contain.
pub struct Table<'a, 'i> {
    src: &'a Source,
    diags: &'a Diags,
    table: &'a DeTable<'i>,
    /// "[service.counter]": how messages name this table.
    pub what: String,
    pub at: Origin,
    known: Known,
}

impl<'a, 'i> Table<'a, 'i> {
    pub fn new(
        src: &'a Source,
        diags: &'a Diags,
        table: &'a DeTable<'i>,
        what: String,
        span: Range<usize>,
        known: Known,
    ) -> Self {
        Table {
            src,
            diags,
            table,
            what,
            at: src.origin(span),
            known,
        }
    }

    pub fn source(&self) -> &'a Source {
        self.src
    }

    pub fn diags(&self) -> &'a Diags {
        self.diags
    }

    pub fn error(&self, at: &Origin, msg: impl Into<String>) {
        self.diags.push(at, msg);
    }

    /// Reports every key this table kind does not have.
    pub fn check_unknown(&self) {
        for (k, v) in self.table.iter() {
            let key: &str = k.get_ref();
            if self.known.contains(&key) {
                continue;
            }
            let at = self.src.origin(k.span().start..v.span().end);
            let hint = match did_you_mean(key, self.known) {
                Some(s) => format!("; did you mean `{s}`?"),
                None => format!("; known fields: {}", self.known.join(", ")),
            };
            self.diags
                .push(&at, format!("unknown field `{key}` in {}{hint}", self.what));
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = (&'a str, Origin)> + '_ {
        self.table
            .iter()
            .map(|(k, _)| (k.get_ref().as_ref(), self.src.origin(k.span())))
    }

    fn raw(&self, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
        debug_assert!(self.known.contains(&key), "{key} not in known list");
        self.table.get(key)
    }

    pub fn has(&self, key: &str) -> bool {
        self.raw(key).is_some()
    }

    pub fn origin_of(&self, key: &str) -> Origin {
        match self.table.get_key_value(key) {
            Some((k, _)) => self.src.origin(k.span()),
            None => self.at.clone(),
        }
    }

    fn type_error(&self, key: &str, v: &Spanned<DeValue<'_>>, want: &str) {
        self.error(
            &self.src.origin(v.span()),
            format!(
                "`{key}` in {} must be {want}, not {}",
                self.what,
                v.get_ref().type_str()
            ),
        );
    }

    pub fn string(&self, key: &str) -> Option<At<String>> {
        let v = self.raw(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some(At {
                v: s.to_string(),
                at: self.src.origin(v.span()),
            }),
            _ => {
                self.type_error(key, v, "a string");
                None
            }
        }
    }

    pub fn boolean(&self, key: &str) -> Option<At<bool>> {
        let v = self.raw(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(At {
                v: *b,
                at: self.src.origin(v.span()),
            }),
            _ => {
                self.type_error(key, v, "true or false");
                None
            }
        }
    }

    pub fn integer(&self, key: &str) -> Option<At<i64>> {
        let v = self.raw(key)?;
        match v.get_ref() {
            DeValue::Integer(i) => match parse_int(i.as_str(), i.radix()) {
                Some(n) => Some(At {
                    v: n,
                    at: self.src.origin(v.span()),
                }),
                None => {
                    self.error(
                        &self.src.origin(v.span()),
                        format!("`{key}` in {}: integer out of range", self.what),
                    );
                    None
                }
            },
            _ => {
                self.type_error(key, v, "an integer");
                None
            }
        }
    }

    /// An integer within `lo..=hi`.
    pub fn int_in(&self, key: &str, lo: i64, hi: i64) -> Option<At<i64>> {
        let n = self.integer(key)?;
        if n.v < lo || n.v > hi {
            self.error(
                &n.at,
                format!(
                    "`{key}` in {} must be between {lo} and {hi}, not {}",
                    self.what, n.v
                ),
            );
            return None;
        }
        Some(n)
    }

    /// A list of strings (an argv, an `after` list …).
    pub fn strings(&self, key: &str) -> Option<At<Vec<String>>> {
        let v = self.raw(key)?;
        let at = self.src.origin(v.span());
        match v.get_ref() {
            DeValue::Array(a) => {
                let mut out = Vec::with_capacity(a.len());
                for item in a.iter() {
                    match item.get_ref() {
                        DeValue::String(s) => out.push(s.to_string()),
                        _ => {
                            self.type_error(key, item, "a list of strings");
                            return None;
                        }
                    }
                }
                Some(At { v: out, at })
            }
            _ => {
                self.type_error(key, v, "a list of strings");
                None
            }
        }
    }

    /// A list of strings, or one string (`command = "..."` with `shell`).
    pub fn string_or_strings(&self, key: &str) -> Option<At<Vec<String>>> {
        let v = self.raw(key)?;
        if let DeValue::String(s) = v.get_ref() {
            return Some(At {
                v: vec![s.to_string()],
                at: self.src.origin(v.span()),
            });
        }
        self.strings(key)
    }

    /// A duration: "10s", "5m", "1h 30m", "250ms", or an integer of seconds.
    pub fn duration(&self, key: &str) -> Option<At<Duration>> {
        let v = self.raw(key)?;
        let at = self.src.origin(v.span());
        match v.get_ref() {
            DeValue::String(s) => match humantime::parse_duration(s) {
                Ok(d) => Some(At { v: d, at }),
                Err(e) => {
                    self.error(
                        &at,
                        format!(
                            "`{key}` in {}: bad duration {s:?} ({e}); write e.g. \"10s\", \"5m\", \"250ms\"",
                            self.what
                        ),
                    );
                    None
                }
            },
            DeValue::Integer(_) => {
                let n = self.int_in(key, 0, i64::from(u32::MAX))?;
                Some(At {
                    v: Duration::from_secs(n.v as u64),
                    at,
                })
            }
            _ => {
                self.type_error(key, v, "a duration like \"10s\"");
                None
            }
        }
    }

    /// A size or count: an integer, or a string like "512M" / "max".
    pub fn size(&self, key: &str) -> Option<At<Option<u64>>> {
        let v = self.raw(key)?;
        let at = self.src.origin(v.span());
        match v.get_ref() {
            DeValue::Integer(_) => {
                let n = self.int_in(key, 0, i64::MAX)?;
                Some(At {
                    v: Some(n.v as u64),
                    at,
                })
            }
            DeValue::String(s) => match parse_size(s) {
                Some(n) => Some(At { v: n, at }),
                None => {
                    self.error(
                        &at,
                        format!(
                            "`{key}` in {}: bad size {s:?}; write a number, \"512M\", \"2G\" or \"max\"",
                            self.what
                        ),
                    );
                    None
                }
            },
            _ => {
                self.type_error(key, v, "a number or a size like \"512M\"");
                None
            }
        }
    }
}

fn parse_int(digits: &str, radix: u32) -> Option<i64> {
    let cleaned: String = digits.chars().filter(|c| *c != '_').collect();
    let s = cleaned
        .strip_prefix("0x")
        .or_else(|| cleaned.strip_prefix("0o"))
        .or_else(|| cleaned.strip_prefix("0b"))
        .unwrap_or(&cleaned);
    i64::from_str_radix(s, radix).ok()
}

/// "512M" -> 512 MiB, "max" -> None (no limit). Suffixes K, M, G, T are
/// binary, as in systemd and the cgroup documentation.
pub fn parse_size(s: &str) -> Option<Option<u64>> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("max") || s.eq_ignore_ascii_case("unlimited") || s == "infinity" {
        return Some(None);
    }
    let (num, mult) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        (i, 'T' | 't') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    let n: u64 = num.trim().parse().ok()?;
    n.checked_mul(mult).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Some(Some(512 << 20)));
        assert_eq!(parse_size("2G"), Some(Some(2 << 30)));
        assert_eq!(parse_size("max"), Some(None));
        assert_eq!(parse_size("12"), Some(Some(12)));
        assert_eq!(parse_size("12Q"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn lines() {
        let s = Source::new(Path::new("f"), "a\nbb\n\nc".into());
        assert_eq!(s.line_of(0), 1);
        assert_eq!(s.line_of(2), 2);
        assert_eq!(s.line_of(5), 3);
        assert_eq!(s.line_of(6), 4);
    }
}
