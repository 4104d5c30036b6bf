//! Authentication: what a client presented, turned into a [`Principal`] (or
//! refused), in one place for forwarded requests and the management API.
//!
//! - [`credentials`] decodes `Authorization` (pure) and finds tokens where
//!   no credential may be;
//! - [`Verifier`] turns a `tgw_` secret into an [`ActiveToken`] through the
//!   verified cache, the store and argon2 ([`token`] holds values and hashes);
//! - [`checks`] runs the token checks of SPEC §2.7 and the rules (§3);
//! - [`FailureThrottle`] answers 429 to a client that failed too often;
//! - [`PasswordVerdicts`] keeps Confluence's answers about passwords;
//! - [`sessions`] keeps the web page's sessions;
//! - [`IdentityCheck`] holds each answer to a token request to the user
//!   Confluence says it served (SPEC §19), and counts a PAT it served as
//!   someone else as rejected.
//!
//! [`Authenticator`] strings them together: [`Authenticator::authenticate_token`]
//! is resolve → throttle → checks → rules, and
//! [`Authenticator::authenticate_password`] asks Confluence, and
//! [`Authenticator::authenticate_session`] reads the page's session.

mod checks;
pub mod credentials;
pub mod memo;
mod passwords;
pub mod rate_limit;
pub mod seal;
mod served_as;
pub mod sessions;
pub mod throttle;
pub mod token;
mod upstream;
mod verifier;

use std::net::IpAddr;
use std::sync::Arc;

use hyper::header::HeaderValue;
use hyper::{HeaderMap, Request};

pub use checks::{CheckContext, RulesCheck, check_rules, check_rules_on_json, check_rules_with_body, check_token};
pub use passwords::PasswordVerdicts;
pub use rate_limit::RateState;
pub use served_as::IdentityCheck;
pub use throttle::{FailureThrottle, throttle_key};
pub use upstream::{PatVerdict, bearer};
pub use verifier::{ActiveToken, PatMode, SecretRole, Verifier, VerifyError};

use crate::body::{Forwarded, RequestBody};
use crate::clock::Clock;
use crate::config::Config;
use crate::confluence::Confluence;
use crate::error::{GatewayError, Reason};
use crate::target::Target;
use credentials::Scheme;
use rate_limit::RateLimits;
use sessions::{Session, Sessions};
pub use token::TOKEN_PREFIX;

/// Who a request acts as, how that was established, and from where.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token's user (the bound one, or the Basic name an unbound token
    /// acts as), or the user Confluence named for a password.
    pub user: String,
    pub via: Via,
    pub client_ip: IpAddr,
}

#[derive(Debug, Clone)]
pub enum Via {
    /// A gateway token that passed every check.
    Token(Arc<ActiveToken>),
    /// A password Confluence accepted, and the Basic header that carried it
    /// (marked sensitive), for the calls made to Confluence on the user's
    /// behalf during this request: minting or revoking their PAT.
    Password { authorization: HeaderValue },
    /// A web page session (whose CSRF token a state-changing call carried).
    Session,
}

impl Via {
    pub fn name(&self) -> &'static str {
        match self {
            Via::Token(_) => "token",
            Via::Password { .. } => "password",
            Via::Session => "session",
        }
    }
}

/// A gateway token as it was presented.
#[derive(Debug, Clone, Copy)]
pub struct PresentedToken<'a> {
    pub secret: &'a str,
    pub scheme: Scheme,
    /// The Basic user name typed next to it, if it came as Basic.
    pub basic_user: Option<&'a str>,
}

/// What else a token request that passed carries on its way.
#[derive(Debug, Default)]
pub struct Passage {
    /// The token's rate limit state, for the response's headers.
    pub rate: Option<RateState>,
    /// The refusal a report-only token's rules waived (SPEC §16).
    pub reported: Option<GatewayError>,
}

/// A refused token, with the token itself when it was resolved before a
/// check refused it (the audit log names it). A limited token's refusal
/// carries the rate-limit headers in its error.
#[derive(Debug)]
pub struct Refused {
    pub error: GatewayError,
    pub token: Option<Arc<ActiveToken>>,
}

impl From<GatewayError> for Refused {
    fn from(error: GatewayError) -> Self {
        Refused { error, token: None }
    }
}

/// Whether report-only tokens pass what their rules refuse: on forwarded
/// requests; never on the management API (SPEC §16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOnly {
    Applies,
    Never,
}

/// Whether a token request's rules are checked: always, but for a token
/// rotating itself (SPEC §18), which needs every check of §2.7 but the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleCheck {
    Apply,
    Skip,
}

pub struct Authenticator {
    verifier: Arc<Verifier>,
    limits: Arc<RateLimits>,
    throttle: FailureThrottle,
    passwords: PasswordVerdicts,
    sessions: Sessions,
    upstream: Arc<Confluence>,
    clock: Arc<dyn Clock>,
    config: Arc<Config>,
}

