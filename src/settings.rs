//! The gateway-wide switches (SPEC §5 `usageDetails`, `auditLog`) as the
//! request path reads them, and the one way they change. The store holds the
//! persistent copy, which other processes (replicas) may change:
//! [`LiveSettings::refresh`] follows it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::store::{Settings, StoreError, TokenStore};

/// The switches a change names; the others keep their value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SettingsChange {
    pub usage_details: Option<bool>,
    pub audit_log: Option<bool>,
}

impl SettingsChange {
    pub fn is_empty(&self) -> bool {
        *self == SettingsChange::default()
    }

    fn apply(self, settings: Settings) -> Settings {
        Settings {
            usage_details: self.usage_details.unwrap_or(settings.usage_details),
            audit_log: self.audit_log.unwrap_or(settings.audit_log),
        }
    }
}

/// The settings in force: atomics, so a request never waits on a lock or the store.
pub struct LiveSettings {
    store: Arc<dyn TokenStore>,
    usage_details: AtomicBool,
    audit_log: AtomicBool,
    /// The stored settings last seen; `None` before the store first answered.
    /// A std mutex: taken only by refreshes, never across an await.
    last_stored: Mutex<Option<Settings>>,
    /// Serialises changes (read the store, change some switches, save), so
    /// two concurrent changes of different switches both land. A tokio
    /// mutex because it is held across the store's awaits; only changes
    /// take it, never a request.
    changes: tokio::sync::Mutex<()>,
}

impl LiveSettings {
    /// The stored settings, or the defaults while the store does not answer
    /// (the first [`refresh`](Self::refresh) that reaches it replaces them).
    pub async fn load(store: Arc<dyn TokenStore>) -> Self {
        let stored = match store.settings().await {
            Ok(stored) => Some(stored),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the settings yet; using the defaults until the store answers");
                None
            }
        };
        let live = stored.unwrap_or_default();
        LiveSettings {
            store,
            usage_details: AtomicBool::new(live.usage_details),
            audit_log: AtomicBool::new(live.audit_log),
            last_stored: Mutex::new(stored),
            changes: tokio::sync::Mutex::new(()),
        }
    }

    pub fn get(&self) -> Settings {
        Settings {
            usage_details: self.usage_details.load(Ordering::Relaxed),
            audit_log: self.audit_log.load(Ordering::Relaxed),
        }
    }

    fn set(&self, settings: Settings) {
        self.usage_details.store(settings.usage_details, Ordering::Relaxed);
        self.audit_log.store(settings.audit_log, Ordering::Relaxed);
    }

    /// Applies a change to the stored settings and to this process at once;
    /// returns the settings now in force.
    pub async fn change(&self, change: SettingsChange) -> Result<Settings, StoreError> {
        let _one_change_at_a_time = self.changes.lock().await;
        let settings = change.apply(self.store.settings().await?);
        self.store.save_settings(settings).await?;
        self.set(settings);
        *self.last_stored.lock().expect("settings lock poisoned") = Some(settings);
        Ok(settings)
    }

    /// Reads the stored settings and takes them when they changed since last
    /// seen (another process switched them), or were never seen. Unchanged
    /// stored settings leave the live ones alone, so a refresh never undoes
    /// a change made here that is still on its way to the store.
    pub async fn refresh(&self) {
        match self.store.settings().await {
            Ok(stored) => self.take_stored(stored),
            Err(e) => tracing::debug!(error = %e, "cannot read the settings"),
        }
    }

    fn take_stored(&self, stored: Settings) {
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
}
