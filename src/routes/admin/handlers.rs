//! One function per endpoint. Each turns the query or JSON body into typed,
//! validated input at the edge (a bad field is a 400 naming it), calls
//! [`crate::tokens`] (which records each change, naming the caller) or the
//! store, and returns the JSON to answer with.

use serde_json::{Map, Value, json};

use super::caller::{Caller, Role};
use super::record_settings;
use crate::app::App;
use crate::auth::{SecretRole, Via};
use crate::body::{SWITCH, TEXT, field};
use crate::clock::{day_of, day_text};
use crate::config::{ForwardAs, Scope};
use crate::error::{GatewayError, Reason};
use crate::notify::soon_after;
use crate::record::{USAGE_DAYS_KEPT, audit_json};
use crate::rules::{RequestHead, RuleSet};
use crate::settings::SettingsChange;
use crate::spaces;
use crate::store::{AuditOutcome, AuditQuery, RECENT_DAYS, Settings, TokenOrder, TokenQuery, TokenRecord, TokenState};
use crate::target::canonical_text_target;
use crate::tokens::{
    DEFAULT_SUGGEST_DAYS, NewToken, PatSource, RestrictionsChange, SelfRotation, TokenAnswer, TokenError, listed_json,
    spaces_field,
};

const DEFAULT_MAX_RESULTS: u64 = 50;
/// The days `GET /usage` covers when not asked: the listing's "Calls (30 days)".
const DEFAULT_USAGE_DAYS: i64 = RECENT_DAYS;
/// Larger `maxResults` are served as this many.
const MAX_MAX_RESULTS: u64 = 1000;

/// `GET /get`: a page of tokens, newest first, never their values. A user
/// sees only their own (the filters apply within them).
pub async fn list_tokens(app: &App, caller: &Caller, query: Option<&str>) -> Result<Value, GatewayError> {
    let mut query = token_query(query)?;
    query.user = within_own(caller, query.user);
    let now = app.clock.now_ms();
    (query.now, query.soon) = (now, soon_after(now));
    let page = match &query.user {
        Some(user) if user.is_empty() => Default::default(),
        _ => app.tokens.list(&query).await?,
    };
    let tokens: Vec<Value> = page.items.iter().map(|listed| listed_json(listed, now)).collect();
    Ok(json!({
        "total": page.total,
        "pages": page.total.div_ceil(query.max_results),
        "maxResults": query.max_results,
        "startAt": query.start_at,
        "tokens": tokens,
        "status": "ok",
    }))
}

/// `GET /audit`: audit entries, newest first, in the envelope of `get`. A
/// user sees only the entries whose user is them.
pub async fn list_audit(app: &App, caller: &Caller, query: Option<&str>) -> Result<Value, GatewayError> {
    let (start_at, max_results) = paging(query)?;
    let outcome = match query_param(query, "outcome")?.as_deref() {
        None | Some("all") => None,
        Some(asked) => Some(
            AuditOutcome::ALL
                .into_iter()
                .find(|outcome| outcome.name() == asked)
                .ok_or_else(|| GatewayError::invalid("outcome", "outcome must be all, allowed or refused"))?,
        ),
    };
    let audit_query = AuditQuery {
        token_id: query_param(query, "tokenId")?,
        user: within_own(caller, query_param(query, "userName")?),
        outcome,
        start_at,
        max_results,
    };
    let page = match &audit_query.user {
        Some(user) if user.is_empty() => Default::default(),
        _ => app
            .store
            .list_audit(&audit_query)
            .await
            .map_err(|e| GatewayError::internal(&e))?,
    };
    let entries: Vec<Value> = page.items.iter().map(audit_json).collect();
    Ok(json!({
        "total": page.total,
        "pages": page.total.div_ceil(audit_query.max_results),
        "maxResults": audit_query.max_results,
        "startAt": audit_query.start_at,
        "entries": entries,
        "status": "ok",
    }))
}

