//! The token service: every change to a token goes through it, whoever
//! makes it (the management API, the page through it, the CLI). Each change
//! is validated ([`spec`]), stored, takes effect at once in the gateway it
//! runs in (a [`TokenCache`]), raises its event (SPEC §18) and leaves its
//! audit entry naming the [`Actor`] ([`actor`]); the API, the CLI and the
//! page read and show tokens through [`wire`], where every JSON field name
//! is written. Authentication enforces what [`spec`] validates and stands
//! above this module: nothing here imports it. With `forward_as = "pat"`, a new token gets its
//! user's Confluence personal access token, minted or supplied and checked,
//! sealed under its value (SPEC §13).

mod actor;
mod spec;
mod wire;

pub use actor::{Actor, Came};
pub use spec::{RateLimit, check_user_name};
pub use wire::{TokenAnswer, listed_json, spaces_field, token_json};

use std::sync::Arc;

use hyper::header::HeaderValue;

use crate::clock::{Clock, DAY_MS, EpochMs};
use crate::config::ForwardAs;
use crate::confluence::{Confluence, MintError};
use crate::error::GatewayError;
use crate::notify::{Event, Notifier};
use crate::record::AuditLog;
use crate::rules::suggest::{self, Call, SuggestError, Suggestion};
use crate::secrets::seal::{self, Pat, SealKey};
use crate::secrets::{HashError, Hasher, token};
use crate::store::{
    ChangeKind, ListedToken, Page, Restrictions, Rotation, StoreError, TokenQuery, TokenRecord, TokenStore,
};
use actor::Change;
pub use spec::{NewToken, RestrictionsChange};
use spec::{new_id, validate_user};
/// Suggested rules read this many days of calls unless told otherwise.
pub const DEFAULT_SUGGEST_DAYS: u32 = 30;
/// ... and at most this many.
const MAX_SUGGEST_DAYS: u32 = 3650;
/// The lifetime of a minted PAT when the token does not expire: Confluence's
/// PATs always should (SPEC §13).
const MINTED_PAT_DAYS_WITHOUT_EXPIRY: i64 = 365;
/// How long a rotated secret keeps working unless told otherwise (SPEC §18)...
pub const DEFAULT_GRACE_HOURS: i64 = 24;
/// ... and at most.
const MAX_GRACE_HOURS: i64 = 168;
const HOUR_MS: EpochMs = 3_600_000;

/// A token before and after an update.
#[derive(Debug)]
pub struct Updated {
    pub before: TokenRecord,
    pub after: TokenRecord,
}

/// Where a new token's Confluence personal access token comes from (SPEC §13).
#[derive(Debug)]
pub enum PatSource {
    /// Given by the caller (`upstreamToken`, `--upstream-token-file`);
    /// checked with Confluence before it is accepted.
    Supplied(Pat),
    /// Created by Confluence with the caller's own Basic `user:password`
    /// (users creating a token for themselves); kept nowhere.
    Mint(HeaderValue),
}

/// A PAT obtained for a new token, before it is sealed.
struct UpstreamPat {
    pat: Pat,
    minted: Option<Minted>,
}

/// What undoing a mint needs: Confluence's id and the owner's credentials.
struct Minted {
    id: String,
    authorization: HeaderValue,
}

/// A created (or rotated) token: the value, shown this once, and what was
/// stored.
pub struct CreatedToken {
    pub value: String,
    pub record: TokenRecord,
}

