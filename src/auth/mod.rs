//! Authentication: what a client presented, turned into a [`Principal`] (or
//! refused), in one place for every door of the gateway: forwarded
//! requests, the management API and the web page all call
//! [`Authenticator::authenticate`] with the request's [`RequestContext`]
//! and the [`Door`] they are, which says what is acceptable there.
//!
//! - [`RequestContext`] holds the request's target, client IP and
//!   connection, its credentials decoded once ([`credentials`]) and its
//!   session id;
//! - [`Verifier`] turns a `tgw_` secret into an [`ActiveToken`] through the
//!   verified cache, the store and argon2 ([`crate::secrets`] holds values
//!   and hashes); the connection's [`CredentialMemo`] skips that for a repeated
//!   header;
//! - [`checks`] runs the token checks of SPEC §2.7 and the rules (§3);
//! - [`FailureThrottle`] answers 429 to a client that failed too often;
//! - [`PasswordVerdicts`] keeps Confluence's answers about passwords;
//! - [`sessions`] keeps the web page's sessions;
//! - [`IdentityCheck`] holds each answer to a token request to the user
//!   Confluence says it served (SPEC §19), and counts a PAT it served as
//!   someone else as rejected.

mod checks;
mod context;
mod credentials;
mod memo;
mod passwords;
mod rate_limit;
mod served_as;
mod sessions;
mod throttle;
mod upstream;
mod verifier;

use std::net::IpAddr;
use std::sync::Arc;

use hyper::header::HeaderValue;
use hyper::{HeaderMap, Request};

pub use checks::{CheckContext, RulesCheck, check_rules, check_rules_on_json, check_rules_with_body, check_token};
pub use context::RequestContext;
pub use credentials::{BadCredentials, Credentials, Scheme};
pub use memo::CredentialMemo;
pub use passwords::PasswordVerdicts;
pub use rate_limit::{RateLimits, RateState};
pub use served_as::IdentityCheck;
pub use sessions::{SESSION_COOKIE, Session, Sessions};
pub use throttle::{FailureThrottle, throttle_key};
pub use upstream::PatVerdict;
pub use verifier::{ActiveToken, PatMode, SecretRole, Verifier, VerifyError};

/// The `Authorization` decoder itself, for the fuzz targets and the
/// benchmarks only: every stage reads a request's credentials from its
/// [`RequestContext`], decoded once.
#[doc(hidden)]
pub mod decode {
    pub use super::credentials::from_headers;
    #[cfg(any(fuzzing, test))]
    pub use super::credentials::parse;
}

use crate::body::{Forwarded, RequestBody};
use crate::clock::Clock;
use crate::config::Config;
use crate::confluence::Confluence;
use crate::error::{GatewayError, Reason};
use crate::target::Target;

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
    Session(Arc<Session>),
}

impl Via {
    pub fn name(&self) -> &'static str {
        match self {
            Via::Token(_) => "token",
            Via::Password { .. } => "password",
            Via::Session(_) => "session",
        }
    }
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

/// How a resolved token was presented, and what its door waives.
#[derive(Debug, Clone, Copy)]
struct Presenting<'a> {
    scheme: Scheme,
    /// The Basic user name typed next to it, if it came as Basic.
    basic_user: Option<&'a str>,
    report_only: ReportOnly,
    rule_check: RuleCheck,
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

/// A door of the gateway, and what is acceptable there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// A request on its way to Confluence (SPEC §2.5-2.7): a gateway token,
    /// a report-only token's rules waived. Anything else is passed on as
    /// sent, unless `passthrough` (other credentials) or `allow_anonymous`
    /// (none) is off; a token anywhere but `Authorization` is refused.
    Proxy,
    /// The management API (SPEC §5, §15): a gateway token (report-only
    /// never applies; its rules skipped only for a token rotating itself),
    /// a password Confluence accepts, or the page's session.
    Management(RuleCheck),
    /// The page's login form: a password Confluence accepts.
    Login,
    /// The page's own session; a state-changing call must carry its CSRF token.
    Session { changes_state: bool },
}

/// A request its door let in.
pub struct Authenticated<B> {
    /// The request, its body still to read (a JSON rule may have read it).
    pub req: Request<Forwarded<B>>,
    /// Whom it acts as; `None` for a request passed on as it was sent (no
    /// credentials, or credentials that are not a gateway token).
    pub principal: Option<Principal>,
    pub passage: Passage,
}

impl<B> Authenticated<B> {
    fn passed_on(req: Request<B>) -> Self {
        Authenticated {
            req: req.map(http_body_util::Either::Left),
            principal: None,
            passage: Passage::default(),
        }
    }

    fn as_(req: Request<B>, principal: Principal) -> Self {
        Authenticated {
            req: req.map(http_body_util::Either::Left),
            principal: Some(principal),
            passage: Passage::default(),
        }
    }
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

