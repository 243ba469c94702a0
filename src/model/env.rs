//! The variables an instance's processes get, packed.
//!
//! Every instance has its own (`COHOST_INSTANCE`, `COHOST_ADDRESS`, …): as
//! a vector of string pairs that was one allocation per name and per value,
//! ~350 bytes per instance, 3.4 MB of a 10,000-instance daemon. Packed, it
//! is one text and one table of where each name and value ends.

use std::fmt;

/// Variables in order, names unique (as [`super::RunContext::env`] keeps
/// them: sorted by name).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Env {
    /// Every name and value, one after the other.
    text: Box<str>,
    /// For each variable, where its name ends and where its value ends in
    /// `text` (byte offsets).
    ends: Box<[(u32, u32)]>,
}

impl Env {
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(name_end, value_end)| {
            let (n, v) = (name_end as usize, value_end as usize);
            let pair = (&self.text[start..n], &self.text[n..v]);
            start = v;
            pair
        })
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Env {
    /// A variable that would take the text past 4 GiB is left out with
    /// those after it: no process could be started with it anyway (Linux
    /// refuses any one string of an environment over 128 KiB, E2BIG).
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Env {
        let mut text = String::new();
        let mut ends = Vec::new();
        for (k, v) in pairs {
            let (k, v) = (k.as_ref(), v.as_ref());
            let end = |extra: usize| u32::try_from(text.len() + extra).ok();
            let (Some(name_end), Some(value_end)) = (end(k.len()), end(k.len() + v.len())) else {
                break;
            };
            text.push_str(k);
            text.push_str(v);
            ends.push((name_end, value_end));
        }
        Env {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        }
    }
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_and_values_come_back_as_they_went_in() {
        let pairs = [
            ("COHOST_ADDRESS", "10.0.0.1"),
            ("EMPTY", ""),
            ("X", "a=b\0c"),
        ];
        let env: Env = pairs.iter().copied().collect();
        assert_eq!(env.iter().collect::<Vec<_>>(), pairs);
        assert_eq!(env.len(), 3);
        assert_eq!(env.get("EMPTY"), Some(""));
        assert_eq!(env.get("X"), Some("a=b\0c"));
        assert_eq!(env.get("COHOST"), None);
        assert!(Env::default().is_empty());
        assert_eq!(
            format!("{env:?}"),
            r#"{"COHOST_ADDRESS": "10.0.0.1", "EMPTY": "", "X": "a=b\0c"}"#
        );
    }

    proptest! {
        #[test]
        fn any_pairs_round_trip(pairs in proptest::collection::vec((".{0,12}", ".{0,20}"), 0..8)) {
            let env: Env = pairs.iter().map(|(k, v)| (k, v)).collect();
            let back: Vec<(String, String)> =
                env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            prop_assert_eq!(back, pairs);
        }
    }
}