/// A token rotating itself (SPEC §18): the secret it presented, which
/// unseals its PAT, and the stored hash that secret matched. The rotation
/// applies only while that hash is still the token's current one.
#[derive(Debug, Clone, Copy)]
pub struct SelfRotation<'a> {
    pub secret: &'a str,
    pub hash: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// 400: a field is invalid. `line`/`column` locate a rule error.
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
        line: Option<usize>,
        column: Option<usize>,
    },
    /// 409: the custom value equals an existing token.
    #[error("a token with this value already exists")]
    Duplicate,
    /// 404: no token with that id.
    #[error("no token with id {0}")]
    NotFound(String),
    /// 409: another rotation of the token won the race, or replaced the
    /// secret a token rotating itself presented.
    #[error("token {0} was rotated by another request meanwhile: nothing changed")]
    RotatedMeanwhile(String),
    /// 400: an update that names nothing to change.
    #[error("nothing to change: give label, limitTo, ip, rateLimit, enforce or spaces")]
    NothingToChange,
    /// 404: no calls to suggest rules from.
    #[error(
        "token {id} made no allowed or reported calls in the last {days} days (is the audit log on?): nothing to suggest rules from"
    )]
    NothingObserved { id: String, days: u32 },
    /// 500: the proposal failed its own check (a defect, logged).
    #[error(transparent)]
    Suggest(SuggestError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hash(#[from] HashError),
    /// Confluence could not be asked (502, 504): nothing was stored.
    #[error("{}", .0.message)]
    Upstream(GatewayError),
}

impl TokenError {
    fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        TokenError::Invalid {
            field,
            message: message.into(),
            line: None,
            column: None,
        }
    }
}

/// Where a change to a token takes effect in this process at once: the
/// gateway's verified tokens. Other processes learn it from the store's
/// change feed, within a second.
pub trait TokenCache: Send + Sync {
    fn changed(&self, kind: ChangeKind, id: &str);
}

/// Creates, lists, changes and deletes tokens.
#[derive(Clone)]
pub struct TokenManager {
    pub store: Arc<dyn TokenStore>,
    /// Every change raises its event (SPEC §18), whoever made it.
    pub events: Arc<Notifier>,
    /// ... and leaves its audit entry.
    pub audit: AuditLog,
    pub hasher: Arc<Hasher>,
    /// The gateway's verified tokens; `None` in a one-shot command, which
    /// verifies none.
    pub cache: Option<Arc<dyn TokenCache>>,
    pub clock: Arc<dyn Clock>,
    pub upstream: Arc<Confluence>,
    pub policy: TokenPolicy,
}

/// The rules every new token follows, from the configuration.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    pub max_days_until_expiry: Option<u32>,
    pub max_tokens_per_user: u32,
    pub forward_as: ForwardAs,
    pub seal_key: Option<SealKey>,
}

impl TokenManager {
    /// Creates a token: validated like every input (a bad field is named),
    /// within the user's token limit, with its personal access token in pat
    /// mode. Nothing is stored when any step fails, and a PAT minted for it
    /// is revoked again.
    pub async fn create(&self, new: NewToken, actor: &Actor) -> Result<CreatedToken, TokenError> {
        let restrictions = new.restrictions()?;
        let user = validate_user(new.user.as_deref())?;
        let days = self.validate_days(new.days_until_expiry)?;
        self.check_pat_mode(user.as_deref(), new.token.is_some(), new.pat.is_some())?;
        if let Some(user) = &user {
            self.check_room_for(user).await?;
        }
        let value = match new.token {
            Some(custom) => self.validate_custom_value(custom).await?,
            None => token::generate(),
        };
        let id = new_id();
        let upstream = match (new.pat, &user) {
            (Some(source), Some(user)) => Some(self.obtain_pat(source, user, &restrictions.label, &id, days).await?),
            _ => None,
        };
        let created_at = self.clock.now_ms();
        let Restrictions {
            label,
            limit_to,
            ip,
            rate_limit,
            enforce,
            spaces,
        } = restrictions;
        let mut record = TokenRecord {
            id,
            label,
            user,
            author: actor.name.clone(),
            limit_to,
            ip,
            created_at,
            valid_until: days.map(|d| created_at + d * DAY_MS),
            token_hash: String::new(),
            lookup: token::lookup_of(&value).to_owned(),
            counter: 0,
            last_used_at: None,
            last_ip: None,
            sealed_pat: None,
            upstream_token_id: None,
            rate_limit,
            enforce,
            spaces,
            previous_hash: None,
            previous_lookup: None,
            previous_sealed_pat: None,
            grace_until: None,
        };
        if let Some(obtained) = &upstream {
            record.sealed_pat = Some(seal::seal(
                &obtained.pat,
                &value,
                &record.id,
                self.policy.seal_key.as_ref(),
            ));
            record.upstream_token_id = obtained.minted.as_ref().map(|minted| minted.id.clone());
        }
        let stored = self.store_new(&mut record, &value).await;
        if let (
            Err(_) | Ok(false),
            Some(UpstreamPat {
                minted: Some(minted), ..
            }),
        ) = (&stored, &upstream)
        {
            // The token will not exist: its freshly minted PAT must not either.
            self.upstream.revoke_pat(&minted.authorization, &minted.id).await;
        }
        if !stored? {
            return Err(self.limit_reached(record.user.as_deref().unwrap_or_default()));
        }
        self.recorded(Change::Create(&record), actor).await;
        self.events.raise(Event::Created(&record)).await;
        Ok(CreatedToken { value, record })
    }

