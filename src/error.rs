//! The one mapping from gateway failures to HTTP responses (SPEC §10).
//!
//! Every response the gateway makes itself is a [`GatewayError`]: a [`Reason`]
//! (which fixes the status code and the `reason` field) and a message for the
//! token's holder. Messages never contain a token value.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};

use crate::config::TokenAuth;

/// Why the gateway answered a request itself. The variant fixes the status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// 400: the path cannot be canonicalised safely (SPEC §2.2).
    BadPath,
    /// 400: malformed `Authorization`, or more than one.
    BadCredentials,
    /// 400: a JSON body with a duplicate key, which a JSON rule must read.
    AmbiguousJson,
    /// 400: a request to the gateway's own API that it cannot accept.
    BadRequest,
    /// 401: a `tgw_` secret that is not a valid token, or a non-token credential with passthrough off.
    InvalidToken,
    /// 401: no credentials and `anonymous = "deny"`.
    CredentialsRequired,
    /// 401: the token came in a scheme `token_auth` does not accept.
    SchemeNotAllowed,
    /// 401: Basic user name differs from the bound user, or is empty for an unbound token.
    UserMismatch,
    /// 401: an unbound token sent as Bearer (it has no user to act as).
    UnboundBearer,
    /// 401: the token's `valid_until` has passed.
    TokenExpired,
    /// 403: the path is outside the token scope.
    OutOfScope,
    /// 403: the client IP is outside the token's allowlist.
    IpNotAllowed,
    /// 403: no restriction rule allows the request.
    RuleMismatch,
    /// 403: an authenticated caller who may not use the management API.
    Forbidden,
    /// 404: a gateway route that does not exist.
    NotFound,
    /// 405: a gateway route called with the wrong method.
    MethodNotAllowed,
    /// 409: a management request that conflicts with stored state.
    Conflict,
    /// 413: a body a JSON rule must read is larger than `max_json_body`.
    BodyTooLarge,
    /// 429: too many failed token attempts from this client IP.
    TooManyFailures,
    /// 500: an internal failure; the request was not forwarded (fail closed).
    Internal,
    /// 502: Confluence could not be reached.
    UpstreamUnavailable,
    /// 503: the gateway is not ready (store unreachable).
    Unavailable,
    /// 504: Confluence did not answer in `upstream_timeout_s`.
    UpstreamTimeout,
}

impl Reason {
    pub const ALL: [Reason; 23] = [
        Reason::BadPath,
        Reason::BadCredentials,
        Reason::AmbiguousJson,
        Reason::BadRequest,
        Reason::InvalidToken,
        Reason::CredentialsRequired,
        Reason::SchemeNotAllowed,
        Reason::UserMismatch,
        Reason::UnboundBearer,
        Reason::TokenExpired,
        Reason::OutOfScope,
        Reason::IpNotAllowed,
        Reason::RuleMismatch,
        Reason::Forbidden,
        Reason::NotFound,
        Reason::MethodNotAllowed,
        Reason::Conflict,
        Reason::BodyTooLarge,
        Reason::TooManyFailures,
        Reason::Internal,
        Reason::UpstreamUnavailable,
        Reason::Unavailable,
        Reason::UpstreamTimeout,
    ];

    /// The reason a code names (as the gateway's own responses carry it).
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }

    /// The reason code, as in `X-Tokengate-Reason` and the body's `reason`.
    pub fn code(self) -> &'static str {
        match self {
            Reason::BadPath => "bad_path",
            Reason::BadCredentials => "bad_credentials",
            Reason::AmbiguousJson => "ambiguous_json",
            Reason::BadRequest => "bad_request",
            Reason::InvalidToken => "invalid_token",
            Reason::CredentialsRequired => "credentials_required",
            Reason::SchemeNotAllowed => "scheme_not_allowed",
            Reason::UserMismatch => "user_mismatch",
            Reason::UnboundBearer => "unbound_bearer",
            Reason::TokenExpired => "token_expired",
            Reason::OutOfScope => "out_of_scope",
            Reason::IpNotAllowed => "ip_not_allowed",
            Reason::RuleMismatch => "rule_mismatch",
            Reason::Forbidden => "forbidden",
            Reason::NotFound => "not_found",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::Conflict => "conflict",
            Reason::BodyTooLarge => "body_too_large",
            Reason::TooManyFailures => "too_many_failures",
            Reason::Internal => "internal_error",
            Reason::UpstreamUnavailable => "upstream_unavailable",
            Reason::Unavailable => "unavailable",
            Reason::UpstreamTimeout => "upstream_timeout",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Reason::BadPath | Reason::BadCredentials | Reason::AmbiguousJson | Reason::BadRequest => {
                StatusCode::BAD_REQUEST
            }
            Reason::InvalidToken
            | Reason::CredentialsRequired
            | Reason::SchemeNotAllowed
            | Reason::UserMismatch
            | Reason::UnboundBearer
            | Reason::TokenExpired => StatusCode::UNAUTHORIZED,
            Reason::OutOfScope | Reason::IpNotAllowed | Reason::RuleMismatch | Reason::Forbidden => {
                StatusCode::FORBIDDEN
            }
            Reason::NotFound => StatusCode::NOT_FOUND,
            Reason::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Reason::Conflict => StatusCode::CONFLICT,
            Reason::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reason::TooManyFailures => StatusCode::TOO_MANY_REQUESTS,
            Reason::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Reason::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Reason::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Reason::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Whether this is a failed token attempt, counted for throttling (SPEC §12).
    pub fn is_failed_token_attempt(self) -> bool {
        self.status() == StatusCode::UNAUTHORIZED && self != Reason::CredentialsRequired
    }
}

