//! The management API's one error type and its one mapping to responses.
//!
//! The body is Extender's error shape (SPEC §5), `{"status":"error",
//! "message":..}` with `field`, `line` and `column` where they apply, plus the
//! gateway's own fields of SPEC §10 (`statusCode`, `reason`, `source`) and the
//! `X-Tokengate-Reason` header, so scripts written for either shape work.
//! Status codes come from [`Reason::status`], the gateway's single table.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};

use crate::config::TokenAuth;
use crate::error::{GatewayError, Reason};
use crate::tokens::TokenError;

/// Why the management API refused a request. Each variant names its status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// 400 `bad_request`: input that cannot be accepted; `field` names the
    /// JSON field or query parameter, `line`/`column` locate a rule error.
    #[error("{message}")]
    Invalid {
        field: Option<&'static str>,
        message: String,
        line: Option<usize>,
        column: Option<usize>,
    },
    /// 400 `ambiguous_json`: the body has a duplicate key at some depth.
    #[error("{0}")]
    AmbiguousJson(String),
    /// 400 `bad_credentials`: a malformed `Authorization`, or more than one.
    #[error("{0}")]
    BadCredentials(String),
    /// 401 `credentials_required`: no `Authorization` at all.
    #[error("credentials are required: a token bound to an admin, or an admin's user name and password")]
    CredentialsRequired,
    /// 401 `invalid_token`: a `tgw_` secret that is not a valid token, a
    /// Bearer or other credential that is not a token, or a password that
    /// Confluence does not accept. Says no more than that.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// The status of the wrapped reason: the caller's token failed one of the
    /// pipeline's checks (401 or 403, 400/413 while its rules read the body),
    /// or Confluence could not be asked about a password (502, 504).
    #[error("{}", .0.message)]
    Refused(GatewayError),
    /// 403 `forbidden`: authenticated, but not an admin.
    #[error("{0}")]
    NotAdmin(String),
    /// 404 `not_found`: no such endpoint, or no token with that id.
    #[error("{0}")]
    NotFound(String),
    /// 405 `method_not_allowed`; `allow` is the one method the path answers.
    #[error("{path} answers {allow} only")]
    MethodNotAllowed { path: String, allow: &'static str },
    /// 409 `conflict` (field `token`): the custom value equals an existing token.
    #[error("a token with this value already exists")]
    Duplicate,
    /// 413 `body_too_large`: a request body over [`super::MAX_BODY`] bytes.
    #[error("the request body is larger than {} bytes", super::MAX_BODY)]
    BodyTooLarge,
    /// 500 `internal_error`: the cause is logged where it happened, never sent.
    #[error("internal gateway error")]
    Internal,
}

impl AdminError {
    /// A 400 naming the field at fault.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        AdminError::Invalid {
            field: Some(field),
            message: message.into(),
            line: None,
            column: None,
        }
    }

    /// A 400 about the request as a whole (its body), not one field.
    pub fn bad_request(message: impl Into<String>) -> Self {
        AdminError::Invalid {
            field: None,
            message: message.into(),
            line: None,
            column: None,
        }
    }

    /// A 500 whose cause is logged here and not shown.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "management API: internal error");
        AdminError::Internal
    }

    pub fn reason(&self) -> Reason {
        match self {
            AdminError::Invalid { .. } => Reason::BadRequest,
            AdminError::AmbiguousJson(_) => Reason::AmbiguousJson,
            AdminError::BadCredentials(_) => Reason::BadCredentials,
            AdminError::CredentialsRequired => Reason::CredentialsRequired,
            AdminError::InvalidCredentials => Reason::InvalidToken,
            AdminError::Refused(error) => error.reason,
            AdminError::NotAdmin(_) => Reason::Forbidden,
            AdminError::NotFound(_) => Reason::NotFound,
            AdminError::MethodNotAllowed { .. } => Reason::MethodNotAllowed,
            AdminError::Duplicate => Reason::Conflict,
            AdminError::BodyTooLarge => Reason::BodyTooLarge,
            AdminError::Internal => Reason::Internal,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.reason().status()
    }

    /// The JSON body, `X-Tokengate-Reason`, `WWW-Authenticate` on a 401
    /// (Basic always, since admins may use their password here; Bearer when
    /// `token_auth` accepts it) and `Allow` on a 405.
    pub fn into_response(self, token_auth: TokenAuth) -> Response<Full<Bytes>> {
        let (status, reason) = (self.status(), self.reason());
        let mut body = serde_json::json!({
            "status": "error",
            "statusCode": status.as_u16(),
            "message": self.to_string(),
            "reason": reason.code(),
            "source": "tokengate",
        });
        let (field, line, column) = match &self {
            AdminError::Invalid {
                field, line, column, ..
            } => (*field, *line, *column),
            AdminError::Duplicate => (Some("token"), None, None),
            _ => (None, None, None),
        };
        let extra = [
            ("field", field.map(serde_json::Value::from)),
            ("line", line.map(serde_json::Value::from)),
            ("column", column.map(serde_json::Value::from)),
        ];
        for (name, value) in extra {
            if let Some(value) = value {
                body[name] = value;
            }
        }
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json;charset=UTF-8"));
        headers.insert("x-tokengate-reason", HeaderValue::from_static(reason.code()));
        if status == StatusCode::UNAUTHORIZED {
            headers.append(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"tokengate\""));
            if token_auth.allows_bearer() {
                headers.append(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"tokengate\""));
            }
        }
        if let AdminError::MethodNotAllowed { allow, .. } = &self {
            headers.insert(ALLOW, HeaderValue::from_static(allow));
        }
        if let AdminError::Refused(GatewayError {
            retry_after: Some(seconds),
            ..
        }) = &self
        {
            headers.insert(hyper::header::RETRY_AFTER, HeaderValue::from(*seconds));
        }
        response
    }
}