    /// Hashes the value into the record and inserts it within the user's limit.
    async fn store_new(&self, record: &mut TokenRecord, value: &str) -> Result<bool, TokenError> {
        record.token_hash = self.hasher.hash(value).await?;
        let limit = record.user.as_ref().map(|_| u64::from(self.policy.max_tokens_per_user));
        Ok(self.store.insert_token(record, limit).await?)
    }

    /// With `forward_as = "pat"` every token is bound, has a generated value
    /// and a PAT; in header mode a PAT has no use.
    fn check_pat_mode(&self, user: Option<&str>, custom_value: bool, has_pat: bool) -> Result<(), TokenError> {
        match self.policy.forward_as {
            ForwardAs::Header if has_pat => Err(TokenError::invalid(
                "upstreamToken",
                "upstreamToken is used only with forward_as = \"pat\"; this gateway sends the identity header",
            )),
            ForwardAs::Header => Ok(()),
            ForwardAs::Pat if user.is_none() => Err(TokenError::invalid(
                "userName",
                "with forward_as = \"pat\" every token acts as one user, with that user's personal access token: give userName",
            )),
            ForwardAs::Pat if custom_value => Err(TokenError::invalid(
                "token",
                "with forward_as = \"pat\" token values are always generated: leave token out",
            )),
            ForwardAs::Pat if !has_pat => Err(TokenError::invalid(
                "upstreamToken",
                "with forward_as = \"pat\" a token needs its user's Confluence personal access token: \
                 the user can create the token with their own password, or give one in upstreamToken",
            )),
            ForwardAs::Pat => Ok(()),
        }
    }

    /// 400 (field `userName`) when `user` already holds the most tokens one user may.
    async fn check_room_for(&self, user: &str) -> Result<(), TokenError> {
        let query = TokenQuery {
            user: Some(user.to_owned()),
            max_results: 0,
            ..TokenQuery::default()
        };
        let held = self.store.list_tokens(&query).await?.total;
        if held >= u64::from(self.policy.max_tokens_per_user) {
            return Err(self.limit_reached(user));
        }
        Ok(())
    }

    fn limit_reached(&self, user: &str) -> TokenError {
        TokenError::invalid(
            "userName",
            format!(
                "{user} already holds {} tokens, the most one user may (max_tokens_per_user): delete one first",
                self.policy.max_tokens_per_user
            ),
        )
    }

