//! A token's space list (SPEC §17): entries `KEY` (read and write) or
//! `KEY:read` (read only), validated once when a token is created or loaded.
//! The stored text keeps the entries as given (`DOCS,KB:read`), which is
//! also how listings show them.

/// Space keys are written as this many characters at most (Confluence allows 255).
const MAX_KEY_CHARS: usize = 255;

/// The suffix of a read-only entry.
const READ_ONLY: &str = ":read";

/// What a token may do in one space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// One entry of a space list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub key: String,
    pub access: Access,
}

/// A validated, non-empty space list. Keys compare ignoring ASCII case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceList(Vec<Grant>);

impl SpaceList {
    /// Parses `DOCS, KB:read`; `None` for an empty list. `Err` names what is
    /// wrong, for the `spaces` field.
    pub fn parse(text: &str) -> Result<Option<SpaceList>, String> {
        let mut grants: Vec<Grant> = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let grant = parse_entry(entry)?;
            match grants.iter().find(|g| g.key.eq_ignore_ascii_case(&grant.key)) {
                Some(same) if same.access == grant.access => {}
                Some(_) => {
                    return Err(format!(
                        "space {} is listed both as {0} and as {0}{READ_ONLY}: list it once",
                        grant.key
                    ));
                }
                None => grants.push(grant),
            }
        }
        Ok((!grants.is_empty()).then_some(SpaceList(grants)))
    }

    /// The entries as given: `["DOCS", "KB:read"]`.
    pub fn entries(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|g| match g.access {
                Access::Write => g.key.clone(),
                Access::Read => format!("{}{READ_ONLY}", g.key),
            })
            .collect()
    }

    /// The stored text: `DOCS,KB:read`.
    pub fn stored(&self) -> String {
        self.entries().join(",")
    }

    /// Every key, read-only ones included (what a search or listing is
    /// confined to).
    pub fn keys(&self) -> Vec<String> {
        self.0.iter().map(|g| g.key.clone()).collect()
    }

    /// What the token may do in space `key`; `None`: nothing.
    pub fn access(&self, key: &str) -> Option<Access> {
        self.0
            .iter()
            .find(|g| g.key.eq_ignore_ascii_case(key))
            .map(|g| g.access)
    }

    /// The entries as a sentence's tail: `DOCS, KB (read only)`.
    pub fn describe(&self) -> String {
        self.0
            .iter()
            .map(|g| match g.access {
                Access::Write => g.key.clone(),
                Access::Read => format!("{} (read only)", g.key),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// A space list in its stored form (entries trimmed, without duplicates);
/// `None` for an empty list.
pub fn normalise(text: &str) -> Result<Option<String>, String> {
    SpaceList::parse(text).map(|list| list.map(|list| list.stored()))
}

/// The entries of a stored space list, as listings show them.
pub fn entries(stored: &str) -> Vec<&str> {
    stored.split(',').filter(|k| !k.is_empty()).collect()
}

fn parse_entry(entry: &str) -> Result<Grant, String> {
    let (key, access) = match entry.rsplit_once(':') {
        None => (entry, Access::Write),
        Some((key, level)) if level.trim().eq_ignore_ascii_case("read") => (key.trim_end(), Access::Read),
        Some(_) => {
            return Err(format!(
                "{entry:?} has an unknown access level: write KEY for read and write, KEY{READ_ONLY} for read only"
            ));
        }
    };
    check_key(key)?;
    Ok(Grant {
        key: key.to_owned(),
        access,
    })
}

/// A Confluence space key: letters and digits (personal spaces: `~` and the
/// user name or key).
fn check_key(key: &str) -> Result<(), String> {
    let body = key.strip_prefix('~').unwrap_or(key);
    let valid = !body.is_empty()
        && key.chars().count() <= MAX_KEY_CHARS
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'));
    match valid {
        true => Ok(()),
        false => Err(format!(
            "{key:?} is not a space key: spaces are listed by key, separated by commas, with :read for read only (DOCS,KB:read,~alice)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_keep_their_access_level() {
        let list = SpaceList::parse(" DOCS , KB:read,docs, ~alice:READ ").unwrap().unwrap();
        assert_eq!(list.entries(), ["DOCS", "KB:read", "~alice:read"]);
        assert_eq!(list.stored(), "DOCS,KB:read,~alice:read");
        assert_eq!(list.access("kb"), Some(Access::Read));
        assert_eq!(list.access("Docs"), Some(Access::Write));
        assert_eq!(list.access("PM"), None);
        assert_eq!(list.describe(), "DOCS, KB (read only), ~alice (read only)");
        assert_eq!(normalise(" , ").unwrap(), None);
        assert_eq!(entries("DOCS,KB:read"), ["DOCS", "KB:read"]);
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        for (text, says) in [
            ("DOCS,DOCS:read", "listed both"),
            ("KB:write", "unknown access level"),
            ("KB:", "unknown access level"),
            (":read", "not a space key"),
            ("DO CS", "not a space key"),
            ("~", "not a space key"),
            ("a/b", "not a space key"),
        ] {
            let error = SpaceList::parse(text).unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
        }
        assert!(SpaceList::parse(&"K".repeat(256)).is_err());
        assert!(SpaceList::parse(&"K".repeat(255)).is_ok());
    }
}
