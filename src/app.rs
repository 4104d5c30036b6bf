//! The gateway's shared state: one `Clone` struct of `Arc`s, built once at
//! start-up from the validated configuration and handed to every connection.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::auth::{Authenticator, IdentityCheck, PatMode, RateLimits, Sessions, Verifier};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ForwardAs};
use crate::confluence::Confluence;
use crate::notify::Notifier;
use crate::proxy::headers::ProtectedHeaders;
use crate::proxy::{Tunnels, UpstreamClient};
use crate::record::{self, AuditLog, Metrics, RefusalLog, ThrottleTally, UsageBook};
use crate::secrets::{Hasher, SealKey};
use crate::settings::LiveSettings;
use crate::spaces::Spaces;
use crate::store::{self, StoreError, TokenStore};
use crate::tokens::{TokenCache, TokenManager, TokenPolicy};

#[derive(Clone)]
pub struct App {
    pub config: Arc<Config>,
    pub store: Arc<dyn TokenStore>,
    /// Turns what a client presented into a principal (tokens and passwords).
    pub auth: Arc<Authenticator>,
    pub tokens: TokenManager,
    pub upstream: Arc<UpstreamClient>,
    /// Confines tokens with `spaces` (SPEC §17).
    pub spaces: Arc<Spaces>,
    /// Token events and the webhook (SPEC §18).
    pub events: Arc<Notifier>,
    pub clock: Arc<dyn Clock>,
    pub protected_headers: Arc<ProtectedHeaders>,
    pub settings: Arc<LiveSettings>,
    pub usage: Arc<UsageBook>,
    pub audit: AuditLog,
    /// Requests refused 429 `too_many_failures`, counted per client and minute.
    pub throttled: Arc<ThrottleTally>,
    /// How many refusals of each client were logged this minute.
    pub refusal_log: Arc<RefusalLog>,
    pub metrics: Arc<Metrics>,
    /// Whom Confluence served each token request as (SPEC §19).
    pub identity_check: Arc<IdentityCheck>,
    /// Upgraded connections (WebSocket).
    pub tunnels: Arc<Tunnels>,
}

/// Audit entries that may wait in memory before requests start waiting.
const AUDIT_QUEUE: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Client(#[from] crate::proxy::ClientSetupError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("seal_key_file {path}: {message}")]
    SealKey { path: String, message: String },
}

/// The smallest seal key accepted: 128 bits.
const MIN_SEAL_KEY_BYTES: usize = 16;