    /// The user's PAT: a supplied one once Confluence confirms it acts as
    /// `user`, or one Confluence mints with the caller's password.
    async fn obtain_pat(
        &self,
        source: PatSource,
        user: &str,
        label: &str,
        id: &str,
        days: Option<i64>,
    ) -> Result<UpstreamPat, TokenError> {
        let refused = |message: String| TokenError::invalid("upstreamToken", message);
        match source {
            PatSource::Supplied(pat) => {
                // A gateway token in the wrong field is never sent to Confluence (SPEC §12).
                if pat.as_str().contains(crate::secrets::TOKEN_PREFIX) {
                    return Err(refused(
                        "upstreamToken is a gateway token: give the user's Confluence personal access token".into(),
                    ));
                }
                let authorization = pat.bearer().ok_or_else(|| {
                    refused("upstreamToken is not a personal access token (it cannot be sent in a header)".into())
                })?;
                match self.upstream.current_user(&authorization).await {
                    Ok(Some(owner)) if owner.eq_ignore_ascii_case(user) => Ok(UpstreamPat { pat, minted: None }),
                    Ok(Some(owner)) => Err(refused(format!(
                        "this personal access token belongs to {owner}, not {user}: give one of {user}'s"
                    ))),
                    Ok(None) => Err(refused(
                        "Confluence does not accept this personal access token (revoked, expired or mistyped): \
                         create a new one in Confluence under Settings > Personal Access Tokens"
                            .into(),
                    )),
                    Err(e) => Err(TokenError::Upstream(e)),
                }
            }
            PatSource::Mint(authorization) => {
                let name = format!("tokengate: {label} ({id})");
                let lifetime = days.unwrap_or(MINTED_PAT_DAYS_WITHOUT_EXPIRY);
                match self.upstream.mint_pat(&authorization, &name, lifetime).await {
                    Ok(mut minted) => Ok(UpstreamPat {
                        // Moved out of the zeroizing buffer, never copied.
                        pat: Pat::new(std::mem::take(&mut *minted.raw)),
                        minted: Some(Minted {
                            id: minted.id,
                            authorization,
                        }),
                    }),
                    Err(MintError::Refused(message)) => Err(refused(format!(
                        "Confluence did not create a personal access token ({message}): \
                         ask your Confluence admin whether personal access tokens are enabled, \
                         or give one in upstreamToken"
                    ))),
                    Err(MintError::Unavailable(e)) => Err(TokenError::Upstream(e)),
                }
            }
        }
    }

    pub async fn list(&self, query: &TokenQuery) -> Result<Page<ListedToken>, TokenError> {
        Ok(self.store.list_tokens(query).await?)
    }

    /// One token, by id.
    pub async fn get(&self, id: &str) -> Result<TokenRecord, TokenError> {
        self.store
            .token(id)
            .await?
            .ok_or_else(|| TokenError::NotFound(id.to_owned()))
    }

    /// Changes a token's restrictions, validated exactly as a create
    /// validates them (SPEC §16). Takes effect in this process at once, and
    /// in every other within a second (through the store's change feed, as
    /// deletions do). `NotFound` when the token does not exist, or was
    /// deleted meanwhile.
    pub async fn update(&self, id: &str, change: RestrictionsChange, actor: &Actor) -> Result<Updated, TokenError> {
        if change.is_empty() {
            return Err(TokenError::NothingToChange);
        }
        let before = self.get(id).await?;
        let restrictions = change.apply_to(&before)?;
        let after = self
            .store
            .update_token(id, &restrictions, self.clock.now_ms())
            .await?
            .ok_or_else(|| TokenError::NotFound(id.to_owned()))?;
        self.takes_effect(ChangeKind::Update, id);
        let updated = Updated { before, after };
        self.recorded(Change::Update(&updated), actor).await;
        self.events
            .raise(Event::Updated(&updated.after, updated.changes()))
            .await;
        Ok(updated)
    }