/// The user filter a caller may apply: anything for an admin; for a user,
/// their own name (another name matches nothing: the empty filter).
fn within_own(caller: &Caller, asked: Option<String>) -> Option<String> {
    match (&caller.role, asked) {
        (Role::Admin, asked) => asked,
        (_, Some(asked)) if !caller.is(&asked) => Some(String::new()),
        (_, _) => Some(caller.user().to_owned()),
    }
}

/// `POST /set`: creates a token when the body has a `label`, else switches
/// the settings it names (admins only).
pub async fn set(app: &App, caller: &Caller, body: Map<String, Value>) -> Result<Value, GatewayError> {
    match SetRequest::from_body(&body)? {
        SetRequest::Create(mut new) => {
            password_again(caller, "creating a token")?;
            if caller.role != Role::Admin {
                new.user = Some(own_user(caller, new.user.as_deref())?);
            }
            if app.config.forward_as == ForwardAs::Pat && new.pat.is_none() {
                new.pat = pat_to_mint(caller, new.user.as_deref())?;
            }
            // A custom value that exists answers 409: a guess of another's
            // token, counted against the client like a wrong token.
            let custom = new.token.is_some();
            if custom {
                app.auth.check_throttle(caller.client_ip, "token")?;
            }
            let created = match app.tokens.create(*new, &caller.actor()).await {
                Err(TokenError::Duplicate) if custom => {
                    app.auth.record_failure(caller.client_ip);
                    return Err(TokenError::Duplicate.into());
                }
                created => created?,
            };
            Ok(created.answer().to_json())
        }
        SetRequest::Settings(change) => {
            admin_only(caller, "change the settings")?;
            password_again(caller, "changing the settings")?;
            change_settings(app, caller, change).await
        }
    }
}

/// A user creates tokens for themselves only: `userName` absent or their own.
fn own_user(caller: &Caller, asked: Option<&str>) -> Result<String, GatewayError> {
    match asked {
        None | Some("") => Ok(caller.user().to_owned()),
        Some(asked) if caller.is(asked) => Ok(caller.user().to_owned()),
        Some(asked) => Err(GatewayError::new(
            Reason::Forbidden,
            format!(
                "{} may create tokens for themselves only, not for {asked}",
                caller.user()
            ),
        )),
    }
}

/// With `forward_as = "pat"` and no `upstreamToken`: Confluence mints the
/// PAT with the caller's password when they create a token for themselves;
/// anything else is refused with what to do instead.
/// (An unbound token gets none: the token manager refuses it.)
fn pat_to_mint(caller: &Caller, user: Option<&str>) -> Result<Option<PatSource>, GatewayError> {
    let Some(user) = user else {
        return Ok(None);
    };
    match &caller.principal.via {
        Via::Password { authorization } if caller.is(user) => Ok(Some(PatSource::Mint(authorization.clone()))),
        Via::Password { .. } => Err(GatewayError::invalid(
            "upstreamToken",
            format!(
                "a token for {user} needs {user}'s Confluence personal access token: let {user} create the token \
                 with their own password (the gateway then has Confluence create one), or give one of {user}'s \
                 personal access tokens in upstreamToken"
            ),
        )),
        Via::Token(_) | Via::Session(_) => Err(GatewayError::invalid(
            "upstreamToken",
            "a call made with a token cannot have Confluence create a personal access token: call with your \
             Confluence password instead, or give a personal access token in upstreamToken",
        )),
    }
}

fn admin_only(caller: &Caller, what: &str) -> Result<(), GatewayError> {
    match caller.role {
        Role::Admin => Ok(()),
        _ => Err(GatewayError::new(
            Reason::Forbidden,
            format!("only an admin may {what}"),
        )),
    }
}

