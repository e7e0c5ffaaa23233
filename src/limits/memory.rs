//! In-process counters for the embedded default (one process).

use std::{collections::HashMap, sync::Mutex, time::Instant};

use async_trait::async_trait;

use super::{LimitSettings, LimitStore, backoff_delay_ms};
use crate::session::StoreError;

#[derive(Default)]
struct Inner {
    windows: HashMap<String, (u64, Instant)>,
    /// failures, waiting until (unix ms), forgotten at
    backoffs: HashMap<String, (u64, u64, Instant)>,
    writes: usize,
}

impl Inner {
    /// Drops expired entries every 1024 writes, so memory follows the live keys.
    fn after_write(&mut self) {
        self.writes += 1;
        if self.writes.is_multiple_of(1024) {
            let now = Instant::now();
            self.windows.retain(|_, (_, end)| *end > now);
            self.backoffs.retain(|_, (_, _, forget)| *forget > now);
        }
    }
}

#[derive(Default)]
pub struct MemoryLimits {
    inner: Mutex<Inner>,
}

impl MemoryLimits {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>, StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError("in-process limit store lock poisoned".into()))
    }
}

fn ms_until(end: Instant, now: Instant) -> u64 {
    u64::try_from(end.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl LimitStore for MemoryLimits {
    async fn hit(&self, key: &str, window_secs: u64) -> Result<(u64, u64), StoreError> {
        let mut inner = self.lock()?;
        let now = Instant::now();
        let window = std::time::Duration::from_secs(window_secs);
        let entry = inner
            .windows
            .entry(key.to_owned())
            .or_insert((0, now + window));
        if entry.1 <= now {
            *entry = (0, now + window);
        }
        entry.0 += 1;
        let result = (entry.0, ms_until(entry.1, now));
        inner.after_write();
        Ok(result)
    }

    async fn backoff_wait(&self, key: &str, now_ms: u64) -> Result<Option<u64>, StoreError> {
        let inner = self.lock()?;
        Ok(inner
            .backoffs
            .get(key)
            .filter(|(_, _, forget)| *forget > Instant::now())
            .map(|(_, until, _)| until.saturating_sub(now_ms))
            .filter(|wait| *wait > 0))
    }

    async fn record_failure(
        &self,
        key: &str,
        now_ms: u64,
        policy: &LimitSettings,
    ) -> Result<(u64, u64), StoreError> {
        let mut inner = self.lock()?;
        let now = Instant::now();
        let forget = now + std::time::Duration::from_secs(policy.backoff_memory_secs);
        let entry = inner
            .backoffs
            .entry(key.to_owned())
            .or_insert((0, 0, forget));
        if entry.2 <= now {
            *entry = (0, 0, forget);
        }
        entry.0 += 1;
        let delay = backoff_delay_ms(entry.0, policy);
        entry.1 = now_ms + delay;
        entry.2 = forget;
        let failures = entry.0;
        inner.after_write();
        Ok((failures, delay))
    }

    async fn reset(&self, key: &str) -> Result<(), StoreError> {
        self.lock()?.backoffs.remove(key);
        Ok(())
    }
}
