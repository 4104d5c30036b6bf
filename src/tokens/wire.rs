//! Tokens on the wire: the JSON objects of the management API, of the
//! CLI's `--json` and of the page (SPEC §5, §16), and a token error as the
//! HTTP refusal it becomes. Every field name a client reads is written here.

use super::{CreatedToken, Suggested, TokenError, Updated};
use crate::clock::{DAY_MS, EpochMs};
use crate::config::ForwardAs;
use crate::error::{GatewayError, Reason};
use crate::rules::suggest;
use crate::spaces;
use crate::store::TokenRecord;

impl Updated {
    /// What changed, for the audit log: `{"field":[old,new],...}` with the
    /// API's field names, only the fields that changed.
    pub fn changes(&self) -> serde_json::Value {
        let (a, b) = (&self.before, &self.after);
        let mut changes = serde_json::Map::new();
        let mut compare = |name: &str, old: serde_json::Value, new: serde_json::Value| {
            if old != new {
                changes.insert(name.to_owned(), serde_json::json!([old, new]));
            }
        };
        compare("label", a.label.clone().into(), b.label.clone().into());
        compare("limitTo", a.limit_to.clone().into(), b.limit_to.clone().into());
        compare("ip", a.ip.clone().into(), b.ip.clone().into());
        compare("rateLimit", a.rate_limit.clone().into(), b.rate_limit.clone().into());
        compare("enforce", a.enforce.into(), b.enforce.into());
        compare("spaces", space_list(&a.spaces).into(), space_list(&b.spaces).into());
        serde_json::Value::Object(changes)
    }
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
        "expiringSoon": record
            .valid_until
            .is_some_and(|until| until > now && until <= now + crate::notify::SOON_DAYS * DAY_MS),
        "forwardAs": forward_as(record).name(),
        "upstreamTokenId": record.upstream_token_id,
        "rateLimit": record.rate_limit,
        "enforce": record.enforce,
        "spaces": space_list(&record.spaces),
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
            "forwardAs": forward_as(record).name(),
            "upstreamTokenId": record.upstream_token_id,
            "rateLimit": record.rate_limit,
            "enforce": record.enforce,
            "spaces": space_list(&record.spaces),
        })
    }
}

impl Suggested {
    /// The answer of `GET /suggest` and `rules suggest --json` (SPEC §16).
    pub fn to_json(&self) -> serde_json::Value {
        let rules: Vec<serde_json::Value> = self
            .suggestion
            .rules
            .iter()
            .map(|rule| serde_json::json!({"rule": rule.rule, "calls": rule.calls}))
            .collect();
        serde_json::json!({
            "status": "ok",
            "tokenId": self.token_id,
            "days": self.days,
            "observed": self.suggestion.observed,
            "limitTo": self.suggestion.limit_to(),
            "rules": rules,
            "note": suggest::NOTE,
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
            TokenError::RotatedMeanwhile(_) => GatewayError::new(Reason::Conflict, error.to_string()).in_field("id"),
            TokenError::NothingToChange => GatewayError::new(Reason::BadRequest, error.to_string()),
            TokenError::NothingObserved { .. } => GatewayError::new(Reason::NotFound, error.to_string()),
            TokenError::Suggest(e) => GatewayError::internal(&e),
            TokenError::Store(e) => GatewayError::internal(&e),
            TokenError::Verify(e) => GatewayError::internal(&e),
            TokenError::Upstream(e) => e,
        }
    }
}

/// How a token acts as its user: with a PAT if it carries one.
fn forward_as(record: &TokenRecord) -> ForwardAs {
    if record.sealed_pat.is_some() {
        ForwardAs::Pat
    } else {
        ForwardAs::Header
    }
}

fn rule_lines(limit_to: &str) -> Vec<&str> {
    limit_to.lines().filter(|l| !l.trim().is_empty()).collect()
}

/// A stored space list as the API shows it: an array, empty for none.
fn space_list(stored: &Option<String>) -> Vec<&str> {
    stored.as_deref().map(spaces::entries).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
