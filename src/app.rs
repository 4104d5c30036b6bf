//! The gateway's shared state: one `Clone` struct of `Arc`s, built once at
//! start-up from the validated configuration and handed to every connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::admin::AdminState;
use crate::auth::token;
use crate::auth::{FailureThrottle, Verifier};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::proxy::UpstreamClient;
use crate::proxy::headers::ProtectedHeaders;
use crate::record::{AuditLog, Metrics, UsageBook};
use crate::store::{self, Settings, StoreError, TokenStore};
use crate::tokens::TokenManager;

#[derive(Clone)]
pub struct App {
    pub config: Arc<Config>,
    pub store: Arc<dyn TokenStore>,
    pub verifier: Arc<Verifier>,
    pub tokens: TokenManager,
    pub upstream: Arc<UpstreamClient>,
    pub clock: Arc<dyn Clock>,
    pub protected_headers: Arc<ProtectedHeaders>,
    pub settings: Arc<LiveSettings>,
    pub usage: Arc<UsageBook>,
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
    pub throttle: Arc<FailureThrottle>,
    pub admin: Arc<AdminState>,
}

/// Audit entries that may wait in memory before requests start waiting.
const AUDIT_QUEUE: usize = 10_000;

/// The settings as the hot path reads them: atomics, so a request never
/// waits on a lock or the store. The store holds the persistent copy, which
/// other processes (replicas) may change: [`LiveSettings::refresh`] follows it.
#[derive(Debug)]
pub struct LiveSettings {
    usage_details: AtomicBool,
    audit_log: AtomicBool,
    /// The stored settings last seen; `None` before the store first answered.
    /// A std mutex: taken only by refreshes, never across an await.
    last_stored: Mutex<Option<Settings>>,
}

impl LiveSettings {
    /// Settings just read from the store.
    pub fn new(settings: Settings) -> Self {
        LiveSettings {
            usage_details: AtomicBool::new(settings.usage_details),
            audit_log: AtomicBool::new(settings.audit_log),
            last_stored: Mutex::new(Some(settings)),
        }
    }

    /// The defaults, for a start while the store does not answer: the first
    /// [`refresh`](Self::refresh) replaces them with the stored settings.
    pub fn unloaded() -> Self {
        let live = LiveSettings::new(Settings::default());
        *live.last_stored.lock().expect("settings lock poisoned") = None;
        live
    }

    /// Takes the stored settings when they changed since last seen (another
    /// process switched them), or were never seen. Unchanged stored settings
    /// leave the live ones alone, so a refresh never undoes a change made
    /// here that is still on its way to the store.
    pub fn refresh(&self, stored: Settings) {
        let mut last = self.last_stored.lock().expect("settings lock poisoned");
        if *last != Some(stored) {
            if last.is_some() {
                tracing::info!(
                    usage_details = stored.usage_details,
                    audit_log = stored.audit_log,
                    "settings changed in the store"
                );
            }
            self.set(stored);
            *last = Some(stored);
        }
    }

    pub fn get(&self) -> Settings {
        Settings {
            usage_details: self.usage_details.load(Ordering::Relaxed),
            audit_log: self.audit_log.load(Ordering::Relaxed),
        }
    }

    pub fn set(&self, settings: Settings) {
        self.usage_details.store(settings.usage_details, Ordering::Relaxed);
        self.audit_log.store(settings.audit_log, Ordering::Relaxed);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Client(#[from] crate::proxy::ClientSetupError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

impl App {
    /// Opens the configured store (applying migrations) and builds the state;
    /// fails when the store does not answer. For one-shot commands.
    pub async fn open(config: Config) -> Result<App, StartError> {
        let store = store::open(&config.database_url).await?;
        App::with_store(config, store, Arc::new(SystemClock)).await
    }

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
        let settings = match store.settings().await {
            Ok(stored) => LiveSettings::new(stored),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the settings yet; using the defaults until the store answers");
                LiveSettings::unloaded()
            }
        };
        let settings = Arc::new(settings);
        let metrics = Metrics::new();
        let usage = Arc::new(UsageBook::default());
        let verifier = Arc::new(Verifier::new(
            store.clone(),
            token::hasher(config.argon2),
            config.verify_cache_ttl,
            metrics.clone(),
            usage.clone(),
        ));
        let tokens = TokenManager {
            store: store.clone(),
            verifier: verifier.clone(),
            clock: clock.clone(),
            max_days_until_expiry: config.max_days_until_expiry,
        };
        let protected_headers = ProtectedHeaders::new(&[&config.identity_header, &config.upstream_secret_header]);
        let throttle = Arc::new(FailureThrottle::new(config.failed_auth_per_minute));
        Ok(App {
            throttle,
            upstream: Arc::new(UpstreamClient::new(&config)?),
            config: Arc::new(config),
            verifier,
            tokens,
            clock,
            protected_headers: Arc::new(protected_headers),
            settings,
            usage,
            audit: AuditLog::start(store.clone(), AUDIT_QUEUE),
            metrics,
            store,
            admin: Arc::default(),
        })
    }
}
