//! `${name}` substitution in commands, checks, paths and env values.
//!
//! Substitution works inside one string: a value can never become a second
//! argv element, whatever it contains (no word splitting, no shell). `$${`
//! writes a literal `${`; any other `$` is left alone so that `$HOME` in a
//! `shell = true` command reaches the shell untouched.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubstError {
    /// `${name}` with no such variable; carries the name.
    Unknown(String),
    /// `${name}` is known but has no value for this instance (no address…).
    Unset(String),
    /// `${` with no closing `}`.
    Unterminated,
}

/// The variables of one instance. A `None` value is a known name that this
/// instance does not set (an instance without `address`).
pub struct Vars {
    map: BTreeMap<String, Option<String>>,
}

impl Vars {
    pub fn new() -> Vars {
        Vars {
            map: BTreeMap::new(),
        }
    }

    pub fn set(&mut self, name: &str, value: Option<String>) {
        self.map.insert(name.to_string(), value);
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    pub fn subst(&self, template: &str) -> Result<String, SubstError> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(tail) = after.strip_prefix("${") {
                out.push_str("${");
                rest = tail;
            } else if let Some(body) = after.strip_prefix('{') {
                let end = body.find('}').ok_or(SubstError::Unterminated)?;
                let name = &body[..end];
                match self.map.get(name) {
                    Some(Some(v)) => out.push_str(v),
                    Some(None) => return Err(SubstError::Unset(name.to_string())),
                    None => return Err(SubstError::Unknown(name.to_string())),
                }
                rest = &body[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        Ok(out)
    }
}

impl Default for Vars {
    fn default() -> Self {
        Vars::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        let mut v = Vars::new();
        v.set("id", Some("essrv01".into()));
        v.set("address", Some("10.0.0.1".into()));
        v.set("port", Some("9003".into()));
        v.set("hostname", None);
        v.set("data", Some("/u01/data".into()));
        v
    }

    #[test]
    fn table() {
        let v = vars();
        let cases: &[(&str, Result<&str, SubstError>)] = &[
            ("plain", Ok("plain")),
            ("${address}:${port}", Ok("10.0.0.1:9003")),
            ("--data=${data}/x", Ok("--data=/u01/data/x")),
            ("$HOME and $", Ok("$HOME and $")),
            ("$${id}", Ok("${id}")),
            ("${id}${id}", Ok("essrv01essrv01")),
            ("${dta}", Err(SubstError::Unknown("dta".into()))),
            ("${hostname}", Err(SubstError::Unset("hostname".into()))),
            ("${id", Err(SubstError::Unterminated)),
        ];
        for (input, want) in cases {
            let got = v.subst(input);
            assert_eq!(
                got.as_deref().map_err(Clone::clone),
                want.clone(),
                "{input}"
            );
        }
    }

    #[test]
    fn values_with_spaces_stay_one_word() {
        let mut v = Vars::new();
        v.set("data", Some("/a b; rm -rf /".into()));
        // The caller substitutes per argv element: the result is one element.
        let argv: Vec<String> = ["x", "${data}"]
            .iter()
            .map(|a| v.subst(a).unwrap())
            .collect();
        assert_eq!(argv, vec!["x".to_string(), "/a b; rm -rf /".to_string()]);
    }
}