impl From<TokenError> for AdminError {
    fn from(error: TokenError) -> Self {
        match error {
            TokenError::Invalid {
                field,
                message,
                line,
                column,
            } => AdminError::Invalid {
                field: Some(field),
                message,
                line,
                column,
            },
            TokenError::Duplicate => AdminError::Duplicate,
            TokenError::NotFound(id) => AdminError::NotFound(format!("no token with id {id}")),
            TokenError::Store(e) => AdminError::internal(&e),
            TokenError::Verify(e) => AdminError::internal(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn every_variant() -> Vec<(AdminError, u16, &'static str)> {
        vec![
            (AdminError::invalid("label", "label is required"), 400, "bad_request"),
            (AdminError::AmbiguousJson("dup".into()), 400, "ambiguous_json"),
            (AdminError::BadCredentials("bad".into()), 400, "bad_credentials"),
            (AdminError::CredentialsRequired, 401, "credentials_required"),
            (AdminError::InvalidCredentials, 401, "invalid_token"),
            (
                AdminError::Refused(GatewayError::new(Reason::RuleMismatch, "no rule")),
                403,
                "rule_mismatch",
            ),
            (
                AdminError::Refused(GatewayError::new(Reason::TokenExpired, "expired")),
                401,
                "token_expired",
            ),
            (
                AdminError::Refused(GatewayError::new(Reason::UpstreamUnavailable, "down")),
                502,
                "upstream_unavailable",
            ),
            (AdminError::NotAdmin("no".into()), 403, "forbidden"),
            (AdminError::NotFound("none".into()), 404, "not_found"),
            (
                AdminError::MethodNotAllowed {
                    path: "/get".into(),
                    allow: "GET",
                },
                405,
                "method_not_allowed",
            ),
            (AdminError::Duplicate, 409, "conflict"),
            (AdminError::BodyTooLarge, 413, "body_too_large"),
            (AdminError::Internal, 500, "internal_error"),
        ]
    }

    #[test]
    fn every_variant_has_its_status_and_reason() {
        for (error, status, code) in every_variant() {
            assert_eq!(error.status().as_u16(), status, "{error:?}");
            assert_eq!(error.reason().code(), code, "{error:?}");
        }
    }

    async fn body_of(response: Response<Full<Bytes>>) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn body_is_extenders_error_shape_with_the_gateways_fields() {
        let error = AdminError::Invalid {
            field: Some("limitTo"),
            message: "line 2, column 5: bad".into(),
            line: Some(2),
            column: Some(5),
        };
        let response = error.into_response(TokenAuth::Basic);
        assert_eq!(response.status(), 400);
        assert_eq!(response.headers()["x-tokengate-reason"], "bad_request");
        assert_eq!(
            body_of(response).await,
            serde_json::json!({"status":"error","statusCode":400,"message":"line 2, column 5: bad",
                "reason":"bad_request","source":"tokengate","field":"limitTo","line":2,"column":5})
        );
        let body = body_of(AdminError::Duplicate.into_response(TokenAuth::Basic)).await;
        assert_eq!((body["field"].as_str(), body["line"].as_u64()), (Some("token"), None));
        let body = body_of(AdminError::CredentialsRequired.into_response(TokenAuth::Basic)).await;
        assert!(body.get("field").is_none());
    }

    #[test]
    fn headers_say_how_to_authenticate_and_which_method_is_allowed() {
        let schemes = |auth| {
            let response = AdminError::InvalidCredentials.into_response(auth);
            response.headers().get_all(WWW_AUTHENTICATE).iter().count()
        };
        assert_eq!(schemes(TokenAuth::Basic), 1);
        assert_eq!(
            schemes(TokenAuth::Bearer),
            2,
            "passwords come as Basic even when tokens may not"
        );
        let response = AdminError::MethodNotAllowed {
            path: "/set".into(),
            allow: "POST",
        }
        .into_response(TokenAuth::Basic);
        assert_eq!(response.headers()[ALLOW], "POST");
        assert!(response.headers().get(WWW_AUTHENTICATE).is_none());
    }

    #[test]
    fn token_errors_keep_their_field_and_hide_internals() {
        let invalid = TokenError::Invalid {
            field: "limitTo",
            message: "bad rule".into(),
            line: Some(1),
            column: Some(3),
        };
        assert_eq!(
            AdminError::from(invalid),
            AdminError::Invalid {
                field: Some("limitTo"),
                message: "bad rule".into(),
                line: Some(1),
                column: Some(3)
            }
        );
        assert_eq!(AdminError::from(TokenError::Duplicate), AdminError::Duplicate);
        assert_eq!(AdminError::from(TokenError::NotFound("x".into())).status(), 404);
        let store = TokenError::Store(crate::store::StoreError::Url("secret-host".into()));
        let error = AdminError::from(store);
        assert_eq!(error, AdminError::Internal);
        assert!(!error.to_string().contains("secret-host"));
    }
}
