//! A token's specification as the API, the CLI and the page give it
//! ([`NewToken`], [`RestrictionsChange`]), validated once into what is
//! stored ([`Restrictions`]): label, user, rules (compiled), IP list, rate
//! limit, report-only and spaces, each in its canonical form. Every error
//! names the API field it concerns. Authentication enforces what is valid
//! here: a rate limit ([`RateLimit`]) and a user name ([`check_user_name`]).

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use rand::TryRngCore;
use rand::distr::{Alphanumeric, SampleString};
use rand::rngs::OsRng;

use super::{PatSource, TokenError};
use crate::config::parse_ip_list;
use crate::rules::RuleSet;
use crate::secrets::TOKEN_PREFIX;
use crate::spaces;
use crate::store::{Restrictions, TokenRecord};

/// A request to create a token, as the API or CLI received it.
#[derive(Debug, Default)]
pub struct NewToken {
    pub label: String,
    pub user: Option<String>,
    pub days_until_expiry: Option<i64>,
    pub limit_to: Option<String>,
    pub ip: Option<String>,
    /// A custom value; generated when absent.
    pub token: Option<String>,
    /// With `forward_as = "pat"`: where the user's personal access token comes from.
    pub pat: Option<PatSource>,
    /// `N/s`, `N/min`, `N/hour` or `N/day`; absent or empty: no limit.
    pub rate_limit: Option<String>,
    /// `Some(false)`: report-only (SPEC §16). Absent: enforced.
    pub enforce: Option<bool>,
    /// Space keys (`DOCS,PM`) the token is confined to (SPEC §17); absent or
    /// empty: any space.
    pub spaces: Option<String>,
}

/// A change to a token's restrictions (SPEC §16), as the API or CLI
/// received it: `None` keeps what the token has. The user, the value and
/// the expiry cannot change.
#[derive(Debug, Default, Clone)]
pub struct RestrictionsChange {
    pub label: Option<String>,
    pub limit_to: Option<String>,
    pub ip: Option<String>,
    /// `Some(None)` removes the limit.
    pub rate_limit: Option<Option<String>>,
    pub enforce: Option<bool>,
    /// `Some(None)` (or an empty list) lifts the confinement.
    pub spaces: Option<Option<String>>,
}

impl RestrictionsChange {
    pub fn is_empty(&self) -> bool {
        self.label.is_none()
            && self.limit_to.is_none()
            && self.ip.is_none()
            && self.rate_limit.is_none()
            && self.enforce.is_none()
            && self.spaces.is_none()
    }
}

impl NewToken {
    /// What the new token's restrictions are, each validated.
    pub(super) fn restrictions(&self) -> Result<Restrictions, TokenError> {
        Ok(Restrictions {
            label: validate_label(&self.label)?,
            limit_to: validate_rules(self.limit_to.as_deref().unwrap_or_default())?,
            ip: normalise_ip_list(self.ip.as_deref().unwrap_or_default())?,
            rate_limit: validate_rate_limit(self.rate_limit.as_deref())?,
            enforce: self.enforce.unwrap_or(true),
            spaces: validate_spaces(self.spaces.as_deref())?,
        })
    }
}

impl RestrictionsChange {
    /// `before`'s restrictions with this change applied, validated exactly
    /// as a create validates them.
    pub(super) fn apply_to(&self, before: &TokenRecord) -> Result<Restrictions, TokenError> {
        let changed = |field: &Option<String>, validate: fn(&str) -> Result<String, TokenError>, kept: &String| {
            field.as_deref().map(validate).unwrap_or_else(|| Ok(kept.clone()))
        };
        Ok(Restrictions {
            label: changed(&self.label, validate_label, &before.label)?,
            limit_to: changed(&self.limit_to, validate_rules, &before.limit_to)?,
            ip: changed(&self.ip, normalise_ip_list, &before.ip)?,
            rate_limit: match &self.rate_limit {
                Some(text) => validate_rate_limit(text.as_deref())?,
                None => before.rate_limit.clone(),
            },
            enforce: self.enforce.unwrap_or(before.enforce),
            spaces: match &self.spaces {
                Some(text) => validate_spaces(text.as_deref())?,
                None => before.spaces.clone(),
            },
        })
    }
}

