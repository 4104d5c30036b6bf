//! Every response the gateway makes itself, built in one place (SPEC §10).
//!
//! A refusal is a [`GatewayError`]: a [`Reason`] (which fixes the status code
//! and the `reason` field), a message for the caller, and the few details
//! some refusals carry (`Retry-After`, `Allow`, the field and position of a
//! bad input). [`GatewayError::into_response`] turns it into JSON in the
//! shape Confluence uses, for the [`Audience`] it is addressed to; the
//! gateway's successful JSON answers come from [`json_response`]. Messages
//! never contain a token value.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{HeaderMap, Response, StatusCode};
use serde_json::{Value, json};

use crate::config::TokenAuth;

/// Declares [`Reason`] from one row per reason: its variant, the status it
/// answers with, and its code, so that each is written once.
macro_rules! reasons {
    ($($(#[doc = $doc:literal])* $name:ident = $status:ident, $code:literal;)*) => {
        /// Why the gateway answered a request itself. The variant fixes the status code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Reason {
            $($(#[doc = $doc])* $name,)*
        }

        impl Reason {
            /// Every reason, in declaration order: `reason as usize` indexes it.
            pub const ALL: [Reason; [$($code),*].len()] = [$(Reason::$name),*];

            /// The reason code, as in `X-Tokengate-Reason` and the body's `reason`.
            pub fn code(self) -> &'static str {
                match self {
                    $(Reason::$name => $code,)*
                }
            }

            pub fn status(self) -> StatusCode {
                match self {
                    $(Reason::$name => StatusCode::$status,)*
                }
            }
        }
    };
}

reasons! {
    /// The path cannot be canonicalised safely (SPEC §2.2).
    BadPath = BAD_REQUEST, "bad_path";
    /// Malformed `Authorization`, more than one, or a token where none may be.
    BadCredentials = BAD_REQUEST, "bad_credentials";
    /// A JSON body with a duplicate key, which a JSON rule must read.
    AmbiguousJson = BAD_REQUEST, "ambiguous_json";
    /// A request the gateway cannot accept (a management input, a broken body, two `Host`s).
    BadRequest = BAD_REQUEST, "bad_request";
    /// A `tgw_` secret that is not a valid token, or a non-token credential with passthrough off.
    InvalidToken = UNAUTHORIZED, "invalid_token";
    /// No credentials and `anonymous = "deny"`.
    CredentialsRequired = UNAUTHORIZED, "credentials_required";
    /// The token came in a scheme `token_auth` does not accept.
    SchemeNotAllowed = UNAUTHORIZED, "scheme_not_allowed";
    /// Basic user name differs from the bound user, or is empty for an unbound token.
    UserMismatch = UNAUTHORIZED, "user_mismatch";
    /// An unbound token sent as Bearer (it has no user to act as).
    UnboundBearer = UNAUTHORIZED, "unbound_bearer";
    /// The token's `valid_until` has passed.
    TokenExpired = UNAUTHORIZED, "token_expired";
    /// With `forward_as = "pat"`, Confluence no longer accepts the
    /// token's personal access token, or it acts as someone else, or there is none.
    UpstreamCredentialRejected = UNAUTHORIZED, "upstream_credential_rejected";
    /// The path is outside the token scope.
    OutOfScope = FORBIDDEN, "out_of_scope";
    /// The client IP is outside the token's allowlist.
    IpNotAllowed = FORBIDDEN, "ip_not_allowed";
    /// No restriction rule allows the request.
    RuleMismatch = FORBIDDEN, "rule_mismatch";
    /// The request touches a space the token is not confined to (SPEC §17).
    SpaceNotAllowed = FORBIDDEN, "space_not_allowed";
    /// The gateway cannot tell which spaces the request touches (SPEC §17).
    SpaceUnknown = FORBIDDEN, "space_unknown";
    /// A change in a space the token may only read (SPEC §17).
    SpaceReadOnly = FORBIDDEN, "space_read_only";
    /// A `cql` the gateway cannot confine to the token's spaces (SPEC §17).
    BadCql = BAD_REQUEST, "bad_cql";
    /// A caller who may not use the management API, or a cross-site call to it.
    Forbidden = FORBIDDEN, "forbidden";
    /// A gateway route that does not exist.
    NotFound = NOT_FOUND, "not_found";
    /// A gateway route called with the wrong method.
    MethodNotAllowed = METHOD_NOT_ALLOWED, "method_not_allowed";
    /// A management request that conflicts with stored state.
    Conflict = CONFLICT, "conflict";
    /// A body the gateway must read is larger than it reads.
    BodyTooLarge = PAYLOAD_TOO_LARGE, "body_too_large";
    /// Too many failed attempts (tokens or passwords) from this client IP.
    TooManyFailures = TOO_MANY_REQUESTS, "too_many_failures";
    /// The token's rate limit is used up (SPEC §16).
    RateLimited = TOO_MANY_REQUESTS, "rate_limited";
    /// An internal failure; the request was not forwarded (fail closed).
    Internal = INTERNAL_SERVER_ERROR, "internal_error";
    /// Confluence could not be reached.
    UpstreamUnavailable = BAD_GATEWAY, "upstream_unavailable";
    /// With `forward_as = "header"`, Confluence served a token request
    /// as someone else: it does not honour the identity header (SPEC §19).
    UpstreamIdentityIgnored = BAD_GATEWAY, "upstream_identity_ignored";
    /// The gateway cannot take the request (too many connections).
    Unavailable = SERVICE_UNAVAILABLE, "unavailable";
    /// Confluence did not answer in `upstream_timeout_s`.
    UpstreamTimeout = GATEWAY_TIMEOUT, "upstream_timeout";
}

impl Reason {
    /// Whether this is a failed attempt to authenticate (a token or a
    /// password), counted towards `failed_auth_per_minute` (SPEC §12, §14).
    /// A valid token whose personal access token Confluence refuses is not
    /// a guess: it does not count.
    pub fn is_failed_attempt(self) -> bool {
        self.status() == StatusCode::UNAUTHORIZED
            && !matches!(self, Reason::CredentialsRequired | Reason::UpstreamCredentialRejected)
    }
}

/// A response the gateway makes itself instead of forwarding or answering.
/// Small on purpose (it travels in every `Result` of the request path): the
/// rare details live behind one box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub reason: Reason,
    pub message: String,
    details: Option<Box<Details>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Details {
    /// Seconds for `Retry-After` (429).
    retry_after: Option<u64>,
    /// The methods for `Allow` (405).
    allow: Option<&'static str>,
    /// The input field at fault (management API 400s and 409s).
    field: Option<&'static str>,
    /// Line and column of a rule error.
    position: Option<(usize, usize)>,
    /// The space a space refusal concerns (SPEC §17), for the audit log.
    space: Option<String>,
    /// Headers the response carries besides (a limited token's rate-limit headers).
    headers: HeaderMap,
}

impl GatewayError {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        GatewayError {
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// A 400 naming the input field at fault.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        GatewayError::new(Reason::BadRequest, message).in_field(field)
    }

    /// A 500 whose cause is logged here and never shown.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error; request refused");
        GatewayError::new(Reason::Internal, "internal gateway error")
    }

    fn details_mut(&mut self) -> &mut Details {
        self.details.get_or_insert_with(Box::default)
    }

    /// Says when to retry (`Retry-After`, in seconds).
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.details_mut().retry_after = Some(seconds);
        self
    }

    /// Names the methods the route answers (`Allow`).
    pub fn allowing(mut self, methods: &'static str) -> Self {
        self.details_mut().allow = Some(methods);
        self
    }

    /// Names the input field at fault (`field` in the body).
    pub fn in_field(mut self, field: &'static str) -> Self {
        self.details_mut().field = Some(field);
        self
    }

    /// Names the space a refusal concerns (kept in its audit entry).
    pub fn in_space(mut self, key: &str) -> Self {
        self.details_mut().space = Some(key.to_owned());
        self
    }

    /// The space a refusal concerns, if one.
    pub fn space(&self) -> Option<&str> {
        self.details.as_ref()?.space.as_deref()
    }

    /// Locates a rule error (`line` and `column` in the body).
    pub fn at(mut self, line: usize, column: usize) -> Self {
        self.details_mut().position = Some((line, column));
        self
    }

    /// Adds `headers` to the response (replacing any of the same name).
    pub fn with_headers(mut self, headers: HeaderMap) -> Self {
        self.details_mut().headers.extend(headers);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.reason.status()
    }

    pub fn field(&self) -> Option<&'static str> {
        self.details.as_ref()?.field
    }

    pub fn retry_after_seconds(&self) -> Option<u64> {
        self.details.as_ref()?.retry_after
    }

    /// The JSON response of SPEC §10 with `X-Tokengate-Reason`; for the
    /// management API also Extender's fields (SPEC §5). A 401 carries
    /// `WWW-Authenticate` for what the audience may authenticate with.
    pub fn into_response(self, audience: Audience) -> Response<Full<Bytes>> {
        let status = self.status();
        let details = self.details.unwrap_or_default();
        let mut body = json!({
            "statusCode": status.as_u16(),
            "message": self.message,
            "reason": self.reason.code(),
            "source": "tokengate",
        });
        if let Audience::Management(_) | Audience::Page = audience {
            body["status"] = Value::from("error");
            if let Some(field) = details.field {
                body["field"] = Value::from(field);
            }
            if let Some((line, column)) = details.position {
                body["line"] = Value::from(line);
                body["column"] = Value::from(column);
            }
        }
        let mut response = json_response(status, body.to_string());
        let headers = response.headers_mut();
        headers.insert(X_TOKENGATE_REASON.clone(), HeaderValue::from_static(self.reason.code()));
        if status == StatusCode::UNAUTHORIZED {
            for challenge in audience.challenges() {
                headers.append(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
            }
        }
        if let Some(seconds) = details.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(methods) = details.allow {
            headers.insert(ALLOW, HeaderValue::from_static(methods));
        }
        headers.extend(details.headers);
        response
    }
}

