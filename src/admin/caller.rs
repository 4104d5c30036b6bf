//! Who is calling the management API (SPEC §5, §14), established by the
//! gateway's one [`Authenticator`](crate::auth::Authenticator) either way:
//!
//! - a gateway token, checked exactly as a forwarded request is (its rules
//!   included), and **bound** to an admin: a token cannot manage tokens
//!   unless its user is an admin, and an unbound token's identity is only
//!   whatever user name was typed next to it;
//! - Basic user:password that Confluence accepts: an admin (in
//!   `admin_users`, ASCII case-insensitively), or, with `self_service`, any
//!   other user, who manages their own tokens.

use std::net::IpAddr;

use http_body_util::Either;
use hyper::header::AUTHORIZATION;
use hyper::{Method, Request};

use crate::app::App;
use crate::auth::credentials::{self, Credentials};
use crate::auth::{PresentedToken, Principal, RateState, ReportOnly, RuleCheck, Via};
use crate::body::{Forwarded, RequestBody};
use crate::error::{GatewayError, Reason};
use crate::target::Target;

/// Who may do what on the management API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Manages every token and the settings.
    Admin,
    /// Manages their own tokens (self-service, SPEC §14).
    User,
    /// May only try rules (`POST /check`); why nothing else.
    CheckOnly(String),
}

/// An authenticated caller of the management API.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub role: Role,
    /// A limited token's bucket after this call, for the response's headers.
    pub rate: Option<RateState>,
    /// Where the call came from: a guess it makes counts against this client.
    pub client_ip: IpAddr,
}

impl Caller {
    pub fn user(&self) -> &str {
        &self.principal.user
    }

    /// 403 unless the caller may manage tokens (every route but `/check`).
    pub fn may_manage(&self) -> Result<(), GatewayError> {
        match &self.role {
            Role::CheckOnly(why) => Err(GatewayError::new(Reason::Forbidden, why.clone())),
            Role::Admin | Role::User => Ok(()),
        }
    }

    /// Whether `user` is this caller (ASCII case-insensitively, as binding compares).
    pub fn is(&self, user: &str) -> bool {
        self.principal.user.eq_ignore_ascii_case(user)
    }
}

/// Establishes the caller behind a request, or refuses it: 400 for
/// malformed credentials, 401 for none or invalid ones, 403 for a token of a
/// non-admin or whose checks or rules refuse the call (and for every
/// non-admin with `self_service = false`), 429 for a client that failed too
/// often. Returns the request with a body that can still be read (the
/// token's JSON rules may have buffered it).
pub async fn authenticate<B: RequestBody>(
    app: &App,
    req: Request<B>,
    target: &Target,
    client_ip: IpAddr,
    rule_check: RuleCheck,
) -> Result<(Request<Forwarded<B>>, Caller), GatewayError> {
    let invalid = || GatewayError::new(Reason::InvalidToken, "invalid credentials");
    let Some(credentials) = credentials::from_headers(req.headers())
        .map_err(|e| GatewayError::new(Reason::BadCredentials, e.to_string()))?
    else {
        // No Authorization: the web page's session, if any.
        let changes_state = !matches!(*req.method(), Method::GET | Method::HEAD);
        let (principal, _) = app
            .auth
            .authenticate_session(req.headers(), changes_state, client_ip)
            .await?
            .ok_or_else(|| {
                GatewayError::new(
                    Reason::CredentialsRequired,
                    "credentials are required: your Confluence user name and password, or a token bound to an admin",
                )
            })?;
        let role = role_of(&principal, &app.config.admin_users, app.config.self_service);
        let caller = Caller {
            principal,
            role,
            rate: None,
            client_ip,
        };
        return Ok((req.map(Either::Left), caller));
    };
    let (req, principal, rate) = if let Some((secret, scheme)) = credentials.gateway_token() {
        let presented = PresentedToken {
            secret,
            scheme,
            basic_user: credentials.basic_user(),
        };
        // Report-only never applies here: the rules of a token that manages
        // tokens always refuse (SPEC §16).
        let (req, principal, passage) = app
            .auth
            .authenticate_token(req, target, presented, client_ip, ReportOnly::Never, rule_check)
            .await
            .map_err(|refused| refused.error)?;
        (req, principal, passage.rate)
    } else {
        let Credentials::Basic { user, .. } = &credentials else {
            return Err(invalid());
        };
        let authorization = req.headers().get(AUTHORIZATION).ok_or_else(invalid)?;
        let caller = app.auth.authenticate_password(authorization, user, client_ip).await?;
        (req.map(Either::Left), caller, None)
    };
    let role = role_of(&principal, &app.config.admin_users, app.config.self_service);
    Ok((
        req,
        Caller {
            principal,
            role,
            rate,
            client_ip,
        },
    ))
}

/// What an authenticated principal may do here.
fn role_of(principal: &Principal, admin_users: &[String], self_service: bool) -> Role {
    let admin = is_admin(admin_users, &principal.user);
    match &principal.via {
        Via::Token(token) if token.user.is_none() => Role::CheckOnly(format!(
            "token '{}' is not bound to a user: only a token bound to an admin may manage tokens",
            token.label
        )),
        Via::Token(_) if admin => Role::Admin,
        Via::Token(token) => Role::CheckOnly(format!(
            "token '{}' may not manage tokens: only an admin's token may; manage your tokens with your password",
            token.label
        )),
        Via::Password { .. } | Via::Session if admin => Role::Admin,
        Via::Password { .. } | Via::Session if self_service => Role::User,
        Via::Password { .. } | Via::Session => Role::CheckOnly(format!(
            "user '{}' may not manage tokens (self-service is off: ask an admin)",
            principal.user
        )),
    }
}

/// Whether `user` is in `admin_users`, ignoring ASCII case as user binding does.
pub fn is_admin(admin_users: &[String], user: &str) -> bool {
    admin_users.iter().any(|admin| admin.eq_ignore_ascii_case(user))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admins_are_matched_ignoring_ascii_case_only() {
        let admins = vec!["admin".to_owned(), "Ops".to_owned()];
        assert!(is_admin(&admins, "ADMIN"));
        assert!(is_admin(&admins, "ops"));
        assert!(!is_admin(&admins, "admin2"));
        assert!(!is_admin(&admins, ""));
        assert!(!is_admin(&[], "admin"));
    }

    #[test]
    fn roles_follow_admin_users_self_service_and_how_the_caller_came() {
        let admins = vec!["admin".to_owned()];
        let password = |user: &str| Principal {
            user: user.into(),
            via: Via::Password {
                authorization: hyper::header::HeaderValue::from_static("Basic x"),
            },
            client_ip: "10.0.0.1".parse().unwrap(),
        };
        assert_eq!(role_of(&password("Admin"), &admins, false), Role::Admin);
        assert_eq!(role_of(&password("alice"), &admins, true), Role::User);
        let Role::CheckOnly(why) = role_of(&password("alice"), &admins, false) else {
            panic!("alice may manage tokens without self-service");
        };
        assert!(why.contains("self-service is off"), "{why}");
    }
}
