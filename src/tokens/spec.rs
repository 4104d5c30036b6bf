//! A token's specification as the API, the CLI and the page give it,
//! validated once into what is stored: label, user, rules (compiled), IP
//! list, rate limit and spaces each in their canonical form. Every error
//! names the API field it concerns.

use rand::TryRngCore;
use rand::distr::{Alphanumeric, SampleString};
use rand::rngs::OsRng;

use super::TokenError;
use crate::auth::{RateLimit, check_user_name};
use crate::config::parse_ip_list;
use crate::rules::RuleSet;
use crate::spaces;

const MAX_LABEL_CHARS: usize = 255;

pub(super) fn validate_label(label: &str) -> Result<String, TokenError> {
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

pub(super) fn validate_rules(text: &str) -> Result<RuleSet, TokenError> {
    RuleSet::parse(text).map_err(|e| TokenError::Invalid {
        field: "limitTo",
        message: e.to_string(),
        line: Some(e.line),
        column: Some(e.column),
    })
}

/// A rate limit in its canonical form (`60/min`); absent or empty: none.
pub(super) fn validate_rate_limit(text: Option<&str>) -> Result<Option<String>, TokenError> {
    match text.map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => text
            .parse::<RateLimit>()
            .map(|limit| Some(limit.to_string()))
            .map_err(|m| TokenError::invalid("rateLimit", m)),
    }
}

/// A space list in its stored form (`DOCS,PM`); absent or empty: none.
pub(super) fn validate_spaces(text: Option<&str>) -> Result<Option<String>, TokenError> {
    spaces::normalise(text.unwrap_or_default()).map_err(|m| TokenError::invalid("spaces", m))
}

pub(super) fn normalise_ip_list(text: &str) -> Result<String, TokenError> {
    let nets = parse_ip_list(text).map_err(|m| TokenError::invalid("ip", m))?;
    Ok(nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(","))
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
    fn ids_are_url_safe_and_unique() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 22);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
    }
}