/// Reads `seal_key_file`: its whole contents are the key.
fn read_seal_key(path: &std::path::Path) -> Result<SealKey, StartError> {
    let error = |message: String| StartError::SealKey {
        path: path.display().to_string(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    if bytes.len() < MIN_SEAL_KEY_BYTES {
        return Err(error(format!(
            "holds {} bytes; a seal key needs at least {MIN_SEAL_KEY_BYTES} (e.g. `openssl rand -out FILE 32`)",
            bytes.len()
        )));
    }
    Ok(SealKey::new(bytes))
}

/// The token service alone over the configured store (migrations
/// applied): what a one-shot command needs. None of the gateway's serving
/// state is built: no verified cache, rate limits (nor their Redis),
/// sessions or spaces; a change reaches running gateways through the
/// store's change feed.
pub async fn open_token_service(config: &Config) -> Result<TokenManager, StartError> {
    let store = store::open(&config.database_url).await?;
    let metrics = Metrics::new();
    let upstream = Arc::new(UpstreamClient::new(config, metrics.upstream_connects.clone())?);
    let confluence = Arc::new(Confluence::new(upstream));
    let service = TokenService {
        store,
        clock: Arc::new(SystemClock),
        confluence,
        hasher: Arc::new(Hasher::new(config.argon2, metrics)),
        seal_key: config.seal_key_file.as_deref().map(read_seal_key).transpose()?,
        cache: None,
    };
    service.build(config)
}

/// What the token service is built from, beside the configuration.
struct TokenService {
    store: Arc<dyn TokenStore>,
    clock: Arc<dyn Clock>,
    confluence: Arc<Confluence>,
    hasher: Arc<Hasher>,
    seal_key: Option<SealKey>,
    /// The gateway's verified tokens; `None` in a one-shot command.
    cache: Option<Arc<dyn TokenCache>>,
}

impl TokenService {
    /// The service as configured, with its own events and audit writer.
    fn build(self, config: &Config) -> Result<TokenManager, StartError> {
        Ok(TokenManager {
            events: Arc::new(Notifier::new(config, self.store.clone(), self.clock.clone())?),
            audit: AuditLog::start(self.store.clone(), AUDIT_QUEUE),
            hasher: self.hasher,
            cache: self.cache,
            store: self.store,
            clock: self.clock,
            upstream: self.confluence,
            policy: TokenPolicy {
                max_days_until_expiry: config.max_days_until_expiry,
                max_tokens_per_user: config.max_tokens_per_user,
                forward_as: config.forward_as,
                seal_key: self.seal_key,
            },
        })
    }
}

impl App {
    /// Opens the configured store for the gateway, which starts even while
    /// PostgreSQL is unavailable (see [`store::open_for_serving`]).
    pub async fn open_for_serving(config: Config) -> Result<App, StartError> {
        let store = store::open_for_serving(&config.database_url).await?;
        App::with_store(config, store, Arc::new(SystemClock)).await
    }

    /// Builds the state around an already open store and a clock (tests move
    /// time). A store that does not answer yet leaves the settings at their
    /// defaults until the server's refresh reads them.
    pub async fn with_store(
        config: Config,
        store: Arc<dyn TokenStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<App, StartError> {
        let config = Arc::new(config);
        let settings = Arc::new(LiveSettings::load(store.clone()).await);
        let metrics = Metrics::new();
        let usage = Arc::new(UsageBook::default());
        let upstream = Arc::new(UpstreamClient::new(&config, metrics.upstream_connects.clone())?);
        // The gateway's own calls to Confluence, over the same connections.
        let confluence = Arc::new(Confluence::new(upstream.clone()));
        let seal_key = config.seal_key_file.as_deref().map(read_seal_key).transpose()?;
        let hasher = Arc::new(Hasher::new(config.argon2, metrics.clone()));
        let pat_mode = (config.forward_as == ForwardAs::Pat).then(|| PatMode {
            upstream: confluence.clone(),
            seal_key: seal_key.clone(),
            clock: clock.clone(),
        });
        let limits =
            Arc::new(RateLimits::start(clock.clone(), config.rate_limit_redis.as_deref(), metrics.clone()).await);
        let verifier = Arc::new(Verifier::new(
            store.clone(),
            hasher.clone(),
            config.verify_cache_ttl,
            metrics.clone(),
            usage.clone(),
            limits.clone(),
            pat_mode,
            clock.clone(),
        ));
        let tokens = TokenService {
            store: store.clone(),
            clock: clock.clone(),
            confluence: confluence.clone(),
            hasher,
            seal_key,
            cache: Some(verifier.clone()),
        }
        .build(&config)?;
        let (events, audit) = (tokens.events.clone(), tokens.audit.clone());
        let sessions = Sessions::new(store.clone(), clock.clone(), config.ui_session, config.ui_idle);
        let auth = Authenticator::new(
            config.clone(),
            verifier,
            limits,
            sessions,
            confluence.clone(),
            clock.clone(),
        );
        let protected_headers = ProtectedHeaders::new(&[&config.identity_header, &config.upstream_secret_header]);
        let spaces = Arc::new(Spaces::new(&config, confluence, clock.clone(), metrics.clone()));
        let mismatches = match config.forward_as {
            ForwardAs::Header => &metrics.identity_mismatches[0],
            ForwardAs::Pat => &metrics.identity_mismatches[1],
        };
        let identity_check = IdentityCheck::new(config.forward_as, config.identity_header.clone(), mismatches.clone());
        Ok(App {
            identity_check: Arc::new(identity_check),
            tunnels: Arc::new(Tunnels::new(metrics.tunnels_open.clone())),
            throttled: Arc::default(),
            refusal_log: Arc::default(),
            auth: Arc::new(auth),
            upstream,
            spaces,
            events,
            tokens,
            clock,
            protected_headers: Arc::new(protected_headers),
            settings,
            usage,
            audit,
            metrics,
            store,
            config,
        })
    }

    /// Writes out what is pending: usage counters, the counts of throttled
    /// clients (the minute under way too), and queued audit entries.
    pub async fn flush_records(&self) {
        self.record_throttled(true).await;
        record::flush(&self.usage, &self.audit, self.store.as_ref()).await;
    }

    /// Records the counts of throttled clients whose minute has ended (or
    /// all of them): one audit entry and one `auth.throttled` event per
    /// client and minute (SPEC §12).
    pub async fn record_throttled(&self, all: bool) {
        for minute in self.throttled.take(self.clock.now_ms(), all) {
            // An IPv6 client is throttled, and counted, by its /64.
            let address = minute.client_ip.map(|ip| match ip {
                std::net::IpAddr::V6(_) => format!("{ip}/64"),
                std::net::IpAddr::V4(_) => ip.to_string(),
            });
            let client = address
                .clone()
                .unwrap_or_else(|| "clients beyond the 1 000 counted".to_owned());
            tracing::warn!(client.ip = %client, refused = minute.refused, "client refused for too many failed attempts");
            self.audit
                .record(crate::store::AuditEntry {
                    at: minute.minute,
                    kind: crate::store::AuditKind::Request,
                    token_id: None,
                    token_label: None,
                    user: None,
                    client_ip: address,
                    method: None,
                    path: None,
                    status: Some(429),
                    decision: record::Decision::Deny.label().to_owned(),
                    reason: Some(crate::error::Reason::TooManyFailures.code().to_owned()),
                    duration_ms: None,
                    detail: Some(format!(
                        "{} requests refused in this minute for too many failed attempts",
                        minute.refused
                    )),
                })
                .await;
            if let Some(ip) = minute.client_ip {
                self.events.client_throttled(ip, minute.minute, minute.refused).await;
            }
        }
    }

    /// Housekeeping: old audit entries, revocations, and sent events.
    pub async fn purge_expired(&self) {
        record::purge_expired(
            self.store.as_ref(),
            self.clock.now_ms(),
            self.config.audit_retention_days,
        )
        .await;
        // Delivered and abandoned events are kept a week, for inspection.
        let before = self.clock.now_ms() - 7 * crate::clock::DAY_MS;
        if let Err(e) = self.store.purge_events(before).await {
            tracing::warn!(error = %e, "cannot purge sent events");
        }
    }
}

/// A gateway's state over a throwaway SQLite store, with a clock the test
/// moves and cheap argon2: for the tests that drive the pipeline without
/// sockets. The directory holds the store; keep it alive.
#[cfg(test)]
pub async fn test_app(adjust: impl FnOnce(&mut Config)) -> (App, Arc<crate::clock::ManualClock>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut config = Config {
        database_url: format!("sqlite://{}/tokengate.db", dir.path().display()),
        argon2: crate::config::Argon2Cost::CHEAP,
        ..Config::default()
    };
    adjust(&mut config);
    let store = Arc::new(
        store::SqliteStore::open(&config.database_url)
            .await
            .expect("the store opens"),
    );
    let clock = crate::clock::ManualClock::starting_now();
    let app = App::with_store(config, store, clock.clone())
        .await
        .expect("the state builds");
    (app, clock, dir)
}