    /// Gives token `id` a new secret (SPEC §18), returned this once; id,
    /// rules, usage and expiry stay. The replaced secret keeps working for
    /// `grace_hours` (default 24, at most 168; 0: it stops at once), and a
    /// rotation ends any earlier grace. `presented` is the current secret
    /// when the token rotates itself: the only way with a PAT, which is
    /// sealed under the secret and is sealed again under the new one (and
    /// stays readable with the old one until the grace ends).
    pub async fn rotate(
        &self,
        id: &str,
        grace_hours: Option<i64>,
        itself: Option<SelfRotation<'_>>,
        actor: &Actor,
    ) -> Result<CreatedToken, TokenError> {
        let grace_hours = grace_hours.unwrap_or(DEFAULT_GRACE_HOURS);
        if !(0..=MAX_GRACE_HOURS).contains(&grace_hours) {
            return Err(TokenError::invalid(
                "graceHours",
                format!("graceHours must be 0 to {MAX_GRACE_HOURS}"),
            ));
        }
        let before = self.get(id).await?;
        // A token rotates itself only with its current secret: one replaced
        // since it was checked (by a rotation elsewhere, or while its body
        // was read) must not take the token back.
        if itself.as_ref().is_some_and(|itself| itself.hash != before.token_hash) {
            return Err(TokenError::RotatedMeanwhile(id.to_owned()));
        }
        let sealed_pat = match (&before.sealed_pat, itself.map(|itself| itself.secret)) {
            (None, _) if self.policy.forward_as == ForwardAs::Header => None,
            (Some(sealed), Some(secret)) => Some(self.reseal(&before, sealed, secret)?),
            _ => {
                return Err(TokenError::invalid(
                    "id",
                    "with forward_as = \"pat\" a token is rotated only by itself: call /rotate with the token \
                     (its secret unseals the personal access token it carries, to seal it under the new one)",
                ));
            }
        };
        let value = token::generate();
        let now = self.clock.now_ms();
        let rotation = Rotation {
            replaces: before.token_hash.clone(),
            token_hash: self.hasher.hash(&value).await?,
            lookup: token::lookup_of(&value).to_owned(),
            sealed_pat: sealed_pat.map(|pat| seal::seal(&pat, &value, id, self.policy.seal_key.as_ref())),
            grace_until: (grace_hours > 0).then(|| now + grace_hours * HOUR_MS),
        };
        let record = match self.store.rotate_token(id, &rotation, now).await? {
            Some(record) => record,
            None if self.store.token(id).await?.is_some() => return Err(TokenError::RotatedMeanwhile(id.to_owned())),
            None => return Err(TokenError::NotFound(id.to_owned())),
        };
        self.takes_effect(ChangeKind::Update, id);
        self.recorded(Change::Rotate(&record), actor).await;
        self.events.raise(Event::Rotated(&record)).await;
        Ok(CreatedToken { value, record })
    }

    /// The token's PAT, opened with its current secret.
    fn reseal(&self, record: &TokenRecord, sealed: &[u8], secret: &str) -> Result<Pat, TokenError> {
        seal::unseal(sealed, secret, &record.id, self.policy.seal_key.as_ref()).map_err(|_| {
            TokenError::invalid(
                "id",
                "the token's personal access token does not open with the secret presented: rotate with the token's current secret",
            )
        })
    }

    /// Rules proposed from token `id`'s allowed and reported calls of the
    /// last `days` days (SPEC §16), checked against every one of them.
    pub async fn suggest(&self, id: &str, days: u32) -> Result<Suggested, TokenError> {
        if !(1..=MAX_SUGGEST_DAYS).contains(&days) {
            return Err(TokenError::invalid(
                "days",
                format!("days must be between 1 and {MAX_SUGGEST_DAYS}"),
            ));
        }
        let token = self.get(id).await?;
        let since = self.clock.now_ms() - i64::from(days) * DAY_MS;
        let observed = self.store.observed_calls(&token.id, since).await?;
        let calls: Vec<Call<'_>> = observed
            .iter()
            .map(|call| Call {
                method: &call.method,
                path: &call.path,
                calls: u64::try_from(call.calls).unwrap_or(0),
            })
            .collect();
        let suggestion = match suggest::suggest(&calls) {
            Ok(suggestion) => suggestion,
            Err(SuggestError::NothingObserved) => {
                return Err(TokenError::NothingObserved { id: token.id, days });
            }
            Err(defect) => return Err(TokenError::Suggest(defect)),
        };
        Ok(Suggested {
            token_id: token.id,
            days,
            suggestion,
        })
    }

