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

use hyper::Request;

use crate::app::App;
use crate::auth::{Authenticated, Door, Principal, RateState, RequestContext, RuleCheck, Via};
use crate::body::{Forwarded, RequestBody};
use crate::error::{GatewayError, Reason};
use crate::tokens::{Actor, Came};

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

    /// The caller as the token service records their changes.
    pub fn actor(&self) -> Actor {
        let came = match &self.principal.via {
            Via::Token(token) => Came::Token(token.id.clone()),
            Via::Password { .. } => Came::Password,
            Via::Session(_) => Came::Page,
        };
        Actor {
            name: self.principal.user.clone(),
            came,
            client_ip: Some(self.client_ip),
        }
    }

    /// Whether `user` is this caller (ASCII case-insensitively, as binding compares).
    pub fn is(&self, user: &str) -> bool {
        self.principal.user.eq_ignore_ascii_case(user)
    }
}

/// Establishes the caller behind a request at the management API's door,
/// or refuses it: 400 for malformed credentials, 401 for none or invalid
/// ones, 403 for a token whose checks or rules refuse the call, 429 for a
/// client that failed too often. Who may do what is the caller's [`Role`].
/// Returns the request with a body that can still be read (the token's JSON
/// rules may have read it).
pub async fn authenticate<B: RequestBody>(
    app: &App,
    req: Request<B>,
    cx: &RequestContext<'_>,
    rule_check: RuleCheck,
) -> Result<(Request<Forwarded<B>>, Caller), GatewayError> {
    let door = Door::Management(rule_check);
    let Authenticated {
        req,
        principal,
        passage,
    } = app
        .auth
        .authenticate(cx, req, door)
        .await
        .map_err(|refused| refused.error)?;
    let principal = principal
        .ok_or_else(|| GatewayError::internal(&"the management API's door let a request in unauthenticated"))?;
    let role = role_of(&principal, &app.config.admin_users, app.config.self_service);
    let caller = Caller {
        principal,
        role,
        rate: passage.rate,
        client_ip: cx.client_ip,
    };
    Ok((req, caller))
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
        Via::Password { .. } | Via::Session(_) if admin => Role::Admin,
        Via::Password { .. } | Via::Session(_) if self_service => Role::User,
        Via::Password { .. } | Via::Session(_) => Role::CheckOnly(format!(
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