    /// The one way in: what `cx` presented, authenticated as `door`
    /// accepts it. 400 for malformed credentials (or a token outside
    /// `Authorization` at the proxy door), 401 for none or invalid ones,
    /// 403 when a token's checks or rules refuse the request, 429 for a
    /// client that failed too often. A refused token is named in the
    /// refusal, for the audit log.
    pub async fn authenticate<B: RequestBody>(
        &self,
        cx: &RequestContext<'_>,
        req: Request<B>,
        door: Door,
    ) -> Result<Authenticated<B>, Refused> {
        let malformed = |e: &BadCredentials| GatewayError::new(Reason::BadCredentials, e.to_string());
        let rule_check = match door {
            Door::Session { changes_state } => {
                let principal = Box::pin(self.authenticate_session(cx, req.headers(), changes_state)).await?;
                return Ok(Authenticated::as_(req, principal));
            }
            Door::Proxy => {
                credentials::refuse_tokens_elsewhere(req.headers(), cx.target.query.as_deref())
                    .map_err(|e| malformed(&e))?;
                // The connection's last token request had the same header:
                // its token, never decoded or hashed again (every check still runs).
                if let Some(recalled) = cx.recall(self.clock.now_ms()) {
                    let presented = Presenting {
                        scheme: recalled.scheme,
                        basic_user: recalled.basic_user(),
                        report_only: ReportOnly::Applies,
                        rule_check: RuleCheck::Apply,
                    };
                    let token = recalled.token.clone();
                    return self
                        .authenticate_token(token, req, &cx.target, presented, cx.client_ip)
                        .await;
                }
                RuleCheck::Apply
            }
            Door::Management(rule_check) => rule_check,
            Door::Login => RuleCheck::Apply,
        };
        let Some(presented) = cx.presented().map_err(malformed)? else {
            return match door {
                Door::Proxy if self.config.allow_anonymous => Ok(Authenticated::passed_on(req)),
                Door::Management(_) if cx.session_id().is_some() => {
                    let changes_state = !matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD);
                    let principal = Box::pin(self.authenticate_session(cx, req.headers(), changes_state)).await?;
                    Ok(Authenticated::as_(req, principal))
                }
                Door::Management(_) => Err(GatewayError::new(
                    Reason::CredentialsRequired,
                    "credentials are required: your Confluence user name and password, or a token bound to an admin",
                )
                .into()),
                _ => Err(GatewayError::new(Reason::CredentialsRequired, "credentials are required").into()),
            };
        };
        match (presented.credentials.gateway_token(), door) {
            // A gateway token typed as a password is refused as a password.
            (Some((secret, scheme)), Door::Proxy | Door::Management(_)) => {
                let basic_user = presented.credentials.basic_user();
                let report_only = match door {
                    Door::Proxy => ReportOnly::Applies,
                    // The rules of a token that manages tokens always refuse (SPEC §16).
                    _ => ReportOnly::Never,
                };
                let token = self.resolve_token(secret, cx.client_ip).await?;
                if door == Door::Proxy {
                    // The connection's next request with the same header
                    // skips decoding and resolving it (never the checks).
                    cx.remember(&token, scheme, self.clock.now_ms());
                }
                let presented = Presenting {
                    scheme,
                    basic_user,
                    report_only,
                    rule_check,
                };
                self.authenticate_token(token, req, &cx.target, presented, cx.client_ip)
                    .await
            }
            (None, Door::Proxy) if self.config.passthrough => Ok(Authenticated::passed_on(req)),
            (None, Door::Proxy) => {
                Err(GatewayError::new(Reason::InvalidToken, "only gateway tokens are accepted here").into())
            }
            (_, _) => {
                let Credentials::Basic { user, .. } = &presented.credentials else {
                    return Err(GatewayError::new(Reason::InvalidToken, "invalid credentials").into());
                };
                // Boxed, as the session above: asking Confluence makes a large
                // future, and every forwarded request's future would carry
                // it (moved, not run: 25 000 instructions a request of memcpy).
                let password = self.authenticate_password(&presented.authorization, user, cx.client_ip);
                let principal = Box::pin(password).await?;
                Ok(Authenticated::as_(req, principal))
            }
        }
    }

    /// The web page's session (SPEC §15): 401 without one or for one that
    /// has ended; 403 for a state-changing call without the session's CSRF
    /// token.
    async fn authenticate_session(
        &self,
        cx: &RequestContext<'_>,
        headers: &HeaderMap,
        changes_state: bool,
    ) -> Result<Principal, GatewayError> {
        let id = cx
            .session_id()
            .ok_or_else(|| GatewayError::new(Reason::CredentialsRequired, "not logged in"))?;
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
        Ok(Principal {
            user: session.user.clone(),
            via: Via::Session(Arc::new(session)),
            client_ip: cx.client_ip,
        })
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
    async fn resolve_token(&self, secret: &str, client_ip: IpAddr) -> Result<Arc<ActiveToken>, GatewayError> {
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
    /// alike, once the token is resolved (SPEC §2.6): the checks of §2.7 in
    /// their order, the rate limit, then the token's rules (§3), which may
    /// read the body; a report-only token's rules refuse nothing where
    /// report-only applies.
    async fn authenticate_token<B: RequestBody>(
        &self,
        token: Arc<ActiveToken>,
        req: Request<B>,
        target: &Target,
        presented: Presenting<'_>,
        client_ip: IpAddr,
    ) -> Result<Authenticated<B>, Refused> {
        let Presenting {
            scheme,
            basic_user,
            report_only,
            rule_check,
        } = presented;
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
            return Ok(Authenticated {
                req: req.map(http_body_util::Either::Left),
                principal: Some(principal),
                passage,
            });
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
        Ok(Authenticated {
            req,
            principal: Some(principal),
            passage,
        })
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
    /// management API and the page's login. A verdict is kept 60 s; a client that failed too
    /// often gets 429 before Confluence is asked again.
    async fn authenticate_password(
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
