//! Tokens on the wire: the JSON of the management API, of the CLI's
//! `--json` and of the page (SPEC §5, §16, §18), both ways. Every field
//! name a client reads or sends is written here, once: [`TokenView`] is the
//! token object every answer carries, [`NewToken::from_json`] and
//! [`RestrictionsChange::from_json`] read the bodies that create and change
//! one, and a token error becomes the HTTP refusal it is.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{CreatedToken, NewToken, PatSource, RestrictionsChange, Suggested, TokenError, Updated};
use crate::body::{SWITCH, TEXT, field};
use crate::clock::EpochMs;
use crate::config::ForwardAs;
use crate::error::{GatewayError, Reason};
use crate::rules::suggest;
use crate::secrets::Pat;
use crate::spaces;
use crate::store::{ListedToken, TokenRecord};

const SPACES: &str = "space keys with :read for read only, as \"DOCS,KB:read\" or [\"DOCS\",\"KB:read\"]";
const RATE: &str = "a rate limit such as \"60/min\" (N/s, N/min, N/hour or N/day)";

/// The fields an update may change (SPEC §16), as the API names them.
const CHANGEABLE: [&str; 6] = ["label", "limitTo", "ip", "rateLimit", "enforce", "spaces"];

/// A token as every answer shows it (SPEC §5): the list of `GET /get` and
/// `token list --json`, and, in a [`TokenAnswer`], the answers of create,
/// update and rotate. Epoch-millisecond times (null when absent),
/// `limitTo` joined with `<br>` as Extender does and the same lines as
/// `rules`. Never the value.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenView<'a> {
    id: &'a str,
    label: &'a str,
    user: Option<&'a str>,
    limit_to: String,
    rules: Vec<&'a str>,
    ip: &'a str,
    valid_until: Option<EpochMs>,
    #[serde(rename = "dateCreated")]
    created_at: EpochMs,
    forward_as: &'static str,
    upstream_token_id: Option<&'a str>,
    rate_limit: Option<&'a str>,
    enforce: bool,
    spaces: Vec<&'a str>,
    /// Until when the secret a rotation replaced still works (SPEC §18).
    grace_until: Option<EpochMs>,
    /// Who made it and how it was used: listed, and in the answer of an
    /// update, but not in the answer that shows a value (a create, or a
    /// rotation, which a token may make of itself without seeing listings).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    history: Option<History<'a>>,
    /// Calls of the last 30 days: in a listing only.
    #[serde(rename = "calls30Days", skip_serializing_if = "Option::is_none")]
    recent_calls: Option<i64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct History<'a> {
    #[serde(rename = "authorKey")]
    author: &'a str,
    counter: i64,
    #[serde(rename = "lastUsed")]
    last_used_at: Option<EpochMs>,
    last_ip: Option<&'a str>,
    expired: bool,
    /// Expires within `SOON_DAYS` (SPEC §18).
    expiring_soon: bool,
}

impl<'a> TokenView<'a> {
    /// The token as listed at `now`.
    pub fn new(record: &'a TokenRecord, now: EpochMs) -> Self {
        let soon = crate::notify::soon_after(now);
        TokenView {
            history: Some(History {
                author: &record.author,
                counter: record.counter,
                last_used_at: record.last_used_at,
                last_ip: record.last_ip.as_deref(),
                expired: record.valid_until.is_some_and(|until| until <= now),
                expiring_soon: record.valid_until.is_some_and(|until| until > now && until <= soon),
            }),
            ..TokenView::without_history(record)
        }
    }

    /// The token as the answer that shows its value has it.
    fn without_history(record: &'a TokenRecord) -> Self {
        let rules: Vec<&str> = record.limit_to.lines().filter(|l| !l.trim().is_empty()).collect();
        TokenView {
            id: &record.id,
            label: &record.label,
            user: record.user.as_deref(),
            limit_to: rules.join("<br>"),
            rules,
            ip: &record.ip,
            valid_until: record.valid_until,
            created_at: record.created_at,
            forward_as: forward_as(record).name(),
            upstream_token_id: record.upstream_token_id.as_deref(),
            rate_limit: record.rate_limit.as_deref(),
            enforce: record.enforce,
            spaces: space_list(&record.spaces),
            grace_until: record.grace_until,
            history: None,
            recent_calls: None,
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a token view is plain JSON")
    }
}

/// An answer about one token: `"status":"ok"`, the token, and its value
/// the one time it is shown (create, rotate).
#[derive(Debug, Serialize)]
pub struct TokenAnswer<'a> {
    status: &'static str,
    #[serde(rename = "token", skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    #[serde(flatten)]
    token: TokenView<'a>,
}