const MAX_LABEL_CHARS: usize = 255;

fn validate_label(label: &str) -> Result<String, TokenError> {
    let label = label.trim();
    let chars = label.chars().count();
    if chars == 0 {
        return Err(TokenError::invalid("label", "label is required"));
    }
    if chars > MAX_LABEL_CHARS {
        return Err(TokenError::invalid(
            "label",
            format!("label must be at most {MAX_LABEL_CHARS} characters"),
        ));
    }
    if label.chars().any(char::is_control) {
        return Err(TokenError::invalid(
            "label",
            "label must not contain control characters",
        ));
    }
    Ok(label.to_owned())
}

/// Absent or empty means unbound; anything else must be a user name that
/// can travel upstream in a header as it is (no surrounding whitespace,
/// control characters or commas: see [`check_user_name`]).
pub(super) fn validate_user(user: Option<&str>) -> Result<Option<String>, TokenError> {
    match user {
        None | Some("") => Ok(None),
        Some(user) => check_user_name(user)
            .map(|()| Some(user.to_owned()))
            .map_err(|why| TokenError::invalid("userName", format!("userName is not valid: {why}"))),
    }
}

/// Rules in their stored form: the lines, joined with `\n`.
fn validate_rules(text: &str) -> Result<String, TokenError> {
    let rules = RuleSet::parse(text).map_err(|e| TokenError::Invalid {
        field: "limitTo",
        message: e.to_string(),
        line: Some(e.line),
        column: Some(e.column),
    })?;
    Ok(rules.lines().join("\n"))
}

/// A rate limit in its canonical form (`60/min`); absent or empty: none.
fn validate_rate_limit(text: Option<&str>) -> Result<Option<String>, TokenError> {
    match text.map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => text
            .parse::<RateLimit>()
            .map(|limit| Some(limit.to_string()))
            .map_err(|m| TokenError::invalid("rateLimit", m)),
    }
}

/// A space list in its stored form (`DOCS,PM`); absent or empty: none.
fn validate_spaces(text: Option<&str>) -> Result<Option<String>, TokenError> {
    spaces::normalise(text.unwrap_or_default()).map_err(|m| TokenError::invalid("spaces", m))
}

fn normalise_ip_list(text: &str) -> Result<String, TokenError> {
    let nets = parse_ip_list(text).map_err(|m| TokenError::invalid("ip", m))?;
    Ok(nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(","))
}

/// The most calls a limit may name per unit.
const MAX_CALLS: u32 = 1_000_000;

/// A limit as written: `calls` per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub calls: NonZeroU32,
    pub per: Per,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    Second,
    Minute,
    Hour,
    Day,
}

impl Per {
    pub fn seconds(self) -> u64 {
        match self {
            Per::Second => 1,
            Per::Minute => 60,
            Per::Hour => 3600,
            Per::Day => 86_400,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Per::Second => "s",
            Per::Minute => "min",
            Per::Hour => "hour",
            Per::Day => "day",
        }
    }
}

impl FromStr for RateLimit {
    type Err = String;

    /// `N/s`, `N/min`, `N/hour` or `N/day` (also `sec`, `second`, `m`,
    /// `minute`, `h`, `d`; any case, spaces around the parts).
    fn from_str(text: &str) -> Result<Self, String> {
        let usage = || format!("`{text}` is not a rate limit such as 60/min (N/s, N/min, N/hour or N/day)");
        let (calls, per) = text.split_once('/').ok_or_else(usage)?;
        let calls: u32 = calls.trim().parse().map_err(|_| usage())?;
        let calls = NonZeroU32::new(calls).ok_or_else(|| "a rate limit must allow at least 1 call".to_owned())?;
        if calls.get() > MAX_CALLS {
            return Err(format!("a rate limit may allow at most {MAX_CALLS} calls per unit"));
        }
        let per = match per.trim().to_ascii_lowercase().as_str() {
            "s" | "sec" | "second" => Per::Second,
            "m" | "min" | "minute" => Per::Minute,
            "h" | "hour" => Per::Hour,
            "d" | "day" => Per::Day,
            _ => return Err(usage()),
        };
        Ok(RateLimit { calls, per })
    }
}