impl Authenticator {
    pub fn new(
        config: Arc<Config>,
        verifier: Arc<Verifier>,
        limits: Arc<RateLimits>,
        sessions: Sessions,
        upstream: Arc<Confluence>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Authenticator {
            limits,
            throttle: FailureThrottle::new(config.failed_auth_per_minute),
            passwords: PasswordVerdicts::default(),
            verifier,
            sessions,
            upstream,
            clock,
            config,
        }
    }

    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }

    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The web page's session, for the management API (SPEC §15): `None`
    /// without the session cookie; 401 for a session that has ended; 403 for
    /// a state-changing call without the session's CSRF token.
    pub async fn authenticate_session(
        &self,
        headers: &HeaderMap,
        changes_state: bool,
        client_ip: IpAddr,
    ) -> Result<Option<(Principal, Session)>, GatewayError> {
        let Some(id) = sessions::session_cookie(headers) else {
            return Ok(None);
        };
        let session = self
            .sessions
            .resolve(id)
            .await
            .map_err(|e| GatewayError::internal(&e))?
            .ok_or_else(|| GatewayError::new(Reason::CredentialsRequired, "your session has ended: log in again"))?;
        let presented = headers.get(sessions::CSRF_HEADER).and_then(|v| v.to_str().ok());
        if changes_state && !session.csrf_matches(presented) {
            return Err(GatewayError::new(
                Reason::Forbidden,
                "the page's CSRF token is missing or wrong: reload the page",
            ));
        }
        let principal = Principal {
            user: session.user.clone(),
            via: Via::Session,
            client_ip,
        };
        Ok(Some((principal, session)))
    }

    /// Counts a failed attempt (a bad token or password) from `client_ip`.
    pub fn record_failure(&self, client_ip: IpAddr) {
        self.throttle.record_failure(client_ip, self.clock.now_ms());
    }

    /// 429 when `client_ip` has used up its failed attempts.
    pub fn check_throttle(&self, client_ip: IpAddr, what: &str) -> Result<(), GatewayError> {
        match self.throttle.blocked(client_ip, self.clock.now_ms()) {
            None => Ok(()),
            Some(retry_after) => Err(GatewayError::new(
                Reason::TooManyFailures,
                format!("too many failed {what} attempts; retry later"),
            )
            .retry_after(retry_after)),
        }
    }

    /// The token a `tgw_` secret belongs to: from the verified cache, else
    /// (unless this client is throttled) through the store and argon2.
    pub async fn resolve_token(&self, secret: &str, client_ip: IpAddr) -> Result<Arc<ActiveToken>, GatewayError> {
        match self.verifier.cached(secret).await {
            Ok(Some(token)) => return Ok(token),
            Ok(None) => {}
            Err(e) => return Err(GatewayError::internal(&e)),
        }
        self.check_throttle(client_ip, "token")?;
        match Box::pin(self.verifier.verify_uncached(secret)).await {
            Ok(Some(token)) => Ok(token),
            Ok(None) => Err(GatewayError::new(Reason::InvalidToken, "invalid credentials")),
            Err(VerifyError::Upstream(error)) => Err(error),
            Err(e) => Err(GatewayError::internal(&e)),
        }
    }

    /// A token request, for a forwarded request and the management API
    /// alike: token resolution (SPEC §2.6), the checks of §2.7 in their
    /// order, the rate limit, then the token's rules (§3), which may read
    /// the body; a report-only token's rules refuse nothing where
    /// `report_only` applies.
    pub async fn authenticate_token<B: RequestBody>(
        &self,
        req: Request<B>,
        target: &Target,
        presented: PresentedToken<'_>,
        client_ip: IpAddr,
        report_only: ReportOnly,
        rule_check: RuleCheck,
    ) -> Result<(Request<Forwarded<B>>, Principal, Passage), Refused> {
        let token = self.resolve_token(presented.secret, client_ip).await?;
        let (scheme, basic_user) = (presented.scheme, presented.basic_user);
        self.authenticate_resolved(
            token,
            req,
            target,
            scheme,
            basic_user,
            client_ip,
            report_only,
            rule_check,
        )
        .await
    }

    /// [`authenticate_token`](Self::authenticate_token) for a token already
    /// resolved (the connection's memo recalled it): every check, from the
    /// scheme on.
    // The arguments are what a presented token carries, one by one.
    #[allow(clippy::too_many_arguments)]
    pub async fn authenticate_resolved<B: RequestBody>(
        &self,
        token: Arc<ActiveToken>,
        req: Request<B>,
        target: &Target,
        scheme: Scheme,
        basic_user: Option<&str>,
        client_ip: IpAddr,
        report_only: ReportOnly,
        rule_check: RuleCheck,
    ) -> Result<(Request<Forwarded<B>>, Principal, Passage), Refused> {
        let mut passage = Passage::default();
        let refused = |error: GatewayError, rate: Option<RateState>| Refused {
            error: match rate {
                Some(state) => error.with_headers(state.headers()),
                None => error,
            },
            token: Some(token.clone()),
        };
        if target.has_path_parameters {
            return Err(refused(
                GatewayError::new(
                    Reason::BadPath,
                    "path parameters (';') are not allowed on token requests",
                ),
                None,
            ));
        }
        let cx = CheckContext {
            scheme,
            basic_user,
            method: req.method(),
            path: &target.path,
            client_ip,
            now: self.clock.now_ms(),
            token_auth: self.config.token_auth,
            scope: self.config.scope,
        };
        let user = check_token(&token, &cx).map_err(|e| refused(e, None))?;
        match &token.rate_limit {
            Ok(None) => {}
            Ok(Some(bucket)) => {
                passage.rate = Some(
                    self.limits
                        .take(&token.id, &token.label, bucket)
                        .await
                        .map_err(|e| refused(e, None))?,
                )
            }
            Err(defect) => return Err(refused(GatewayError::internal(&defect), None)),
        }
        let rate = passage.rate;
        if rule_check == RuleCheck::Skip {
            let principal = Principal {
                user,
                via: Via::Token(token),
                client_ip,
            };
            return Ok((req.map(http_body_util::Either::Left), principal, passage));
        }
        let (req, denied) = match check_rules(&token, req, &target.path).map_err(|e| refused(e, rate))? {
            RulesCheck::Decided(answer) => answer,
            // Boxed: reading the body makes a large future, and only JSON
            // rules need it; it should not make every request's future larger.
            RulesCheck::NeedsBody(req) => Box::pin(check_rules_with_body(
                &token,
                req,
                &target.path,
                self.config.max_json_body,
            ))
            .await
            .map_err(|e| refused(e, rate))?,
        };
        match denied {
            None => {}
            Some(error) if !token.enforce && report_only == ReportOnly::Applies => passage.reported = Some(error),
            Some(error) => return Err(refused(error, rate)),
        }
        let principal = Principal {
            user,
            via: Via::Token(token),
            client_ip,
        };
        Ok((req, principal, passage))
    }

    /// With `forward_as = "pat"`, the `Authorization` value (`Bearer <PAT>`)
    /// a forwarded request of `token` carries; 401
    /// `upstream_credential_rejected` when the token has no PAT or
    /// Confluence no longer takes it as the token's user. Asks Confluence
    /// again in the background once the last answer is a minute old.
    pub fn upstream_authorization(&self, token: &Arc<ActiveToken>) -> Result<HeaderValue, GatewayError> {
        let Some(credential) = &token.upstream else {
            return Err(GatewayError::new(
                Reason::UpstreamCredentialRejected,
                format!(
                    "token '{}' has no Confluence personal access token (it was made for the identity header): create a new token",
                    token.label
                ),
            ));
        };
        if credential.claim_recheck(self.clock.now_ms()) {
            tokio::spawn(recheck(self.upstream.clone(), self.clock.clone(), token.clone()));
        }
        credential.authorization(&token.label).cloned()
    }

    /// Basic `user:password` that Confluence accepts (SPEC §5), for the
    /// management API. A verdict is kept 60 s; a client that failed too
    /// often gets 429 before Confluence is asked again.
    pub async fn authenticate_password(
        &self,
        authorization: &HeaderValue,
        user: &str,
        client_ip: IpAddr,
    ) -> Result<Principal, GatewayError> {
        let invalid = || GatewayError::new(Reason::InvalidToken, "invalid credentials");
        if user.is_empty() {
            return Err(invalid());
        }
        // A gateway token typed as a Confluence password (the page's login)
        // is never sent to Confluence (SPEC §12).
        if credentials::password_is_token(authorization) {
            self.check_throttle(client_ip, "password")?;
            return Err(GatewayError::new(
                Reason::InvalidToken,
                "invalid credentials: that is a gateway token, not your Confluence password",
            ));
        }
        let name = match self.passwords.accepted(authorization).await {
            Some(name) => name,
            None => {
                self.check_throttle(client_ip, "password")?;
                self.passwords
                    .check(&self.upstream, authorization, user)
                    .await?
                    .ok_or_else(invalid)?
            }
        };
        let mut authorization = authorization.clone();
        authorization.set_sensitive(true);
        Ok(Principal {
            user: name,
            via: Via::Password { authorization },
            client_ip,
        })
    }
}

/// Asks Confluence again whether `token`'s PAT still acts as its user.
async fn recheck(upstream: Arc<Confluence>, clock: Arc<dyn Clock>, token: Arc<ActiveToken>) {
    let Some(credential) = &token.upstream else {
        return;
    };
    let user = token.user.as_deref().unwrap_or_default();
    let verdict = match upstream::ask(&upstream, credential.authorization_to_check(), user).await {
        Ok(verdict) => {
            if verdict != PatVerdict::Accepted {
                tracing::warn!(token.id = %token.id, ?verdict, "Confluence no longer accepts the token's personal access token");
            }
            Some(verdict)
        }
        Err(e) => {
            tracing::warn!(token.id = %token.id, error = %e.message, "cannot ask Confluence about the token's personal access token; will ask again");
            None
        }
    };
    credential.finish_recheck(verdict, clock.now_ms());
}