impl<'a> TokenAnswer<'a> {
    /// The answer of an update: the token as it is now.
    pub fn changed(record: &'a TokenRecord, now: EpochMs) -> Self {
        TokenAnswer {
            status: "ok",
            value: None,
            token: TokenView::new(record, now),
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("an answer is plain JSON")
    }
}

/// The token object of `GET /get` and `token list --json`.
pub fn token_json(record: &TokenRecord, now: EpochMs) -> Value {
    TokenView::new(record, now).to_json()
}

/// A token as a listing shows it at `now`: with its calls of the last 30 days.
pub fn listed_json(listed: &ListedToken, now: EpochMs) -> Value {
    TokenView {
        recent_calls: Some(listed.recent_calls),
        ..TokenView::new(&listed.record, now)
    }
    .to_json()
}

impl CreatedToken {
    /// The answer of a create or a rotation (SPEC §5, §18): the one time
    /// the value is shown.
    pub fn answer(&self) -> TokenAnswer<'_> {
        TokenAnswer {
            status: "ok",
            value: Some(&self.value),
            token: TokenView::without_history(&self.record),
        }
    }
}

impl Updated {
    /// What changed, for the audit log and the `token.updated` event:
    /// `{"field":[old,new],...}` with the API's field names, only the
    /// fields that changed; `limitTo` as stored (lines joined with `\n`).
    pub fn changes(&self) -> Value {
        let (a, b) = (&self.before, &self.after);
        let pairs: [(Value, Value); CHANGEABLE.len()] = [
            (a.label.clone().into(), b.label.clone().into()),
            (a.limit_to.clone().into(), b.limit_to.clone().into()),
            (a.ip.clone().into(), b.ip.clone().into()),
            (a.rate_limit.clone().into(), b.rate_limit.clone().into()),
            (a.enforce.into(), b.enforce.into()),
            (space_list(&a.spaces).into(), space_list(&b.spaces).into()),
        ];
        let changes = CHANGEABLE
            .iter()
            .zip(pairs)
            .filter(|(_, (old, new))| old != new)
            .map(|(name, (old, new))| ((*name).to_owned(), Value::Array(vec![old, new])))
            .collect();
        Value::Object(changes)
    }
}

