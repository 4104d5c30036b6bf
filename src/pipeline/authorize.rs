//! The token checks of SPEC §2.7, in their normative order, and the rule
//! check that may need the request body (SPEC §3.4).

use std::net::IpAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request};

use crate::auth::ActiveToken;
use crate::auth::credentials::Scheme;
use crate::clock::EpochMs;
use crate::config::{Scope, TokenAuth};
use crate::error::{GatewayError, Reason};
use crate::proxy::Body;
use crate::rules::{JsonBody, RequestHead, Verdict};

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
/// Returns the identity to forward as.
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
        (None, Some(user)) => user.to_owned(),
    };
    if token.is_expired(cx.now) {
        return deny(Reason::TokenExpired, format!("token '{label}' has expired"));
    }
    if !cx.path.starts_with(cx.scope.prefix()) {
        return deny(
            Reason::OutOfScope,
            format!("token '{label}' may only be used on {}*", cx.scope.prefix()),
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

/// The last check: the token's restriction rules. Reads (and buffers) the
/// body only when a JSON rule is the only way the request could be allowed;
/// otherwise the body keeps streaming.
pub async fn check_rules(
    token: &ActiveToken,
    req: Request<Incoming>,
    path: &str,
    max_json_body: usize,
) -> Result<Request<Body>, GatewayError> {
    let rules = token.rules.as_ref().map_err(|_| {
        GatewayError::new(
            Reason::RuleMismatch,
            format!(
                "token '{}' has restriction rules that no longer compile; ask an admin to replace it",
                token.label
            ),
        )
    })?;
    let head = RequestHead {
        method: req.method().as_str(),
        path,
        query: req.uri().query(),
    };
    let denied = |denied: crate::rules::Denied| {
        GatewayError::new(
            Reason::RuleMismatch,
            format!("token '{}' {}", token.label, denied.message()),
        )
    };
    match rules.check(&head) {
        Verdict::Permit(permit) => {
            tracing::debug!(token.id = %token.id, rule.line = ?permit.line(), "rules allow the request");
            return Ok(req.map(Body::Left));
        }
        Verdict::Denied(d) => return Err(denied(d)),
        Verdict::NeedsJsonBody => {}
    }
    let (parts, body) = req.into_parts();
    // Boxed: the reading future is large and only JSON rules need it, so it
    // should not make every request's future larger (see pipeline::handle).
    let bytes = Box::pin(read_limited(&parts, body, max_json_body)).await?;
    let content_type = parts.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let json =
        JsonBody::parse(content_type, &bytes).map_err(|e| GatewayError::new(Reason::AmbiguousJson, e.to_string()))?;
    let head = RequestHead {
        method: parts.method.as_str(),
        path,
        query: parts.uri.query(),
    };
    let permit = rules.check_with_body(&head, &json).map_err(denied)?;
    tracing::debug!(token.id = %token.id, rule.line = ?permit.line(), "rules allow the request and its JSON body");
    Ok(Request::from_parts(parts, Body::Right(Full::new(bytes))))
}

async fn read_limited(
    parts: &hyper::http::request::Parts,
    body: Incoming,
    limit: usize,
) -> Result<Bytes, GatewayError> {
    let too_large = || {
        GatewayError::new(
            Reason::BodyTooLarge,
            format!("the request body is larger than {limit} bytes, the most a JSON rule reads"),
        )
    };
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(GatewayError::new(
            Reason::BadRequest,
            format!("cannot read the request body: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TokenRecord;

    fn token(user: Option<&str>, valid_until: Option<EpochMs>, ip: &str) -> ActiveToken {
        ActiveToken::from_record(
            &TokenRecord {
                id: "id1".into(),
                label: "ci-bot".into(),
                user: user.map(Into::into),
                author: "admin".into(),
                limit_to: String::new(),
                ip: ip.into(),
                created_at: 0,
                valid_until,
                token_hash: String::new(),
                lookup: String::new(),
                counter: 0,
                last_used_at: None,
                last_ip: None,
            },
            Default::default(),
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