/// The header that carries the reason code of every refusal.
pub static X_TOKENGATE_REASON: HeaderName = HeaderName::from_static("x-tokengate-reason");

/// Whom a refusal is addressed to, which fixes its shape and its 401 challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// A request on its way to Confluence, or a probe: SPEC §10's shape, and
    /// a challenge for each scheme tokens may come in.
    Proxy(TokenAuth),
    /// The management API: Extender's error shape too (`"status":"error"`,
    /// `field`, `line`, `column`), and Basic always, since admins and users
    /// may use their password there.
    Management(TokenAuth),
    /// The web page and its calls to the management API: the management
    /// API's shape, and no challenge (the browser must not prompt for a
    /// password: the page asks for it itself).
    Page,
}

impl Audience {
    fn challenges(self) -> impl Iterator<Item = &'static str> {
        const BASIC: &str = "Basic realm=\"tokengate\"";
        const BEARER: &str = "Bearer realm=\"tokengate\"";
        let (basic, bearer) = match self {
            Audience::Proxy(auth) => (auth.allows_basic(), auth.allows_bearer()),
            Audience::Management(auth) => (true, auth.allows_bearer()),
            Audience::Page => (false, false),
        };
        [basic.then_some(BASIC), bearer.then_some(BEARER)].into_iter().flatten()
    }
}

