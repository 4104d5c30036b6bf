//! Token management shared by the CLI and the management API: validating a
//! creation request into a stored record, listing, deleting (SPEC §4).
//! Validation errors name the API field they concern.

use std::sync::Arc;

use rand::TryRngCore;
use rand::distr::{Alphanumeric, SampleString};
use rand::rngs::OsRng;

use crate::auth::credentials::check_user_name;
use crate::auth::token;
use crate::auth::{Verifier, VerifyError};
use crate::clock::{Clock, DAY_MS, EpochMs};
use crate::config::parse_ip_list;
use crate::error::{GatewayError, Reason};
use crate::rules::RuleSet;
use crate::store::{Page, StoreError, TokenQuery, TokenRecord, TokenStore};

const MAX_LABEL_CHARS: usize = 255;

/// A request to create a token, as the API or CLI received it.
#[derive(Debug, Default, Clone)]
pub struct NewToken {
    pub label: String,
    pub user: Option<String>,
    pub days_until_expiry: Option<i64>,
    pub limit_to: Option<String>,
    pub ip: Option<String>,
    /// A custom value; generated when absent.
    pub token: Option<String>,
    /// Who creates it.
    pub author: String,
}

/// A created token: the value, shown this once, and what was stored.
pub struct CreatedToken {
    pub value: String,
    pub record: TokenRecord,
    pub rules: RuleSet,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// 400: a field is invalid. `line`/`column` locate a rule error.
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
        line: Option<usize>,
        column: Option<usize>,
    },
    /// 409: the custom value equals an existing token.
    #[error("a token with this value already exists")]
    Duplicate,
    /// 404: no token with that id.
    #[error("no token with id {0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

impl TokenError {
    fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        TokenError::Invalid {
            field,
            message: message.into(),
            line: None,
            column: None,
        }
    }
}

/// Creates, lists and deletes tokens; deletion also revokes in this process.
#[derive(Clone)]
pub struct TokenManager {
    pub store: Arc<dyn TokenStore>,
    pub verifier: Arc<Verifier>,
    pub clock: Arc<dyn Clock>,
    pub max_days_until_expiry: Option<u32>,
}

impl TokenManager {
    pub async fn create(&self, new: NewToken) -> Result<CreatedToken, TokenError> {
        let label = validate_label(&new.label)?;
        let user = validate_user(new.user.as_deref())?;
        let days = self.validate_days(new.days_until_expiry)?;
        let rules = RuleSet::parse(new.limit_to.as_deref().unwrap_or_default()).map_err(|e| TokenError::Invalid {
            field: "limitTo",
            message: e.to_string(),
            line: Some(e.line),
            column: Some(e.column),
        })?;
        let ip = normalise_ip_list(new.ip.as_deref().unwrap_or_default())?;
        let value = match new.token {
            Some(custom) => self.validate_custom_value(custom).await?,
            None => token::generate(),
        };
        let created_at = self.clock.now_ms();
        let record = TokenRecord {
            id: new_id(),
            label,
            user,
            author: new.author,
            limit_to: rules.lines().join("\n"),
            ip,
            created_at,
            valid_until: days.map(|d| created_at + d * DAY_MS),
            token_hash: self.verifier.hash(&value).await?,
            lookup: token::lookup_of(&value).to_owned(),
            counter: 0,
            last_used_at: None,
            last_ip: None,
        };
        self.store.insert_token(&record).await?;
        Ok(CreatedToken { value, record, rules })
    }

    pub async fn list(&self, query: &TokenQuery) -> Result<Page<TokenRecord>, TokenError> {
        Ok(self.store.list_tokens(query).await?)
    }

    /// Deletes one token; it stops working in this process at once.
    pub async fn delete(&self, id: &str) -> Result<(), TokenError> {
        if !self.store.delete_token(id, self.clock.now_ms()).await? {
            return Err(TokenError::NotFound(id.to_owned()));
        }
        self.verifier.revoke(id);
        Ok(())
    }

    /// Deletes every token bound to `user`; returns how many.
    pub async fn delete_user(&self, user: &str) -> Result<usize, TokenError> {
        let user = validate_user(Some(user))?.ok_or_else(|| TokenError::invalid("userName", "userName is empty"))?;
        let ids = self.store.delete_user_tokens(&user, self.clock.now_ms()).await?;
        for id in &ids {
            self.verifier.revoke(id);
        }
        Ok(ids.len())
    }

