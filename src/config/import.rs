//! `cohost import FILE --service NAME`: the legacy flat instances file
//! (`ID:DBDIR:ETCDIR:PORT:HOSTNAME`, one instance a line, fields may be
//! empty) to TOML. Pure: text in, text or errors out.

use std::fmt::Write;

use crate::config::resolve::valid_id;

#[derive(Debug, PartialEq, Eq)]
pub struct ImportError {
    pub line: u32,
    pub message: String,
}

pub fn import(text: &str, service: &str) -> Result<String, Vec<ImportError>> {
    let mut out = String::new();
    let mut errors = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (n, raw) in text.lines().enumerate() {
        let line = n as u32 + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = l.split(':').map(str::trim).collect();
        let mut err = |m: String| errors.push(ImportError { line, message: m });
        if f.len() != 5 {
            err(format!(
                "expected 5 fields ID:DBDIR:ETCDIR:PORT:HOSTNAME, found {} in {l:?}",
                f.len()
            ));
            continue;
        }
        let (id, db, etc, port, host) = (f[0], f[1], f[2], f[3], f[4]);
        if !valid_id(id) {
            err(format!(
                "instance ID {id:?}: use letters, digits, `_`, `.`, `-`"
            ));
            continue;
        }
        if !seen.insert(id.to_string()) {
            err(format!("instance ID `{id}` appears twice"));
            continue;
        }
        for (what, p) in [("DBDIR", db), ("ETCDIR", etc)] {
            if !p.is_empty() && !p.starts_with('/') {
                err(format!("{what} {p:?} of `{id}` is not an absolute path"));
            }
        }
        let port_n = if port.is_empty() {
            None
        } else {
            match port.parse::<u16>() {
                Ok(p) if p > 0 => Some(p),
                _ => {
                    err(format!(
                        "PORT {port:?} of `{id}` is not a port number (1-65535)"
                    ));
                    continue;
                }
            }
        };
        let _ = writeln!(out, "[instance.{id}]");
        let _ = writeln!(out, "service = {}", quote(service));
        let _ = writeln!(
            out,
            "# address = \"...\"   # the logical (floating) IP of {id}: set it before use"
        );
        if let Some(p) = port_n {
            let _ = writeln!(out, "port = {p}");
        }
        if !host.is_empty() {
            let _ = writeln!(out, "hostname = {}", quote(host));
        }
        let mut paths = Vec::new();
        if !db.is_empty() {
            paths.push(format!("data = {}", quote(db)));
        }
        if !etc.is_empty() {
            paths.push(format!("etc = {}", quote(etc)));
        }
        if !paths.is_empty() {
            let _ = writeln!(out, "paths = {{ {} }}", paths.join(", "));
        }
        out.push('\n');
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(q, "\\u{:04X}", c as u32);
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_lines() {
        let text = "# legacy\nessrv01:/u01/db:/u01/etc:9003:essrv01.example\n\nessrv02::::\n";
        let out = import(text, "counter").unwrap();
        assert!(out.contains("[instance.essrv01]\nservice = \"counter\"\n"));
        assert!(out.contains("port = 9003\nhostname = \"essrv01.example\"\n"));
        assert!(out.contains("paths = { data = \"/u01/db\", etc = \"/u01/etc\" }"));
        assert!(out.contains("[instance.essrv02]\nservice = \"counter\"\n"));
        assert!(!out.contains("essrv02\nport"));
    }

    #[test]
    fn names_bad_lines() {
        let text = "ok:/a:/b:1:h\nbad:/a:/b\nx y:/a:/b:1:h\nz:/a:/b:99999:h\nw:rel:/b:1:h\n";
        let errs = import(text, "s").unwrap_err();
        let lines: Vec<u32> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5]);
        assert!(errs[0].message.contains("expected 5 fields"));
        assert!(errs[3].message.contains("not an absolute path"));
    }

    #[test]
    fn output_is_valid_toml() {
        let out = import("a\"b:/x:/y:1:h\n", "s");
        assert!(out.is_err(), "an ID with a quote is refused");
        let out = import("ab:/x \"q\":/y:1:h\n", "s").unwrap();
        assert!(toml::de::DeTable::parse(&out).is_ok(), "{out}");
    }
}
