//! The token checks of SPEC §2.7, in their normative order, and the rule
//! check that may need the request body (SPEC §3.4). Pure but for reading
//! that body: every refusal is a value.

use std::net::IpAddr;

use http_body_util::Either;
use hyper::{Method, Request};

use super::ActiveToken;
use super::credentials::Scheme;
use crate::body::{Forwarded, Reading, RequestBody, is_encoded, read_json};
use crate::clock::EpochMs;
use crate::config::{Scope, TokenAuth};
use crate::error::{GatewayError, Reason};
use crate::rules::{JsonBody, RequestHead, Verdict};
use crate::tokens::check_user_name;

/// What the checks look at, besides the token.
pub struct CheckContext<'a> {
    pub scheme: Scheme,
    pub basic_user: Option<&'a str>,
    pub method: &'a Method,
    pub path: &'a str,
    pub client_ip: IpAddr,
    pub now: EpochMs,
    pub token_auth: TokenAuth,
    pub scope: Scope,
}

/// Scheme, user binding, expiry, scope and IP allowlist, in that order.
/// Returns the identity to act as.
pub fn check_token(token: &ActiveToken, cx: &CheckContext<'_>) -> Result<String, GatewayError> {
    let deny = |reason, message: String| Err(GatewayError::new(reason, message));
    let label = &token.label;
    let scheme_allowed = match cx.scheme {
        Scheme::Basic => cx.token_auth.allows_basic(),
        Scheme::Bearer => cx.token_auth.allows_bearer(),
    };
    if !scheme_allowed {
        return deny(
            Reason::SchemeNotAllowed,
            format!("tokens are not accepted with {} authentication here", cx.scheme.name()),
        );
    }
    let identity = match (&token.user, cx.basic_user) {
        (Some(bound), Some(user)) if !bound.eq_ignore_ascii_case(user) => {
            return deny(Reason::UserMismatch, format!("token '{label}' belongs to another user"));
        }
        (Some(bound), _) => bound.clone(),
        (None, None) => {
            return deny(
                Reason::UnboundBearer,
                format!("token '{label}' is not bound to a user: send it with Basic authentication as user:token"),
            );
        }
        (None, Some("")) => {
            return deny(
                Reason::UserMismatch,
                format!("token '{label}' needs a user name with Basic authentication"),
            );
        }
        (None, Some(user)) => {
            // The name becomes the identity Confluence sees: it must be one a
            // stored token could be bound to (no commas, control characters...).
            if let Err(why) = check_user_name(user) {
                return deny(
                    Reason::UserMismatch,
                    format!("token '{label}' cannot act as this user: {why}"),
                );
            }
            user.to_owned()
        }
    };
    if token.is_expired(cx.now) {
        return deny(Reason::TokenExpired, format!("token '{label}' has expired"));
    }
    if !cx.scope.allows(cx.method, cx.path) {
        return deny(
            Reason::OutOfScope,
            format!("token '{label}' may only be used on {}", cx.scope.describe()),
        );
    }
    if !token.allows_ip(cx.client_ip) {
        return deny(
            Reason::IpNotAllowed,
            format!("token '{label}' may not be used from {}", cx.client_ip),
        );
    }
    Ok(identity)
}

/// The rules' answer on a request: the request to go on with (its body
/// streaming, or read whole by a JSON rule), and the refusal when no rule
/// allows it (kept with the request in case the token is report-only, SPEC
/// §16, and it goes on anyway).
pub type RulesAnswer<B> = (Request<Forwarded<B>>, Option<GatewayError>);

/// What the rules say before any body is read.
pub enum RulesCheck<B> {
    Decided(RulesAnswer<B>),
    /// Only a rule with `JsonData` constraints could allow it: read the body
    /// with [`check_rules_with_body`].
    NeedsBody(Request<B>),
}

/// The last check: the token's restriction rules, on the method, path and
/// query. Synchronous: the body is read (by [`check_rules_with_body`]) only
/// when a JSON rule is the only way the request could be allowed and the
/// body could be JSON. `Err` when the stored rules no longer compile: that
/// refuses everything, report-only or not.
pub fn check_rules<B>(token: &ActiveToken, req: Request<B>, path: &str) -> Result<RulesCheck<B>, GatewayError> {
    let rules = compiled_rules(token)?;
    let head = RequestHead {
        method: req.method().as_str(),
        path,
        query: req.uri().query(),
    };
    let denied = match rules.check(&head) {
        Verdict::Permit(permit) => {
            tracing::debug!(token.id = %token.id, rule.line = ?permit.line(), "rules allow the request");
            None
        }
        Verdict::Denied(d) => Some(rule_mismatch(token, &d)),
        // Compressed bytes are not JSON text: the constraints cannot match.
        Verdict::NeedsJsonBody if is_encoded(req.headers()) => rules
            .check_with_body(&head, &JsonBody::NotJson)
            .err()
            .map(|d| rule_mismatch(token, &d)),
        Verdict::NeedsJsonBody => return Ok(RulesCheck::NeedsBody(req)),
    };
    Ok(RulesCheck::Decided((req.map(Either::Left), denied)))
}