    /// Deletes one token; it stops working in this process at once. Returns
    /// what was deleted.
    pub async fn delete(&self, id: &str, actor: &Actor) -> Result<TokenRecord, TokenError> {
        let deleted = self
            .store
            .delete_token(id, self.clock.now_ms())
            .await?
            .ok_or_else(|| TokenError::NotFound(id.to_owned()))?;
        self.takes_effect(ChangeKind::Delete, id);
        self.recorded(Change::Delete(&deleted), actor).await;
        self.events.raise(Event::Deleted(&deleted)).await;
        Ok(deleted)
    }

    /// Revokes in Confluence the PATs the gateway minted for `deleted`
    /// tokens, with their owner's Basic `authorization` (SPEC §13). `None`
    /// when none of them had one; else whether Confluence revoked them all.
    pub async fn revoke_minted(&self, deleted: &[TokenRecord], authorization: &HeaderValue) -> Option<bool> {
        let mut revoked = None;
        for id in deleted.iter().filter_map(|token| token.upstream_token_id.as_deref()) {
            let done = self.upstream.revoke_pat(authorization, id).await;
            revoked = Some(revoked.unwrap_or(true) && done);
        }
        revoked
    }

    /// Deletes every token bound to `user`; returns them.
    pub async fn delete_user(&self, user: &str, actor: &Actor) -> Result<Vec<TokenRecord>, TokenError> {
        let user = validate_user(Some(user))?.ok_or_else(|| TokenError::invalid("userName", "userName is empty"))?;
        let deleted = self.store.delete_user_tokens(&user, self.clock.now_ms()).await?;
        for token in &deleted {
            self.takes_effect(ChangeKind::Delete, &token.id);
        }
        let change = Change::DeleteUser {
            user: &user,
            deleted: deleted.len(),
        };
        self.recorded(change, actor).await;
        for token in &deleted {
            self.events.raise(Event::Deleted(token)).await;
        }
        Ok(deleted)
    }

    /// Makes a change take effect in this process at once.
    fn takes_effect(&self, kind: ChangeKind, id: &str) {
        if let Some(cache) = &self.cache {
            cache.changed(kind, id);
        }
    }

    /// Writes a change's audit entry: whatever the `auditLog` setting says,
    /// which switches the logging of token requests, not of changes to
    /// tokens. Flushed before the change returns, so a one-shot CLI
    /// command's entry is stored when it exits.
    async fn recorded(&self, change: Change<'_>, actor: &Actor) {
        self.audit.record(change.entry(actor, self.clock.now_ms())).await;
        self.audit.flush().await;
    }

    /// Absent or 0 is no expiry, or the configured maximum when there is one.
    fn validate_days(&self, days: Option<i64>) -> Result<Option<i64>, TokenError> {
        let max = self.policy.max_days_until_expiry.map(i64::from);
        match (days.unwrap_or(0), max) {
            (d, _) if d < 0 => Err(TokenError::invalid(
                "daysUntilExpiry",
                "daysUntilExpiry must not be negative",
            )),
            (0, max) => Ok(max),
            (d, Some(max)) if d > max => Err(TokenError::invalid(
                "daysUntilExpiry",
                format!("daysUntilExpiry must be at most {max}"),
            )),
            (d, _) if d > 365 * 1000 => Err(TokenError::invalid("daysUntilExpiry", "daysUntilExpiry is too large")),
            (d, _) => Ok(Some(d)),
        }
    }

    async fn validate_custom_value(&self, value: String) -> Result<String, TokenError> {
        token::validate_custom(&value).map_err(|m| TokenError::invalid("token", m))?;
        let candidates = self.store.tokens_by_lookup(token::lookup_of(&value)).await?;
        if self
            .hasher
            .find(candidates, &value, self.clock.now_ms())
            .await?
            .is_some()
        {
            return Err(TokenError::Duplicate);
        }
        Ok(value)
    }
}

/// Rules suggested for a token.
#[derive(Debug)]
pub struct Suggested {
    pub token_id: String,
    pub days: u32,
    pub suggestion: Suggestion,
}