    /// Absent or 0 is no expiry, or the configured maximum when there is one.
    fn validate_days(&self, days: Option<i64>) -> Result<Option<i64>, TokenError> {
        let max = self.max_days_until_expiry.map(i64::from);
        match (days.unwrap_or(0), max) {
            (d, _) if d < 0 => Err(TokenError::invalid(
                "daysUntilExpiry",
                "daysUntilExpiry must not be negative",
            )),
            (0, max) => Ok(max),
            (d, Some(max)) if d > max => Err(TokenError::invalid(
                "daysUntilExpiry",
                format!("daysUntilExpiry must be at most {max}"),
            )),
            (d, _) if d > 365 * 1000 => Err(TokenError::invalid("daysUntilExpiry", "daysUntilExpiry is too large")),
            (d, _) => Ok(Some(d)),
        }
    }

    async fn validate_custom_value(&self, value: String) -> Result<String, TokenError> {
        token::validate_custom(&value).map_err(|m| TokenError::invalid("token", m))?;
        if self.verifier.find_record(&value).await?.is_some() {
            return Err(TokenError::Duplicate);
        }
        Ok(value)
    }
}

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
fn validate_user(user: Option<&str>) -> Result<Option<String>, TokenError> {
    match user {
        None | Some("") => Ok(None),
        Some(user) => check_user_name(user)
            .map(|()| Some(user.to_owned()))
            .map_err(|why| TokenError::invalid("userName", format!("userName is not valid: {why}"))),
    }
}

fn normalise_ip_list(text: &str) -> Result<String, TokenError> {
    let nets = parse_ip_list(text).map_err(|m| TokenError::invalid("ip", m))?;
    Ok(nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(","))
}

/// A random token id: 22 base62 characters (131 bits), URL-safe and never
/// starting with `-`, so `tokengate token delete ID` cannot take it for a flag.
fn new_id() -> String {
    Alphanumeric.sample_string(&mut OsRng.unwrap_err(), 22)
}

/// The token object of the management API's `get` and of `token list --json`
/// (SPEC §5): epoch-millisecond times, `limitTo` joined with `<br>` as
/// Extender does, and the same lines as `rules`. Never the value.
pub fn token_json(record: &TokenRecord, now: EpochMs) -> serde_json::Value {
    let rules: Vec<&str> = rule_lines(&record.limit_to);
    serde_json::json!({
        "id": record.id,
        "label": record.label,
        "user": record.user,
        "authorKey": record.author,
        "limitTo": rules.join("<br>"),
        "rules": rules,
        "ip": record.ip,
        "validUntil": record.valid_until,
        "dateCreated": record.created_at,
        "counter": record.counter,
        "lastUsed": record.last_used_at,
        "lastIp": record.last_ip,
        "expired": record.valid_until.is_some_and(|until| until <= now),
    })
}

impl CreatedToken {
    /// The create response (SPEC §5): the one time the value is shown.
    pub fn to_json(&self) -> serde_json::Value {
        let record = &self.record;
        serde_json::json!({
            "status": "ok",
            "id": record.id,
            "label": record.label,
            "token": self.value,
            "user": record.user,
            "validUntil": record.valid_until,
            "dateCreated": record.created_at,
            "limitTo": self.rules.lines().join("<br>"),
            "rules": self.rules.lines(),
            "ip": record.ip,
        })
    }
}

impl From<TokenError> for GatewayError {
    fn from(error: TokenError) -> Self {
        match error {
            TokenError::Invalid {
                field,
                message,
                line,
                column,
            } => {
                let error = GatewayError::invalid(field, message);
                match (line, column) {
                    (Some(line), Some(column)) => error.at(line, column),
                    _ => error,
                }
            }
            TokenError::Duplicate => GatewayError::new(Reason::Conflict, error.to_string()).in_field("token"),
            TokenError::NotFound(id) => GatewayError::new(Reason::NotFound, format!("no token with id {id}")),
            TokenError::Store(e) => GatewayError::internal(&e),
            TokenError::Verify(e) => GatewayError::internal(&e),
        }
    }
}

fn rule_lines(limit_to: &str) -> Vec<&str> {
    limit_to.lines().filter(|l| !l.trim().is_empty()).collect()
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
    fn token_errors_keep_their_field_and_position_and_hide_internals() {
        let invalid = TokenError::Invalid {
            field: "limitTo",
            message: "bad rule".into(),
            line: Some(1),
            column: Some(3),
        };
        let error = GatewayError::from(invalid);
        assert_eq!(error, GatewayError::invalid("limitTo", "bad rule").at(1, 3));
        let duplicate = GatewayError::from(TokenError::Duplicate);
        assert_eq!((duplicate.status().as_u16(), duplicate.field()), (409, Some("token")));
        assert_eq!(GatewayError::from(TokenError::NotFound("x".into())).status(), 404);
        let store = TokenError::Store(crate::store::StoreError::Url("secret-host".into()));
        let error = GatewayError::from(store);
        assert_eq!(error.reason, Reason::Internal);
        assert!(!error.message.contains("secret-host"));
    }

    #[test]
    fn ids_are_url_safe_and_unique() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 22);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
    }
}
