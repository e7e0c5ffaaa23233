//! In-process counters for the embedded default (one process). Every operation, the login
//! gate included, runs under one lock: one atomic step, as the Redis scripts are.

use std::collections::HashMap;

use async_trait::async_trait;

use super::{BackoffSchedule, GateOutcome, LimitStore, LoginGate};
use crate::store::{
    BackendError,
    clock::now_ms,
    memory::{Locked, Sweep},
};

/// A counter's count and the end of its window (Unix ms).
type Window = (u64, u64);

/// An account's failures, until when it waits, and when it is forgotten (Unix ms).
struct Backoff {
    failures: u64,
    until_ms: u64,
    forget_at_ms: u64,
}

#[derive(Default)]
struct Inner {
    windows: HashMap<String, Window>,
    backoffs: HashMap<String, Backoff>,
}

impl Sweep for Inner {
    fn sweep(&mut self) {
        let now = now_ms();
        self.windows.retain(|_, (_, end)| *end > now);
        self.backoffs.retain(|_, b| b.forget_at_ms > now);
    }
}

impl Inner {
    fn hit(&mut self, key: &str, window_ms: u64, now: u64) -> (u64, u64) {
        let entry = self
            .windows
            .entry(key.to_owned())
            .or_insert((0, now + window_ms));
        if entry.1 <= now {
            *entry = (0, now + window_ms);
        }
        entry.0 += 1;
        (entry.0, entry.1 - now)
    }

    fn backoff(&self, key: &str, now: u64) -> Option<&Backoff> {
        self.backoffs.get(key).filter(|b| b.forget_at_ms > now)
    }

    fn login_gate(&mut self, gate: &LoginGate<'_>) -> GateOutcome {
        let now = gate.now_ms;
        let (count, reset_ms) = self.hit(gate.outer_key, gate.outer.window_ms(), now);
        if count > gate.outer.limit {
            return GateOutcome::OuterLimited { reset_ms };
        }
        let (count, reset_ms) = self.hit(gate.account_key, gate.account.window_ms(), now);
        if count > gate.account.limit {
            return GateOutcome::AccountLimited { reset_ms };
        }
        match self.backoff(gate.backoff_key, now) {
            Some(b) if b.until_ms > now => GateOutcome::BackingOff {
                wait_ms: b.until_ms - now,
            },
            found => GateOutcome::Open {
                failures_on_record: found.is_some(),
            },
        }
    }

    fn record_failure(&mut self, key: &str, now: u64, schedule: &BackoffSchedule) -> (u64, u64) {
        let forget_at_ms = now + schedule.memory_secs.saturating_mul(1000);
        let fresh = || Backoff {
            failures: 0,
            until_ms: 0,
            forget_at_ms,
        };
        let entry = self.backoffs.entry(key.to_owned()).or_insert_with(fresh);
        if entry.forget_at_ms <= now {
            *entry = fresh();
        }
        entry.failures += 1;
        let delay = schedule.delay_ms(entry.failures);
        entry.until_ms = now + delay;
        entry.forget_at_ms = forget_at_ms;
        (entry.failures, delay)
    }
}

#[derive(Default)]
pub struct MemoryLimits {
    inner: Locked<Inner>,
}

impl MemoryLimits {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl LimitStore for MemoryLimits {
    async fn hit(&self, key: &str, window_ms: u64) -> Result<(u64, u64), BackendError> {
        self.inner.write(|i| i.hit(key, window_ms, now_ms()))
    }

    async fn login_gate(&self, gate: &LoginGate<'_>) -> Result<GateOutcome, BackendError> {
        self.inner.write(|i| i.login_gate(gate))
    }

    async fn record_failure(
        &self,
        key: &str,
        now_ms: u64,
        schedule: &BackoffSchedule,
    ) -> Result<(u64, u64), BackendError> {
        self.inner
            .write(|i| i.record_failure(key, now_ms, schedule))
    }

    async fn reset(&self, key: &str) -> Result<(), BackendError> {
        self.inner.write(|i| {
            i.backoffs.remove(key);
        })
    }
}