impl Suggested {
    /// The answer of `GET /suggest` and `rules suggest --json` (SPEC §16).
    pub fn to_json(&self) -> Value {
        let rules: Vec<Value> = self
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

impl NewToken {
    /// The token a `POST /set` body with a `label` asks for (SPEC §5);
    /// `None` without a label (a settings change). Unknown fields are
    /// ignored, as Extender ignores them; `null` is absent.
    pub fn from_json(body: &Map<String, Value>) -> Result<Option<NewToken>, GatewayError> {
        let Some(label) = field::<String>(body, "label", TEXT)? else {
            return Ok(None);
        };
        Ok(Some(NewToken {
            label,
            user: field(body, "userName", TEXT)?,
            days_until_expiry: days_until_expiry(body)?,
            limit_to: field(body, "limitTo", TEXT)?,
            ip: field(body, "ip", TEXT)?,
            token: field(body, "token", TEXT)?,
            pat: field::<String>(body, "upstreamToken", TEXT)?
                .map(|pat| pat.trim().to_owned())
                .filter(|pat| !pat.is_empty())
                .map(|pat| PatSource::Supplied(Pat::new(pat))),
            rate_limit: field(body, "rateLimit", RATE)?,
            enforce: field(body, "enforce", SWITCH)?,
            spaces: spaces_field(body)?,
        }))
    }
}

impl RestrictionsChange {
    /// The body of `POST /update`: the token's id and what to change. Unlike
    /// a create, an unknown field is refused (a typo must not pass for a
    /// change made), and so is a field that cannot change; `null` is
    /// absent, but `"rateLimit": null` removes the limit and `"spaces":
    /// null` the confinement.
    pub fn from_json(body: &Map<String, Value>) -> Result<(String, RestrictionsChange), GatewayError> {
        const FIXED: [(&str, &str); 5] = [
            ("userName", "the user"),
            ("token", "the value"),
            ("daysUntilExpiry", "the expiry"),
            ("validUntil", "the expiry"),
            ("upstreamToken", "the personal access token"),
        ];
        for name in body.keys() {
            if let Some((field, what)) = FIXED.iter().find(|(field, _)| field == name) {
                return Err(GatewayError::invalid(
                    field,
                    format!("{what} of a token cannot change: create a new token (and delete this one)"),
                ));
            }
            if name != "id" && !CHANGEABLE.contains(&name.as_str()) {
                return Err(GatewayError::new(
                    Reason::BadRequest,
                    format!("unknown field {name:?}: an update changes {}", CHANGEABLE.join(", ")),
                ));
            }
        }
        let id = field::<String>(body, "id", TEXT)?
            .filter(|id| !id.trim().is_empty())
            .ok_or_else(|| GatewayError::invalid("id", "id is required"))?;
        let removable = |name: &str| body.get(name).map(Value::is_null);
        let change = RestrictionsChange {
            label: field(body, "label", TEXT)?,
            limit_to: field(body, "limitTo", TEXT)?,
            ip: field(body, "ip", TEXT)?,
            rate_limit: match removable("rateLimit") {
                None => None,
                Some(true) => Some(None),
                Some(false) => Some(field::<String>(body, "rateLimit", RATE)?),
            },
            enforce: field(body, "enforce", SWITCH)?,
            spaces: match removable("spaces") {
                None => None,
                Some(true) => Some(None),
                Some(false) => Some(spaces_field(body)?),
            },
        };
        Ok((id, change))
    }
}

/// `spaces`: `"DOCS,PM"` or `["DOCS","PM"]`, as the stored list's text.
pub fn spaces_field(body: &Map<String, Value>) -> Result<Option<String>, GatewayError> {
    let invalid = || GatewayError::invalid("spaces", format!("spaces must be {SPACES}"));
    match body.get("spaces") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(keys)) => Ok(Some(keys.clone())),
        Some(Value::Array(keys)) => keys
            .iter()
            .map(|key| key.as_str().filter(|key| !key.contains(',')))
            .collect::<Option<Vec<_>>>()
            .map(|keys| Some(keys.join(",")))
            .ok_or_else(invalid),
        Some(_) => Err(invalid()),
    }
}

/// Extender sends `daysUntilExpiry` as a number or as a numeric string; an
/// empty string is absent.
fn days_until_expiry(body: &Map<String, Value>) -> Result<Option<i64>, GatewayError> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrText {
        Number(i64),
        Text(String),
    }
    const NAME: &str = "daysUntilExpiry";
    const EXPECTED: &str = "a whole number of days";
    match field::<NumberOrText>(body, NAME, EXPECTED)? {
        None => Ok(None),
        Some(NumberOrText::Number(days)) => Ok(Some(days)),
        Some(NumberOrText::Text(text)) if text.trim().is_empty() => Ok(None),
        Some(NumberOrText::Text(text)) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| GatewayError::invalid(NAME, format!("{NAME} must be {EXPECTED}"))),
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
            TokenError::Hash(e) => GatewayError::internal(&e),
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

