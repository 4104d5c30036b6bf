//! argon2id work, off the async threads: at most one job per core on
//! tokio's blocking pool, each counted and timed in the metrics. One
//! [`Hasher`] serves the gateway's verifier (which checks presented
//! secrets) and the token service (which hashes new ones and refuses a
//! custom value that is already a token's).

use std::sync::Arc;
use std::time::Instant;

use argon2::Argon2;
use tokio::sync::Semaphore;

use super::token;
use crate::clock::EpochMs;
use crate::config::Argon2Cost;
use crate::record::Metrics;
use crate::store::TokenRecord;

/// The blocking pool did not run an argon2 job to its end (it panicked,
/// or the runtime is shutting down).
#[derive(Debug, Clone, thiserror::Error)]
#[error("argon2 task failed: {0}")]
pub struct HashError(pub String);

pub struct Hasher {
    argon2: Argon2<'static>,
    slots: Semaphore,
    metrics: Arc<Metrics>,
}

impl Hasher {
    pub fn new(cost: Argon2Cost, metrics: Arc<Metrics>) -> Self {
        let slots = std::thread::available_parallelism().map_or(2, usize::from);
        Hasher {
            argon2: token::hasher(cost),
            slots: Semaphore::new(slots),
            metrics,
        }
    }

    /// The argon2id PHC string for a new token value.
    pub async fn hash(&self, value: &str) -> Result<String, HashError> {
        let value = value.to_owned();
        self.off_thread(move |argon2| token::hash(&argon2, &value))
            .await?
            .map_err(|e| HashError(e.to_string()))
    }

    /// The record among `candidates` (the rows that share the secret's
    /// lookup prefix) whose hash matches `secret`, and that hash: the
    /// current secret's, or a replaced one's still in grace at `now`. A
    /// replaced secret whose grace is over costs no argon2.
    pub async fn find(
        &self,
        candidates: Vec<TokenRecord>,
        secret: &str,
        now: EpochMs,
    ) -> Result<Option<(TokenRecord, String)>, HashError> {
        let lookup = token::lookup_of(secret);
        for record in candidates {
            let mut hashes = Vec::with_capacity(2);
            if record.lookup == lookup {
                hashes.push(record.token_hash.clone());
            }
            if record.previous_lookup.as_deref() == Some(lookup) && record.grace_until.is_some_and(|until| until > now)
            {
                hashes.extend(record.previous_hash.clone());
            }
            for hash in hashes {
                if self.verify(secret, &hash).await? {
                    return Ok(Some((record, hash)));
                }
            }
        }
        Ok(None)
    }

    async fn verify(&self, secret: &str, phc: &str) -> Result<bool, HashError> {
        let (secret, phc) = (secret.to_owned(), phc.to_owned());
        self.off_thread(move |_| token::verify(&secret, &phc)).await
    }

    /// Runs argon2 work on the blocking pool, at most one job per core.
    async fn off_thread<T: Send + 'static>(
        &self,
        job: impl FnOnce(Argon2<'static>) -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let _slot = self.slots.acquire().await.map_err(|e| HashError(e.to_string()))?;
        self.metrics.argon2_checks.inc();
        let argon2 = self.argon2.clone();
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || job(argon2)).await;
        self.metrics.argon2_duration.observe(started.elapsed());
        result.map_err(|e| HashError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finds_the_current_secret_and_a_replaced_one_only_in_grace() {
        let metrics = Metrics::new();
        let hasher = Hasher::new(Argon2Cost::CHEAP, metrics.clone());
        let (old, new) = (token::generate(), token::generate());
        let record = TokenRecord {
            token_hash: hasher.hash(&new).await.unwrap(),
            lookup: token::lookup_of(&new).to_owned(),
            previous_hash: Some(hasher.hash(&old).await.unwrap()),
            previous_lookup: Some(token::lookup_of(&old).to_owned()),
            grace_until: Some(1_000),
            ..crate::store::test_record("t1", Some("alice"), 0)
        };
        let found = hasher.find(vec![record.clone()], &new, 999).await.unwrap().unwrap();
        assert_eq!(found.1, record.token_hash);
        let found = hasher.find(vec![record.clone()], &old, 999).await.unwrap().unwrap();
        assert_eq!(Some(found.1), record.previous_hash);
        let checks = metrics.argon2_checks.get();
        assert!(hasher.find(vec![record.clone()], &old, 1_000).await.unwrap().is_none());
        assert_eq!(
            metrics.argon2_checks.get(),
            checks,
            "a grace that is over costs no argon2"
        );
        let stranger = token::generate();
        assert!(hasher.find(vec![record], &stranger, 0).await.unwrap().is_none());
    }
}