/// What yields or widens access needs the Confluence password again, not
/// only the web page's session (SPEC §15): a script injected into any
/// Confluence page shares the page's origin and could drive the session.
fn password_again(caller: &Caller, what: &str) -> Result<(), GatewayError> {
    match caller.principal.via {
        Via::Session(_) => Err(GatewayError::new(
            Reason::Forbidden,
            format!("{what} needs your Confluence password again (send it as Basic credentials)"),
        )),
        Via::Password { .. } | Via::Token(_) => Ok(()),
    }
}

/// `POST /update`: changes a token's restrictions (SPEC §16), validated as
/// a create is. A user changes their own tokens only (another's id is 404);
/// from the web page it needs the password again (it can widen access).
/// Audited with the old and new values.
pub async fn update(app: &App, caller: &Caller, body: Map<String, Value>) -> Result<Value, GatewayError> {
    let (id, change) = RestrictionsChange::from_json(&body)?;
    password_again(caller, "changing a token's restrictions")?;
    own_token(app, caller, &id).await?;
    let updated = app.tokens.update(&id, change, &caller.actor()).await?;
    Ok(TokenAnswer::changed(&updated.after, app.clock.now_ms()).to_json())
}

/// `POST /rotate` with `{"id","graceHours"?}` (SPEC §18): a new secret,
/// answered once in the shape of a create. An admin rotates any token (with
/// a token, its rules must allow the call), a user their own (from the web
/// page with the password again), and a token itself, with its current
/// secret and without its rules applying (a secret in grace: 403).
pub async fn rotate(
    app: &App,
    caller: &Caller,
    head: &RequestHead<'_>,
    presented: Option<&str>,
    body: Map<String, Value>,
) -> Result<Value, GatewayError> {
    let id = field::<String>(&body, "id", TEXT)?
        .filter(|id| !id.trim().is_empty())
        .ok_or_else(|| GatewayError::invalid("id", "id is required"))?;
    let grace_hours = field::<i64>(&body, "graceHours", "a number of hours, 0 to 168")?;
    let itself = match &caller.principal.via {
        Via::Token(token) if token.id == id => {
            if token.secret != SecretRole::Current {
                return Err(GatewayError::new(
                    Reason::Forbidden,
                    format!(
                        "token '{}' was rotated: only its current secret may rotate it again",
                        token.label
                    ),
                ));
            }
            presented.map(|secret| SelfRotation {
                secret,
                hash: token.verified_hash(),
            })
        }
        Via::Token(token) => {
            caller.may_manage()?;
            crate::auth::check_rules_on_json(token, head, &Value::Object(body.clone()))?;
            None
        }
        Via::Password { .. } | Via::Session(_) => {
            caller.may_manage()?;
            password_again(caller, "rotating a token")?;
            own_token(app, caller, &id).await?;
            None
        }
    };
    let rotated = app.tokens.rotate(&id, grace_hours, itself, &caller.actor()).await?;
    Ok(rotated.answer().to_json())
}

/// `GET /suggest?tokenId=..[&days=N]`: rules proposed from the token's
/// audited calls (SPEC §16). A user asks about their own tokens only.
pub async fn suggest(app: &App, caller: &Caller, query: Option<&str>) -> Result<Value, GatewayError> {
    let id = query_param(query, "tokenId")?.ok_or_else(|| GatewayError::invalid("tokenId", "tokenId is required"))?;
    let days = match number_param(query, "days")? {
        None => DEFAULT_SUGGEST_DAYS,
        Some(days) => u32::try_from(days).unwrap_or(u32::MAX),
    };
    own_token(app, caller, &id).await?;
    Ok(app.tokens.suggest(&id, days).await?.to_json())
}

/// 404 unless the caller may manage token `id`: an admin any, a user their
/// own (another's is answered as if it did not exist).
async fn own_token(app: &App, caller: &Caller, id: &str) -> Result<(), GatewayError> {
    if caller.role == Role::Admin {
        return Ok(());
    }
    may_see(caller, &app.tokens.get(id).await?)
}