/// A response the gateway makes itself instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub reason: Reason,
    pub message: String,
    /// Seconds for `Retry-After` (429 only).
    pub retry_after: Option<u64>,
}

impl GatewayError {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        GatewayError {
            reason,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A 500 whose cause is logged, not shown.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error; request refused");
        GatewayError::new(Reason::Internal, "internal gateway error")
    }

    /// The JSON response of SPEC §10, with `X-Tokengate-Reason`, and
    /// `WWW-Authenticate` for the accepted schemes on a 401.
    pub fn into_response(self, token_auth: TokenAuth) -> Response<Full<Bytes>> {
        let status = self.reason.status();
        let body = serde_json::json!({
            "statusCode": status.as_u16(),
            "message": self.message,
            "reason": self.reason.code(),
            "source": "tokengate",
        });
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json;charset=UTF-8"));
        headers.insert("x-tokengate-reason", HeaderValue::from_static(self.reason.code()));
        if status == StatusCode::UNAUTHORIZED {
            if token_auth.allows_basic() {
                headers.append(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"tokengate\""));
            }
            if token_auth.allows_bearer() {
                headers.append(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"tokengate\""));
            }
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn every_reason_has_its_status() {
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
            (Reason::OutOfScope, 403, "out_of_scope"),
            (Reason::IpNotAllowed, 403, "ip_not_allowed"),
            (Reason::RuleMismatch, 403, "rule_mismatch"),
            (Reason::Forbidden, 403, "forbidden"),
            (Reason::NotFound, 404, "not_found"),
            (Reason::MethodNotAllowed, 405, "method_not_allowed"),
            (Reason::Conflict, 409, "conflict"),
            (Reason::BodyTooLarge, 413, "body_too_large"),
            (Reason::TooManyFailures, 429, "too_many_failures"),
            (Reason::Internal, 500, "internal_error"),
            (Reason::UpstreamUnavailable, 502, "upstream_unavailable"),
            (Reason::Unavailable, 503, "unavailable"),
            (Reason::UpstreamTimeout, 504, "upstream_timeout"),
        ];
        for (reason, status, code) in table {
            assert_eq!(reason.status().as_u16(), status, "{reason:?}");
            assert_eq!(reason.code(), code);
            assert_eq!(Reason::from_code(code), Some(reason));
        }
        assert_eq!(table.len(), Reason::ALL.len());
        assert_eq!(Reason::from_code("nonsense"), None);
    }

    #[tokio::test]
    async fn response_shape_matches_spec() {
        let err = GatewayError::new(
            Reason::RuleMismatch,
            "token 'ci-bot' may not POST /rest/api/content: no rule matches",
        );
        let response = err.into_response(TokenAuth::Basic);
        assert_eq!(response.status(), 403);
        assert_eq!(response.headers()["x-tokengate-reason"], "rule_mismatch");
        assert!(response.headers().get(WWW_AUTHENTICATE).is_none());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"statusCode":403,"message":"token 'ci-bot' may not POST /rest/api/content: no rule matches","reason":"rule_mismatch","source":"tokengate"})
        );
    }

    #[test]
    fn unauthorized_names_the_accepted_schemes() {
        let schemes = |auth| {
            GatewayError::new(Reason::InvalidToken, "invalid credentials")
                .into_response(auth)
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(schemes(TokenAuth::Basic), ["Basic realm=\"tokengate\""]);
        assert_eq!(schemes(TokenAuth::Bearer), ["Bearer realm=\"tokengate\""]);
        assert_eq!(schemes(TokenAuth::Both).len(), 2);
    }

    #[test]
    fn too_many_failures_says_when_to_retry() {
        let mut err = GatewayError::new(Reason::TooManyFailures, "slow down");
        err.retry_after = Some(42);
        assert_eq!(err.into_response(TokenAuth::Basic).headers()[RETRY_AFTER], "42");
    }
}
