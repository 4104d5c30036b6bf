//! Who is calling the management API (SPEC §5), established by the
//! gateway's one [`Authenticator`](crate::auth::Authenticator) either way:
//!
//! - a gateway token, checked exactly as a forwarded request is (its rules
//!   included), and **bound** to an admin: an unbound token's identity is
//!   only whatever user name was typed next to it;
//! - Basic user:password that Confluence accepts.
//!
//! Then `admin_users` decides (ASCII case-insensitively).

use std::net::IpAddr;

use http_body_util::Either;
use hyper::Request;
use hyper::header::AUTHORIZATION;

use crate::app::App;
use crate::auth::credentials::{self, Credentials};
use crate::auth::{PresentedToken, Principal, Via};
use crate::body::{Forwarded, RequestBody};
use crate::error::{GatewayError, Reason};
use crate::target::Target;

/// Establishes the admin behind a request, or refuses it: 400 for malformed
/// credentials, 401 for none or invalid ones, 403 for a non-admin or a token
/// whose checks or rules refuse the call, 429 for a client that failed too
/// often. Returns the request with a body that can still be read (the
/// token's JSON rules may have buffered it).
pub async fn authenticate<B: RequestBody>(
    app: &App,
    req: Request<B>,
    target: &Target,
    client_ip: IpAddr,
) -> Result<(Request<Forwarded<B>>, Principal), GatewayError> {
    let invalid = || GatewayError::new(Reason::InvalidToken, "invalid credentials");
    let credentials = credentials::from_headers(req.headers())
        .map_err(|e| GatewayError::new(Reason::BadCredentials, e.to_string()))?
        .ok_or_else(|| {
            GatewayError::new(
                Reason::CredentialsRequired,
                "credentials are required: a token bound to an admin, or an admin's user name and password",
            )
        })?;
    let (req, caller) = if let Some((secret, scheme)) = credentials.gateway_token() {
        let presented = PresentedToken {
            secret,
            scheme,
            basic_user: credentials.basic_user(),
        };
        app.auth
            .authenticate_token(req, target, presented, client_ip)
            .await
            .map_err(|refused| refused.error)?
    } else {
        let Credentials::Basic { user, .. } = &credentials else {
            return Err(invalid());
        };
        let authorization = req.headers().get(AUTHORIZATION).ok_or_else(invalid)?;
        let caller = app.auth.authenticate_password(authorization, user, client_ip).await?;
        (req.map(Either::Left), caller)
    };
    if let Via::Token(token) = &caller.via
        && token.user.is_none()
    {
        return Err(GatewayError::new(
            Reason::Forbidden,
            format!(
                "token '{}' is not bound to a user: only a token bound to an admin may manage tokens",
                token.label
            ),
        ));
    }
    if !is_admin(&app.config.admin_users, &caller.user) {
        return Err(GatewayError::new(
            Reason::Forbidden,
            format!("user '{}' may not manage tokens", caller.user),
        ));
    }
    Ok((req, caller))
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
}