/// A user sees their own tokens only: another's is 404, as if absent.
fn may_see(caller: &Caller, token: &TokenRecord) -> Result<(), GatewayError> {
    match token.user.as_deref() {
        _ if caller.role == Role::Admin => Ok(()),
        Some(user) if caller.is(user) => Ok(()),
        _ => Err(GatewayError::new(
            Reason::NotFound,
            format!("no token with id {}", token.id),
        )),
    }
}

/// `GET /usage?id=ID&days=N` (SPEC §15.1): a token's calls and refusals per
/// UTC day, oldest first, each of the last N days (today included) with
/// zeros where there were none. Counts reach the store with the usage
/// flush, a few seconds after the calls. A user's own tokens only (another's
/// id is 404), any for an admin.
pub async fn usage(app: &App, caller: &Caller, query: Option<&str>) -> Result<Value, GatewayError> {
    let id = query_param(query, "id")?.ok_or_else(|| GatewayError::invalid("id", "id is required"))?;
    let days = match number_param(query, "days")?.map(i64::try_from) {
        None => DEFAULT_USAGE_DAYS,
        Some(Ok(days)) if (1..=USAGE_DAYS_KEPT).contains(&days) => days,
        Some(_) => {
            return Err(GatewayError::invalid(
                "days",
                format!("days must be 1 to {USAGE_DAYS_KEPT}"),
            ));
        }
    };
    may_see(caller, &app.tokens.get(&id).await?)?;
    let today = day_of(app.clock.now_ms());
    let from = today - (days - 1);
    let stored = app
        .store
        .usage_days(&id, from)
        .await
        .map_err(|e| GatewayError::internal(&e))?;
    let mut stored = stored.into_iter().peekable();
    let days: Vec<Value> = (from..=today)
        .map(|day| {
            let counted = stored.next_if(|counted| counted.day == day);
            json!({
                "date": day_text(day),
                "calls": counted.map_or(0, |c| c.calls),
                "refused": counted.map_or(0, |c| c.refused),
            })
        })
        .collect();
    Ok(json!({"status": "ok", "id": id, "days": days}))
}

/// `POST /check`: the rules dry run of `tokengate rules check` (SPEC §15):
/// `{"limitTo","method","url","body"?,"contentType"?,"spaces"?}`: with
/// `spaces`, the rules and the spaces (SPEC §17) must both allow.
pub fn check(body: Map<String, Value>, scope: Scope) -> Result<Value, GatewayError> {
    let limit_to = field::<String>(&body, "limitTo", TEXT)?.unwrap_or_default();
    let rules =
        RuleSet::parse(&limit_to).map_err(|e| GatewayError::invalid("limitTo", e.to_string()).at(e.line, e.column))?;
    let method = field::<String>(&body, "method", TEXT)?
        .filter(|m| !m.trim().is_empty())
        .ok_or_else(|| GatewayError::invalid("method", "method is required (GET, POST, ...)"))?
        .trim()
        .to_ascii_uppercase();
    let url = field::<String>(&body, "url", TEXT)?
        .ok_or_else(|| GatewayError::invalid("url", "url is required, e.g. /rest/api/space?spaceKey=DOCS"))?;
    let (path, query) = canonical_text_target(&url).map_err(|e| GatewayError::invalid("url", format!("url: {e}")))?;
    let request_body = field::<String>(&body, "body", TEXT)?;
    let content_type = field::<String>(&body, "contentType", TEXT)?;
    let spaces = spaces::SpaceList::parse(&spaces_field(&body)?.unwrap_or_default())
        .map_err(|message| GatewayError::invalid("spaces", message))?;
    let head = RequestHead {
        method: &method,
        path: &path,
        query,
    };
    let request_body = request_body.as_deref().map(|b| (b.as_bytes(), content_type.as_deref()));
    let mut run = rules.dry_run(&head, request_body);
    run.apply_scope(scope, &head);
    if let (Some(spaces), true) = (&spaces, run.allowed) {
        spaces::dry_run(spaces, &head, request_body, &mut run);
    }
    Ok(run.to_json())
}

