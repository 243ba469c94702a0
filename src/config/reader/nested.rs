//! The readers of nested values: sub-tables (`[a.b]`, inline, arrays of
//! tables) and the string maps of `env`, `bind` and `[rlimits]`.

use toml::de::DeValue;

use super::{At, Known, Table, parse_int};

impl<'a, 'i> Table<'a, 'i> {
    /// A sub-table (inline or `[a.b]`).
    pub fn table(&self, key: &str, what: String, known: Known) -> Option<Table<'a, 'i>> {
        let v = self.raw(key)?;
        match v.get_ref() {
            DeValue::Table(t) => Some(Table::new(self.src, self.diags, t, what, v.span(), known)),
            _ => {
                self.type_error(key, v, "a table");
                None
            }
        }
    }

    /// A child table under a free-form key (`[service.NAME]`); `at` is the
    /// line of its key, where the operator wrote the name.
    pub fn child_table(&self, key: &str, what: String, known: Known) -> Option<Table<'a, 'i>> {
        let (k, v) = self.table.get_key_value(key)?;
        match v.get_ref() {
            DeValue::Table(t) => Some(Table::new(self.src, self.diags, t, what, k.span(), known)),
            _ => None,
        }
    }

    /// A list of tables (`[[a.b]]` or `b = [{...}, {...}]`).
    pub fn tables(&self, key: &str, what: &str, known: Known) -> Option<Vec<Table<'a, 'i>>> {
        let v = self.raw(key)?;
        let DeValue::Array(a) = v.get_ref() else {
            self.type_error(key, v, "a list of tables");
            return None;
        };
        let mut out = Vec::with_capacity(a.len());
        for (i, item) in a.iter().enumerate() {
            match item.get_ref() {
                DeValue::Table(t) => out.push(Table::new(
                    self.src,
                    self.diags,
                    t,
                    format!("{what}[{}]", i + 1),
                    item.span(),
                    known,
                )),
                _ => {
                    self.type_error(key, item, "a list of tables");
                    return None;
                }
            }
        }
        Some(out)
    }

    /// A table whose values are all strings: `env`, `paths`, `bind`.
    pub fn string_map(&self, key: &str) -> Option<Vec<(At<String>, At<String>)>> {
        let v = self.raw(key)?;
        let DeValue::Table(t) = v.get_ref() else {
            self.type_error(key, v, "a table of strings");
            return None;
        };
        let mut out = Vec::with_capacity(t.len());
        for (k, val) in t.iter() {
            let kat = self.src.origin(k.span());
            match val.get_ref() {
                DeValue::String(s) => out.push((
                    At {
                        v: k.get_ref().to_string(),
                        at: kat,
                    },
                    At {
                        v: s.to_string(),
                        at: self.src.origin(val.span()),
                    },
                )),
                _ => self.error(
                    &self.src.origin(val.span()),
                    format!(
                        "`{key}.{}` in {} must be a string, not {}",
                        k.get_ref(),
                        self.what,
                        val.get_ref().type_str()
                    ),
                ),
            }
        }
        Some(out)
    }

    /// A table of string-or-integer values: `rlimits`.
    pub fn scalar_map(&self, key: &str) -> Option<Vec<(At<String>, At<String>)>> {
        let v = self.raw(key)?;
        let DeValue::Table(t) = v.get_ref() else {
            self.type_error(key, v, "a table");
            return None;
        };
        let mut out = Vec::with_capacity(t.len());
        for (k, val) in t.iter() {
            let s = match val.get_ref() {
                DeValue::String(s) => s.to_string(),
                DeValue::Integer(i) => match parse_int(i.as_str(), i.radix()) {
                    Some(n) => n.to_string(),
                    None => {
                        self.error(&self.src.origin(val.span()), "integer out of range");
                        continue;
                    }
                },
                other => {
                    self.error(
                        &self.src.origin(val.span()),
                        format!(
                            "`{key}.{}` in {} must be a number or a string, not {}",
                            k.get_ref(),
                            self.what,
                            other.type_str()
                        ),
                    );
                    continue;
                }
            };
            out.push((
                At {
                    v: k.get_ref().to_string(),
                    at: self.src.origin(k.span()),
                },
                At {
                    v: s,
                    at: self.src.origin(val.span()),
                },
            ));
        }
        Some(out)
    }
}