impl fmt::Display for RateLimit {
    /// The canonical form, as stored and listed: `60/min`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.calls, self.per.name())
    }
}

/// Checks a user name before it becomes an identity Confluence sees, in a
/// header: a token's bound user, or the Basic name an unbound token acts
/// as. The error says what is wrong, for a message.
pub fn check_user_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("the user name is empty");
    }
    if name.len() > 255 {
        return Err("the user name is longer than 255 bytes");
    }
    if name.trim() != name {
        return Err("the user name begins or ends with whitespace");
    }
    if name.chars().any(char::is_control) {
        return Err("the user name contains control characters");
    }
    if name.contains(',') {
        return Err("the user name contains a comma");
    }
    if name.contains(TOKEN_PREFIX) {
        return Err("the user name holds a token value");
    }
    Ok(())
}

/// A random token id: 22 base62 characters (131 bits), URL-safe and never
/// starting with `-`, so `tokengate token delete ID` cannot take it for a flag.
pub(super) fn new_id() -> String {
    Alphanumeric.sample_string(&mut OsRng.unwrap_err(), 22)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_lists_accept_addresses_and_networks_of_both_families() {
        let nets = parse_ip_list(" 10.0.0.1, 192.168.0.0/16,2001:db8::/32 ,::1").unwrap();
        assert_eq!(nets.len(), 4);
        assert!(nets[0].contains(&"10.0.0.1".parse::<std::net::IpAddr>().unwrap()));
        assert_eq!(parse_ip_list("").unwrap(), vec![]);
        assert!(parse_ip_list("10.0.0.300").unwrap_err().contains("10.0.0.300"));
        assert_eq!(normalise_ip_list("10.1.2.3/8").unwrap(), "10.0.0.0/8");
    }

    #[test]
    fn labels_and_users_are_checked() {
        assert!(validate_label("  ").is_err());
        assert!(validate_label(&"é".repeat(255)).is_ok());
        assert!(validate_label(&"é".repeat(256)).is_err());
        assert_eq!(validate_user(None).unwrap(), None);
        assert_eq!(
            validate_user(Some("")).unwrap(),
            None,
            "empty is unbound, as Extender sends it"
        );
        assert_eq!(
            validate_user(Some("alice@example.com")).unwrap().as_deref(),
            Some("alice@example.com")
        );
        for bad in [
            "  ",
            " alice",
            "alice ",
            "bob\r\nX-Forwarded-User: admin",
            "alice,admin",
            "tgw_abc",
        ] {
            let error = validate_user(Some(bad)).unwrap_err();
            assert!(
                matches!(error, TokenError::Invalid { field: "userName", .. }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn limits_are_read_in_any_spelling_and_written_one_way() {
        for (text, canonical) in [
            ("60/min", "60/min"),
            (" 60 / Minute ", "60/min"),
            ("10/s", "10/s"),
            ("10/sec", "10/s"),
            ("5/h", "5/hour"),
            ("1000/day", "1000/day"),
            ("1/d", "1/day"),
        ] {
            assert_eq!(text.parse::<RateLimit>().unwrap().to_string(), canonical, "{text}");
        }
        for bad in [
            "",
            "60",
            "/min",
            "0/min",
            "-1/min",
            "60/week",
            "x/min",
            "60/min/s",
            "2000000/s",
        ] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn user_names_that_could_confuse_an_identity_header_are_refused() {
        for good in ["alice", "alice@example.com", "Jean Dupont", "é"] {
            assert_eq!(check_user_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            " ",
            " alice",
            "alice ",
            "al\tice",
            "bob\r\nX-Forwarded-User: admin",
            "alice, admin",
            "tgw_x",
            "alice tgw_x",
        ] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_user_name(&"a".repeat(256)).is_err());
    }

    #[test]
    fn ids_are_url_safe_and_unique() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 22);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
    }
}
