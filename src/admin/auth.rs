//! Who is calling the management API (SPEC §5). Two ways in, both ending in
//! a user named in `admin_users` (ASCII case-insensitively):
//!
//! - a gateway token **bound** to an admin, verified and checked exactly as
//!   the pipeline checks a forwarded request: [`authorize::check_token`],
//!   then the token's own rules with [`authorize::check_rules`];
//! - Basic user:password that Confluence accepts: the gateway asks
//!   `GET /rest/api/user/current` with that header and keeps the verdict
//!   60 s, keyed by a SHA-256 of the header, never the header itself.
//!
//! An unbound token never makes its caller an admin: its identity is only
//! whatever user name was typed next to it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Either;
use hyper::Request;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, HeaderValue};
use moka::future::Cache;
use sha2::{Digest, Sha256};

use super::AdminError;
use crate::app::App;
use crate::auth::credentials::{self, Credentials, Scheme};
use crate::error::GatewayError;
use crate::error::Reason;
use crate::pipeline::authorize::{self, CheckContext};
use crate::pipeline::canonical::Target;
use crate::proxy::{Body, UpstreamClient};

/// How long Confluence's verdict on a password is kept (SPEC §5).
pub const PASSWORD_VERDICT_TTL: Duration = Duration::from_secs(60);
const PASSWORD_VERDICT_CAPACITY: u64 = 10_000;

/// An authenticated admin: who did it, how, and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// The user bound to the token, or the user name as Confluence spells it.
    pub name: String,
    pub via: Via,
    pub client_ip: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// A token bound to an admin, by id.
    Token(String),
    /// A password Confluence accepted.
    Password,
}

impl Via {
    pub fn name(&self) -> &'static str {
        match self {
            Via::Token(_) => "token",
            Via::Password => "password",
        }
    }
}

/// What Confluence said about one `Authorization` value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// The user Confluence named, which matched the Basic user name.
    Accepted(String),
    Rejected,
}

/// Confluence's verdicts on passwords, kept [`PASSWORD_VERDICT_TTL`]. The
/// key is SHA-256 of the whole header, so the cache never holds a password.
/// Failures to ask (Confluence down) are not verdicts and are not kept.
pub struct PasswordVerdicts {
    cache: Cache<[u8; 32], Verdict>,
}

impl Default for PasswordVerdicts {
    fn default() -> Self {
        PasswordVerdicts {
            cache: Cache::builder()
                .max_capacity(PASSWORD_VERDICT_CAPACITY)
                .time_to_live(PASSWORD_VERDICT_TTL)
                .build(),
        }
    }
}

impl PasswordVerdicts {
    /// The user Confluence accepts `authorization` for, when it names the same
    /// user as the Basic credentials (`user`). Concurrent first asks share one call.
    async fn accepted_user(
        &self,
        upstream: &UpstreamClient,
        authorization: &HeaderValue,
        user: &str,
    ) -> Result<Option<String>, GatewayError> {
        let key: [u8; 32] = Sha256::digest(authorization.as_bytes()).into();
        let ask = async {
            let verdict = match upstream.current_user(authorization).await? {
                Some(name) if name.eq_ignore_ascii_case(user) => Verdict::Accepted(name),
                _ => Verdict::Rejected,
            };
            Ok::<_, GatewayError>(verdict)
        };
        match self.cache.try_get_with(key, ask).await {
            Ok(Verdict::Accepted(name)) => Ok(Some(name)),
            Ok(Verdict::Rejected) => Ok(None),
            Err(shared) => Err(Arc::unwrap_or_clone(shared)),
        }
    }
}

/// Establishes the admin behind a request, or refuses it: 400 for malformed
/// credentials, 401 for none or invalid ones, 403 for a non-admin or a token
/// whose checks or rules refuse the call. Returns the request with a body
/// that can still be read (the token's JSON rules may have buffered it).
pub async fn authenticate(
    app: &App,
    req: Request<Incoming>,
    target: &Target,
    client_ip: IpAddr,
) -> Result<(Request<Body>, Admin), AdminError> {
    let credentials = credentials::from_headers(req.headers())
        .map_err(|e| AdminError::BadCredentials(e.to_string()))?
        .ok_or(AdminError::CredentialsRequired)?;
    if let Some((secret, scheme)) = credentials.gateway_token() {
        return by_token(app, req, target, (secret, scheme), credentials.basic_user(), client_ip).await;
    }
    let Credentials::Basic { user, .. } = &credentials else {
        return Err(AdminError::InvalidCredentials);
    };
    let authorization = req
        .headers()
        .get(AUTHORIZATION)
        .ok_or(AdminError::CredentialsRequired)?;
    if user.is_empty() {
        return Err(AdminError::InvalidCredentials);
    }
    let name = app
        .admin
        .passwords
        .accepted_user(&app.upstream, authorization, user)
        .await
        .map_err(AdminError::Refused)?
        .ok_or(AdminError::InvalidCredentials)?;
    ensure_admin(&app.config.admin_users, &name)?;
    let admin = Admin {
        name,
        via: Via::Password,
        client_ip,
    };
    Ok((req.map(Either::Left), admin))
}

/// The pipeline's token checks, then admin rights, then the token's rules.
async fn by_token(
    app: &App,
    req: Request<Incoming>,
    target: &Target,
    (secret, scheme): (&str, Scheme),
    basic_user: Option<&str>,
    client_ip: IpAddr,
) -> Result<(Request<Body>, Admin), AdminError> {
    let token = crate::pipeline::resolve_token(app, secret, client_ip)
        .await
        .map_err(|e| match e.reason {
            Reason::InvalidToken => AdminError::InvalidCredentials,
            _ => AdminError::Refused(e),
        })?;
    let cx = CheckContext {
        scheme,
        basic_user,
        method: req.method(),
        path: &target.path,
        client_ip,
        now: app.clock.now_ms(),
        token_auth: app.config.token_auth,
        scope: app.config.scope,
    };
    let user = authorize::check_token(&token, &cx).map_err(AdminError::Refused)?;
    if token.user.is_none() {
        return Err(AdminError::NotAdmin(format!(
            "token '{}' is not bound to a user: only a token bound to an admin may manage tokens",
            token.label
        )));
    }
    ensure_admin(&app.config.admin_users, &user)?;
    let req = authorize::check_rules(&token, req, &target.path, app.config.max_json_body)
        .await
        .map_err(AdminError::Refused)?;
    let admin = Admin {
        name: user,
        via: Via::Token(token.id.clone()),
        client_ip,
    };
    Ok((req, admin))
}

fn ensure_admin(admin_users: &[String], user: &str) -> Result<(), AdminError> {
    if is_admin(admin_users, user) {
        Ok(())
    } else {
        Err(AdminError::NotAdmin(format!("user '{user}' may not manage tokens")))
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
    fn ensure_admin_names_the_user_it_refuses() {
        let error = ensure_admin(&["admin".to_owned()], "mallory").unwrap_err();
        assert_eq!(error.status(), 403);
        assert!(error.to_string().contains("mallory"));
    }
}