/// `GET /settings`: the settings this gateway runs with (admins only).
pub fn settings(app: &App, caller: &Caller) -> Result<Value, GatewayError> {
    admin_only(caller, "read the settings")?;
    Ok(settings_json(app.settings.get()))
}

/// `DELETE /delete`: one token by `id`, or every token of `userName`, each
/// from the body or the query. A user deletes their own tokens only
/// (another's id is 404, as if it did not exist). When the token's own user
/// deletes it with their password, the PAT the gateway minted for it is
/// revoked in Confluence too (`upstreamRevoked`).
pub async fn delete(
    app: &App,
    caller: &Caller,
    query: Option<&str>,
    body: Map<String, Value>,
) -> Result<Value, GatewayError> {
    let id = from_body_or_query(&body, query, "id")?;
    let user = from_body_or_query(&body, query, "userName")?;
    let deleted: Vec<TokenRecord> = match (id, user) {
        (Some(id), None) => {
            if caller.role != Role::Admin {
                let token = app.tokens.get(&id).await?;
                if !token.user.as_deref().is_some_and(|user| caller.is(user)) {
                    return Err(GatewayError::new(Reason::NotFound, format!("no token with id {id}")));
                }
            }
            vec![app.tokens.delete(&id, &caller.actor()).await?]
        }
        (None, Some(user)) => {
            if caller.role != Role::Admin && !caller.is(&user) {
                return Err(GatewayError::new(
                    Reason::Forbidden,
                    format!("{} may delete their own tokens only, not {user}'s", caller.user()),
                ));
            }
            app.tokens.delete_user(&user, &caller.actor()).await?
        }
        (Some(_), Some(_)) => return Err(GatewayError::invalid("id", "give either id or userName, not both")),
        (None, None) => {
            return Err(GatewayError::invalid(
                "id",
                "id (one token) or userName (all tokens of a user) is required",
            ));
        }
    };
    let mut answer = json!({"status": "ok", "deleted": deleted.len()});
    let minted = deleted.iter().any(|token| token.upstream_token_id.is_some());
    if minted {
        let own: Vec<TokenRecord> = deleted
            .into_iter()
            .filter(|token| token.user.as_deref().is_some_and(|user| caller.is(user)))
            .collect();
        let revoked = match &caller.principal.via {
            Via::Password { authorization } => app.tokens.revoke_minted(&own, authorization).await,
            Via::Token(_) | Via::Session(_) => None,
        };
        answer["upstreamRevoked"] = Value::from(revoked.unwrap_or(false));
    }
    Ok(answer)
}

/// What `POST /set` asks for.
#[derive(Debug)]
enum SetRequest {
    /// Boxed: a creation request is large, a settings change tiny.
    Create(Box<NewToken>),
    Settings(SettingsChange),
}

impl SetRequest {
    /// A token when the body has a `label` ([`NewToken::from_json`]), else
    /// the settings it names.
    fn from_body(body: &Map<String, Value>) -> Result<SetRequest, GatewayError> {
        if let Some(new) = NewToken::from_json(body)? {
            return Ok(SetRequest::Create(Box::new(new)));
        }
        let change = SettingsChange {
            usage_details: field(body, "usageDetails", SWITCH)?,
            audit_log: field(body, "auditLog", SWITCH)?,
        };
        if change.is_empty() {
            return Err(GatewayError::invalid(
                "label",
                "label is required (or usageDetails / auditLog to change the settings)",
            ));
        }
        Ok(SetRequest::Settings(change))
    }
}

async fn change_settings(app: &App, caller: &Caller, change: SettingsChange) -> Result<Value, GatewayError> {
    let settings = app
        .settings
        .change(change)
        .await
        .map_err(|e| GatewayError::internal(&e))?;
    record_settings(app, caller, settings).await;
    Ok(settings_json(settings))
}

fn settings_json(settings: Settings) -> Value {
    json!({
        "status": "ok",
        "settings": {"usageDetails": settings.usage_details, "auditLog": settings.audit_log},
    })
}

