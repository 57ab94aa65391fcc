//! Who may sync which image from `mkpatch serve` (`--access FILE`).
//!
//! Without an access file every file served may be fetched or synced by
//! any client that can connect, as patches always could. With one, an
//! image is synced only by a client that gives the token the file names
//! for it. The file has one rule per line; blank lines and lines starting
//! with `#` are ignored:
//!
//! ```text
//! # name           token
//! vm.img           7f3e9c0d2b1a4e5f
//! images/*         team-token-42
//! public/*         -
//! ```
//!
//! `name` is a path in the served directory; a trailing `*` matches every
//! name that starts with what comes before it. `-` as the token opens the
//! names to everyone. The first rule that matches a name decides; a name no
//! rule matches is refused. Everything is read-only: the protocol has no
//! request that writes on the server.

use std::path::Path;

/// The rules of an access file, or none (everything open).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    rules: Option<Vec<Rule>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    /// The name, or the prefix of a rule ending in `*`.
    name: String,
    prefix: bool,
    /// `None`: open to everyone.
    token: Option<String>,
}

/// Why a sync is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No rule names it.
    NotListed,
    /// A token is needed and the client gave none or another.
    BadToken,
}

impl Access {
    /// Every name open to every client.
    pub fn open() -> Self {
        Self::default()
    }

    /// Reads an access file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the access file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses the text of an access file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let [name, token] = words[..] else {
                return Err(format!(
                    "line {}: a rule is `NAME TOKEN` (or `NAME -` for everyone), not {line:?}",
                    i + 1
                ));
            };
            let (name, prefix) = match name.strip_suffix('*') {
                Some(p) => (p, true),
                None => (name, false),
            };
            if name.contains('*') {
                return Err(format!(
                    "line {}: `*` may only end a name ({line:?})",
                    i + 1
                ));
            }
            rules.push(Rule {
                name: name.to_owned(),
                prefix,
                token: (token != "-").then(|| token.to_owned()),
            });
        }
        Ok(Self { rules: Some(rules) })
    }

    /// Whether a client giving `token` may sync `name`.
    pub fn check(&self, name: &str, token: Option<&str>) -> Result<(), Denied> {
        let Some(rules) = &self.rules else {
            return Ok(());
        };
        let rule = rules
            .iter()
            .find(|r| {
                if r.prefix {
                    name.starts_with(&r.name)
                } else {
                    name == r.name
                }
            })
            .ok_or(Denied::NotListed)?;
        match &rule.token {
            None => Ok(()),
            Some(t) if token.is_some_and(|given| same(given.as_bytes(), t.as_bytes())) => Ok(()),
            Some(_) => Err(Denied::BadToken),
        }
    }
}

/// Compares two tokens in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_decide_in_order_and_unlisted_names_are_refused() {
        let a = Access::parse(
            "# comment\n\nvm.img s3cret\nimages/* team\npublic/* -\nimages/open.img -\n",
        )
        .expect("parses");
        assert_eq!(a.check("vm.img", Some("s3cret")), Ok(()));
        assert_eq!(a.check("vm.img", Some("s3cre")), Err(Denied::BadToken));
        assert_eq!(a.check("vm.img", None), Err(Denied::BadToken));
        assert_eq!(a.check("images/x.img", Some("team")), Ok(()));
        // The first rule that matches decides, even when a later one is open.
        assert_eq!(a.check("images/open.img", None), Err(Denied::BadToken));
        assert_eq!(a.check("public/a.img", None), Ok(()));
        assert_eq!(a.check("other.img", Some("s3cret")), Err(Denied::NotListed));
        assert_eq!(Access::open().check("anything", None), Ok(()));
    }

    #[test]
    fn malformed_rules_are_refused_with_their_line() {
        for bad in ["vm.img", "vm.img a b", "im*ages tok"] {
            let e = Access::parse(&format!("# ok\n{bad}\n")).expect_err(bad);
            assert!(e.starts_with("line 2:"), "{e}");
        }
    }
}