/// A stored space list as the API shows it: an array, empty for none.
fn space_list(stored: &Option<String>) -> Vec<&str> {
    stored.as_deref().map(spaces::entries).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(json: Value) -> Map<String, Value> {
        match json {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn days_may_be_a_number_or_numeric_text() {
        let days = |json: Value| days_until_expiry(&body(json)).unwrap();
        assert_eq!(days(json!({"daysUntilExpiry": 7})), Some(7));
        assert_eq!(days(json!({"daysUntilExpiry": " 7 "})), Some(7));
        assert_eq!(days(json!({"daysUntilExpiry": ""})), None);
        assert_eq!(days(json!({"daysUntilExpiry": null})), None);
        assert_eq!(days(json!({})), None);
        assert_eq!(
            days(json!({"daysUntilExpiry": -1})),
            Some(-1),
            "the token manager refuses it"
        );
    }

    #[test]
    fn every_answer_shows_the_token_with_the_fields_of_spec_5() {
        let mut record = crate::store::test_record("t1", Some("alice"), 1_000);
        record.limit_to = "GET /a\n\nPOST /b".into();
        record.spaces = Some("DOCS,KB:read".into());
        record.grace_until = Some(5_000);
        let listed = token_json(&record, 2_000);
        // Every field's name is pinned by the API test (tests/it/admin.rs).
        assert!(listed.get("token").is_none() && listed.get("status").is_none());
        assert_eq!(listed["limitTo"], "GET /a<br>POST /b");
        assert_eq!(listed["rules"], json!(["GET /a", "POST /b"]));
        assert_eq!(listed["spaces"], json!(["DOCS", "KB:read"]));
        let created = CreatedToken {
            value: "tgw_value".into(),
            record: record.clone(),
        };
        let answer = created.answer().to_json();
        assert_eq!(
            (&answer["status"], &answer["token"]),
            (&Value::from("ok"), &Value::from("tgw_value"))
        );
        assert_eq!(answer["graceUntil"], 5_000);
        for history in ["authorKey", "counter", "lastUsed", "lastIp", "expired", "expiringSoon"] {
            assert!(
                answer.get(history).is_none(),
                "{history} is listed, not shown with the value"
            );
            assert!(listed.get(history).is_some(), "{history} is listed");
        }
        let changed = TokenAnswer::changed(&record, 2_000).to_json();
        assert!(
            changed.get("token").is_none(),
            "an update never shows a value: {changed}"
        );
        assert_eq!(changed["id"], "t1");
    }

    #[test]
    fn an_update_names_only_the_changeable_fields_that_changed() {
        let before = crate::store::test_record("t1", Some("alice"), 1_000);
        let mut after = before.clone();
        after.label = "renamed".into();
        after.counter = 7;
        after.rate_limit = Some("60/min".into());
        let changes = Updated {
            before: before.clone(),
            after,
        }
        .changes();
        assert_eq!(
            changes,
            json!({"label": ["label t1", "renamed"], "rateLimit": [null, "60/min"]})
        );
        // Each changeable field, by the name the update body gives it.
        let everything = Updated {
            before: before.clone(),
            after: TokenRecord {
                label: "x".into(),
                limit_to: "GET /a\nGET /b".into(),
                ip: "10.0.0.0/8".into(),
                rate_limit: Some("1/s".into()),
                enforce: !before.enforce,
                spaces: Some("DOCS".into()),
                ..before
            },
        }
        .changes();
        let names: Vec<&str> = everything.as_object().unwrap().keys().map(String::as_str).collect();
        let mut changeable = CHANGEABLE.to_vec();
        changeable.sort_unstable();
        assert_eq!(names, changeable);
        assert_eq!(everything["limitTo"][1], "GET /a\nGET /b", "as stored");
    }

    #[test]
    fn an_update_body_refuses_unknown_and_fixed_fields_and_null_removes() {
        let (id, change) =
            RestrictionsChange::from_json(&body(json!({"id": "t1", "rateLimit": null, "spaces": ["DOCS"]}))).unwrap();
        assert_eq!(
            (id.as_str(), change.rate_limit, change.spaces),
            ("t1", Some(None), Some(Some("DOCS".into())))
        );
        let unknown = RestrictionsChange::from_json(&body(json!({"id": "t1", "lable": "x"}))).unwrap_err();
        assert!(unknown.message.contains("lable"), "{unknown:?}");
        let fixed = RestrictionsChange::from_json(&body(json!({"id": "t1", "userName": "bob"}))).unwrap_err();
        assert_eq!(fixed.field(), Some("userName"));
        let missing = RestrictionsChange::from_json(&body(json!({"label": "x"}))).unwrap_err();
        assert_eq!(missing.field(), Some("id"));
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
}