/// `startAt` and `maxResults`, as `GET /get` and `GET /audit` page.
fn paging(query: Option<&str>) -> Result<(u64, u64), GatewayError> {
    let start_at = number_param(query, "startAt")?.unwrap_or(0);
    let max_results = match number_param(query, "maxResults")? {
        None => DEFAULT_MAX_RESULTS,
        Some(0) => return Err(GatewayError::invalid("maxResults", "maxResults must be at least 1")),
        Some(n) => n.min(MAX_MAX_RESULTS),
    };
    Ok((start_at, max_results))
}

/// Paging, filters and order of `GET /get`.
fn token_query(query: Option<&str>) -> Result<TokenQuery, GatewayError> {
    let (start_at, max_results) = paging(query)?;
    let (order, ascending) = match query_param(query, "orderBy")? {
        None => (TokenOrder::Created, false),
        Some(asked) => order_by(&asked)?,
    };
    let state = match query_param(query, "state")?.as_deref() {
        None | Some("all") => None,
        Some(asked) => Some(
            TokenState::ALL
                .into_iter()
                .find(|state| state.name() == asked)
                .ok_or_else(|| {
                    GatewayError::invalid("state", "state must be all, active, expiring, expired or unbound")
                })?,
        ),
    };
    Ok(TokenQuery {
        user: query_param(query, "userName")?,
        label: query_param(query, "label")?,
        state,
        order,
        ascending,
        start_at,
        max_results,
        ..TokenQuery::default()
    })
}

/// `orderBy`: a column's name, ascending; `-` before it for descending.
fn order_by(asked: &str) -> Result<(TokenOrder, bool), GatewayError> {
    let (name, ascending) = match asked.strip_prefix('-') {
        Some(name) => (name, false),
        None => (asked, true),
    };
    let order = TokenOrder::ALL
        .into_iter()
        .find(|order| order.name() == name)
        .ok_or_else(|| {
            let names: Vec<&str> = TokenOrder::ALL.iter().map(|order| order.name()).collect();
            GatewayError::invalid(
                "orderBy",
                format!(
                    "orderBy must be one of {}, with - before it for descending",
                    names.join(", ")
                ),
            )
        })?;
    Ok((order, ascending))
}

fn number_param(query: Option<&str>, name: &'static str) -> Result<Option<u64>, GatewayError> {
    query_param(query, name)?
        .map(|value| value.trim().parse::<u64>())
        .transpose()
        .map_err(|_| GatewayError::invalid(name, format!("{name} must be a whole number, 0 or more")))
}

/// One query parameter (form-decoded); absent or empty is `None`. A repeated
/// parameter is refused rather than guessing which one was meant.
fn query_param(query: Option<&str>, name: &'static str) -> Result<Option<String>, GatewayError> {
    let mut values = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned());
    let first = values.next();
    if values.next().is_some() {
        return Err(GatewayError::invalid(name, format!("{name} is given more than once")));
    }
    Ok(first.filter(|value| !value.trim().is_empty()))
}