/// The rules again, with the body read (at most `max_json_body` bytes) and
/// parsed as JSON; the body read is forwarded byte for byte. `Err` when the
/// body cannot be read or is ambiguous, which no report-only mode waives.
pub async fn check_rules_with_body<B: RequestBody>(
    token: &ActiveToken,
    req: Request<B>,
    path: &str,
    max_json_body: usize,
) -> Result<RulesAnswer<B>, GatewayError> {
    let rules = compiled_rules(token)?;
    let (req, parsed) = read_json(
        req.map(Either::Left),
        max_json_body,
        "the most a JSON rule reads",
        Reading::Declared,
    )
    .await?;
    let head = RequestHead {
        method: req.method().as_str(),
        path,
        query: req.uri().query(),
    };
    let denied = match rules.check_with_body(&head, &parsed.json) {
        Ok(permit) => {
            tracing::debug!(token.id = %token.id, rule.line = ?permit.line(), "rules allow the request and its JSON body");
            None
        }
        Err(d) => Some(rule_mismatch(token, &d)),
    };
    Ok((req, denied))
}

/// The token's rules on a request whose JSON body is already read (a
/// management call decided after its body, SPEC §18).
pub fn check_rules_on_json(
    token: &ActiveToken,
    head: &RequestHead<'_>,
    body: &serde_json::Value,
) -> Result<(), GatewayError> {
    let rules = compiled_rules(token)?;
    match rules.check_with_body(head, &JsonBody::Json(body.clone())) {
        Ok(_) => Ok(()),
        Err(denied) => Err(rule_mismatch(token, &denied)),
    }
}

/// The token's compiled rules; a token whose stored rules no longer compile
/// refuses everything (fail closed).
fn compiled_rules(token: &ActiveToken) -> Result<&crate::rules::RuleSet, GatewayError> {
    token.rules.as_ref().map_err(|_| {
        GatewayError::new(
            Reason::RuleMismatch,
            format!(
                "token '{}' has restriction rules that no longer compile; ask an admin to replace it",
                token.label
            ),
        )
    })
}