/// The headers every response the gateway makes itself carries (SPEC §15):
/// a strict Content Security Policy (nothing from elsewhere, no inline
/// script), no framing, no referrer, no type sniffing, and no caching (a
/// token value or a token list must never be kept by a cache).
pub fn add_security_headers(headers: &mut hyper::HeaderMap) {
    const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
                       frame-ancestors 'none'";
    headers.insert(hyper::header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(hyper::header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(hyper::header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(
        hyper::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// A JSON response the gateway makes itself.
pub fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json;charset=UTF-8"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn every_reason_has_its_status_and_code() {
        let table = [
            (Reason::BadPath, 400, "bad_path"),
            (Reason::BadCredentials, 400, "bad_credentials"),
            (Reason::AmbiguousJson, 400, "ambiguous_json"),
            (Reason::BadRequest, 400, "bad_request"),
            (Reason::InvalidToken, 401, "invalid_token"),
            (Reason::CredentialsRequired, 401, "credentials_required"),
            (Reason::SchemeNotAllowed, 401, "scheme_not_allowed"),
            (Reason::UserMismatch, 401, "user_mismatch"),
            (Reason::UnboundBearer, 401, "unbound_bearer"),
            (Reason::TokenExpired, 401, "token_expired"),
            (Reason::UpstreamCredentialRejected, 401, "upstream_credential_rejected"),
            (Reason::OutOfScope, 403, "out_of_scope"),
            (Reason::IpNotAllowed, 403, "ip_not_allowed"),
            (Reason::RuleMismatch, 403, "rule_mismatch"),
            (Reason::SpaceNotAllowed, 403, "space_not_allowed"),
            (Reason::SpaceUnknown, 403, "space_unknown"),
            (Reason::SpaceReadOnly, 403, "space_read_only"),
            (Reason::BadCql, 400, "bad_cql"),
            (Reason::Forbidden, 403, "forbidden"),
            (Reason::NotFound, 404, "not_found"),
            (Reason::MethodNotAllowed, 405, "method_not_allowed"),
            (Reason::Conflict, 409, "conflict"),
            (Reason::BodyTooLarge, 413, "body_too_large"),
            (Reason::TooManyFailures, 429, "too_many_failures"),
            (Reason::RateLimited, 429, "rate_limited"),
            (Reason::Internal, 500, "internal_error"),
            (Reason::UpstreamUnavailable, 502, "upstream_unavailable"),
            (Reason::UpstreamIdentityIgnored, 502, "upstream_identity_ignored"),
            (Reason::Unavailable, 503, "unavailable"),
            (Reason::UpstreamTimeout, 504, "upstream_timeout"),
        ];
        for (reason, status, code) in table {
            assert_eq!(reason.status().as_u16(), status, "{reason:?}");
            assert_eq!(reason.code(), code);
        }
        assert_eq!(table.len(), Reason::ALL.len());
        for (i, reason) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, i, "{reason:?}");
        }
    }

    /// The README's table of refusals names every reason with its status,
    /// and no other: what scripts rely on stays written down.
    #[test]
    fn the_readme_lists_every_reason_with_its_status() {
        let readme = include_str!("../README.md");
        let listed: Vec<(u16, &str)> = readme
            .lines()
            .filter_map(|line| {
                let mut cells = line.strip_prefix("| ")?.split(" | ");
                let status = cells.next()?.parse().ok()?;
                let code = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
                Some((status, code))
            })
            .collect();
        let mut expected: Vec<(u16, &str)> = Reason::ALL.iter().map(|r| (r.status().as_u16(), r.code())).collect();
        let mut listed_sorted = listed.clone();
        listed_sorted.sort_unstable();
        expected.sort_unstable();
        assert_eq!(listed_sorted, expected, "README.md's table of statuses and reasons");
    }

    #[test]
    fn failed_attempts_are_the_401s_that_presented_something() {
        let failed: Vec<_> = Reason::ALL.into_iter().filter(|r| r.is_failed_attempt()).collect();
        assert_eq!(
            failed,
            [
                Reason::InvalidToken,
                Reason::SchemeNotAllowed,
                Reason::UserMismatch,
                Reason::UnboundBearer,
                Reason::TokenExpired
            ]
        );
    }

    async fn body_of(response: Response<Full<Bytes>>) -> Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn a_proxy_refusal_has_the_spec_shape() {
        let err = GatewayError::new(
            Reason::RuleMismatch,
            "token 'ci-bot' may not POST /rest/api/content: no rule matches",
        )
        .in_field("ignored outside the management API");
        let response = err.into_response(Audience::Proxy(TokenAuth::Basic));
        assert_eq!(response.status(), 403);
        assert_eq!(response.headers()["x-tokengate-reason"], "rule_mismatch");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json;charset=UTF-8");
        assert!(response.headers().get(WWW_AUTHENTICATE).is_none());
        assert_eq!(
            body_of(response).await,
            json!({"statusCode":403,"message":"token 'ci-bot' may not POST /rest/api/content: no rule matches","reason":"rule_mismatch","source":"tokengate"})
        );
    }

    #[tokio::test]
    async fn a_management_refusal_has_extenders_shape_with_the_gateways_fields() {
        let error = GatewayError::invalid("limitTo", "line 2, column 5: bad").at(2, 5);
        let response = error.into_response(Audience::Management(TokenAuth::Basic));
        assert_eq!(response.status(), 400);
        assert_eq!(response.headers()["x-tokengate-reason"], "bad_request");
        assert_eq!(
            body_of(response).await,
            json!({"status":"error","statusCode":400,"message":"line 2, column 5: bad",
                "reason":"bad_request","source":"tokengate","field":"limitTo","line":2,"column":5})
        );
        let plain = GatewayError::new(Reason::CredentialsRequired, "credentials are required");
        let body = body_of(plain.into_response(Audience::Management(TokenAuth::Basic))).await;
        assert!(body.get("field").is_none() && body.get("line").is_none(), "{body}");
    }

    #[test]
    fn unauthorized_names_what_the_audience_may_authenticate_with() {
        let schemes = |audience| {
            GatewayError::new(Reason::InvalidToken, "invalid credentials")
                .into_response(audience)
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            schemes(Audience::Proxy(TokenAuth::Basic)),
            ["Basic realm=\"tokengate\""]
        );
        assert_eq!(
            schemes(Audience::Proxy(TokenAuth::Bearer)),
            ["Bearer realm=\"tokengate\""]
        );
        assert_eq!(schemes(Audience::Proxy(TokenAuth::Both)).len(), 2);
        assert_eq!(
            schemes(Audience::Management(TokenAuth::Bearer)),
            ["Basic realm=\"tokengate\"", "Bearer realm=\"tokengate\""],
            "passwords come as Basic even when tokens may not"
        );
        let forbidden = GatewayError::new(Reason::Forbidden, "no").into_response(Audience::Proxy(TokenAuth::Both));
        assert!(forbidden.headers().get(WWW_AUTHENTICATE).is_none());
    }

    #[test]
    fn retry_after_and_allow_are_headers() {
        let throttled = GatewayError::new(Reason::TooManyFailures, "slow down").retry_after(42);
        assert_eq!(throttled.retry_after_seconds(), Some(42));
        let response = throttled.into_response(Audience::Proxy(TokenAuth::Basic));
        assert_eq!(response.headers()[RETRY_AFTER], "42");
        let wrong_method = GatewayError::new(Reason::MethodNotAllowed, "no").allowing("GET, HEAD");
        let response = wrong_method.into_response(Audience::Management(TokenAuth::Basic));
        assert_eq!(response.headers()[ALLOW], "GET, HEAD");
    }

    #[test]
    fn the_common_error_stays_small() {
        assert!(std::mem::size_of::<GatewayError>() <= 40);
    }
}