/// A string given in the body or the query (the same value if in both).
fn from_body_or_query(
    body: &Map<String, Value>,
    query: Option<&str>,
    name: &'static str,
) -> Result<Option<String>, GatewayError> {
    let in_body = field::<String>(body, name, "a string")?.filter(|value| !value.trim().is_empty());
    match (in_body, query_param(query, name)?) {
        (Some(a), Some(b)) if a != b => Err(GatewayError::invalid(
            name,
            format!("{name} differs between the body and the query"),
        )),
        (a, b) => Ok(a.or(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: Value) -> Map<String, Value> {
        match json {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn field_of(error: GatewayError) -> Option<&'static str> {
        assert_eq!(error.reason, crate::error::Reason::BadRequest, "{error:?}");
        error.field()
    }

    #[test]
    fn paging_has_defaults_a_cap_and_named_errors() {
        let q = token_query(None).unwrap();
        assert_eq!((q.start_at, q.max_results, q.user, q.label), (0, 50, None, None));
        let q = token_query(Some("startAt=100&maxResults=5000&userName=Alice&label=ci+bot")).unwrap();
        assert_eq!((q.start_at, q.max_results), (100, 1000));
        assert_eq!((q.user.as_deref(), q.label.as_deref()), (Some("Alice"), Some("ci bot")));
        let q = token_query(Some("userName=&label=&startAt=")).unwrap();
        assert_eq!((q.user, q.label, q.start_at), (None, None, 0));
        for (bad, field) in [
            ("startAt=-1", "startAt"),
            ("startAt=x", "startAt"),
            ("maxResults=0", "maxResults"),
            ("maxResults=1.5", "maxResults"),
            ("userName=a&userName=b", "userName"),
        ] {
            assert_eq!(field_of(token_query(Some(bad)).unwrap_err()), Some(field), "{bad}");
        }
    }

    #[test]
    fn a_label_means_create_and_unknown_fields_are_ignored() {
        let request = SetRequest::from_body(&body(
            json!({"label":"ci","userName":"alice","daysUntilExpiry":"30","limitTo":".*",
                "ip":"10.0.0.1","token":null,"usageDetails":false,"color":"blue"}),
        ))
        .unwrap();
        let SetRequest::Create(new) = request else {
            panic!("{request:?}")
        };
        assert_eq!((new.label.as_str(), new.user.as_deref()), ("ci", Some("alice")));
        assert_eq!((new.days_until_expiry, new.token), (Some(30), None));
        assert_eq!(
            (new.limit_to.as_deref(), new.ip.as_deref()),
            (Some(".*"), Some("10.0.0.1"))
        );
    }

    #[test]
    fn without_a_label_the_switches_change_settings() {
        let request = SetRequest::from_body(&body(json!({"auditLog": false}))).unwrap();
        let SetRequest::Settings(change) = request else {
            panic!("{request:?}")
        };
        assert_eq!(
            change,
            SettingsChange {
                usage_details: None,
                audit_log: Some(false)
            }
        );
        let error = SetRequest::from_body(&body(json!({"userName": "alice"}))).unwrap_err();
        assert_eq!(field_of(error), Some("label"));
    }

    #[test]
    fn wrong_types_name_the_field_but_never_echo_the_value() {
        for (json, name) in [
            (json!({"label": 5}), "label"),
            (json!({"label": "x", "userName": ["a"]}), "userName"),
            (json!({"label": "x", "token": 12345678}), "token"),
            (json!({"usageDetails": "tgw_secret_value"}), "usageDetails"),
            (json!({"label": "x", "daysUntilExpiry": 1.5}), "daysUntilExpiry"),
            (json!({"label": "x", "daysUntilExpiry": "soon"}), "daysUntilExpiry"),
        ] {
            let error = SetRequest::from_body(&body(json.clone())).unwrap_err();
            assert!(!error.message.contains("secret") && !error.message.contains("12345678"));
            assert_eq!(field_of(error), Some(name), "{json}");
        }
    }

    #[test]
    fn delete_targets_come_from_body_or_query_consistently() {
        let empty = Map::new();
        assert_eq!(
            from_body_or_query(&empty, Some("id=abc"), "id").unwrap().as_deref(),
            Some("abc")
        );
        let in_body = body(json!({"id": "abc"}));
        assert_eq!(
            from_body_or_query(&in_body, None, "id").unwrap().as_deref(),
            Some("abc")
        );
        assert_eq!(
            from_body_or_query(&in_body, Some("id=abc"), "id").unwrap().as_deref(),
            Some("abc")
        );
        assert!(from_body_or_query(&in_body, Some("id=xyz"), "id").is_err());
        assert_eq!(from_body_or_query(&body(json!({"id": " "})), None, "id").unwrap(), None);
    }
}