fn rule_mismatch(token: &ActiveToken, denied: &crate::rules::Denied) -> GatewayError {
    GatewayError::new(
        Reason::RuleMismatch,
        format!("token '{}' {}", token.label, denied.message()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TokenRecord;

    fn token(user: Option<&str>, valid_until: Option<EpochMs>, ip: &str) -> ActiveToken {
        ActiveToken::from_record(
            &TokenRecord {
                label: "ci-bot".into(),
                ip: ip.into(),
                valid_until,
                ..crate::store::test_record("id1", user, 0)
            },
            Default::default(),
            &crate::auth::rate_limit::RateLimits::local(crate::clock::ManualClock::starting_now()),
        )
    }

    fn cx<'a>(scheme: Scheme, basic_user: Option<&'a str>) -> CheckContext<'a> {
        CheckContext {
            scheme,
            basic_user,
            method: &Method::GET,
            path: "/rest/api/space",
            client_ip: "10.1.2.3".parse().unwrap(),
            now: 1000,
            token_auth: TokenAuth::Both,
            scope: Scope::Rest,
        }
    }

    fn reason(result: Result<String, GatewayError>) -> &'static str {
        result.unwrap_err().reason.code()
    }

    #[test]
    fn bound_tokens_act_as_their_user() {
        let t = token(Some("Alice"), None, "");
        assert_eq!(check_token(&t, &cx(Scheme::Basic, Some("alice"))).unwrap(), "Alice");
        assert_eq!(check_token(&t, &cx(Scheme::Bearer, None)).unwrap(), "Alice");
        assert_eq!(
            reason(check_token(&t, &cx(Scheme::Basic, Some("mallory")))),
            "user_mismatch"
        );
    }

    #[test]
    fn unbound_tokens_take_the_basic_user() {
        let t = token(None, None, "");
        assert_eq!(check_token(&t, &cx(Scheme::Basic, Some("bob"))).unwrap(), "bob");
        assert_eq!(reason(check_token(&t, &cx(Scheme::Basic, Some("")))), "user_mismatch");
        assert_eq!(reason(check_token(&t, &cx(Scheme::Bearer, None))), "unbound_bearer");
    }

    fn with_rules(limit_to: &str) -> ActiveToken {
        let mut t = token(Some("alice"), None, "");
        t.rules = crate::rules::RuleSet::parse(limit_to).map_err(|e| e.to_string());
        t
    }

    fn rules_say(t: &ActiveToken, method: Method, uri: &str, headers: &[(&str, &str)]) -> &'static str {
        let mut req = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(()).unwrap();
        let path = req.uri().path().to_owned();
        match check_rules(t, req, &path) {
            Ok(RulesCheck::Decided((_, None))) => "allowed",
            Ok(RulesCheck::Decided((_, Some(e)))) => e.reason.code(),
            Ok(RulesCheck::NeedsBody(_)) => "needs body",
            Err(e) => e.reason.code(),
        }
    }

    #[test]
    fn rules_read_no_body_unless_only_a_json_rule_could_allow() {
        let t = with_rules("[get].*/rest/api/space.*\n[post].*/rest/api/content/?[JsonData::type==page]");
        assert_eq!(rules_say(&t, Method::GET, "/rest/api/space?spaceKey=X", &[]), "allowed");
        assert_eq!(rules_say(&t, Method::POST, "/rest/api/content", &[]), "needs body");
        assert_eq!(rules_say(&t, Method::DELETE, "/rest/api/content", &[]), "rule_mismatch");
        let gzip = [("content-encoding", "gzip")];
        assert_eq!(
            rules_say(&t, Method::POST, "/rest/api/content", &gzip),
            "rule_mismatch",
            "never read"
        );
        let identity = [("content-encoding", "identity")];
        assert_eq!(
            rules_say(&t, Method::POST, "/rest/api/content", &identity),
            "needs body"
        );
        let mut broken = token(Some("alice"), None, "");
        broken.rules = Err("stored rules no longer compile".into());
        assert_eq!(
            rules_say(&broken, Method::GET, "/rest/api/space", &[]),
            "rule_mismatch",
            "fail closed"
        );
    }

    #[test]
    fn an_unbound_token_cannot_act_as_a_name_that_would_confuse_the_identity_header() {
        let t = token(None, None, "");
        for name in ["alice, admin", " admin", "admin ", "ad\tmin", "tgw_x"] {
            assert_eq!(
                reason(check_token(&t, &cx(Scheme::Basic, Some(name)))),
                "user_mismatch",
                "{name:?}"
            );
        }
    }

    #[test]
    fn checks_run_in_the_normative_order() {
        // Expired, out of scope and wrong IP at once: the scheme is checked first.
        let t = token(Some("alice"), Some(500), "192.168.0.0/16");
        let mut c = cx(Scheme::Bearer, None);
        c.path = "/admin";
        c.token_auth = TokenAuth::Basic;
        assert_eq!(reason(check_token(&t, &c)), "scheme_not_allowed");
        c.token_auth = TokenAuth::Both;
        assert_eq!(reason(check_token(&t, &c)), "token_expired");
        c.now = 100;
        assert_eq!(reason(check_token(&t, &c)), "out_of_scope");
        c.path = "/rest/api/x";
        assert_eq!(reason(check_token(&t, &c)), "ip_not_allowed");
        c.client_ip = "192.168.4.4".parse().unwrap();
        assert!(check_token(&t, &c).is_ok());
    }

    #[test]
    fn expiry_is_inclusive_and_scope_is_a_prefix() {
        let t = token(Some("alice"), Some(1000), "");
        assert_eq!(reason(check_token(&t, &cx(Scheme::Bearer, None))), "token_expired");
        let t = token(Some("alice"), None, "");
        let mut c = cx(Scheme::Bearer, None);
        c.scope = Scope::Extender;
        assert_eq!(reason(check_token(&t, &c)), "out_of_scope");
        c.path = "/rest/extender/1.0/x";
        assert!(check_token(&t, &c).is_ok());
        c.scope = Scope::Rest;
        c.path = "/rest";
        assert_eq!(reason(check_token(&t, &c)), "out_of_scope");
    }

    #[test]
    fn a_stored_ip_list_that_no_longer_parses_refuses_every_ip() {
        let t = token(Some("alice"), None, "10.0.0.0/99");
        assert_eq!(reason(check_token(&t, &cx(Scheme::Bearer, None))), "ip_not_allowed");
    }
}
