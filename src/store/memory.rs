//! The in-process stores' shared shape: one map behind one lock (so every operation is one
//! atomic step, as a Redis script is), swept of expired entries every [`SWEEP_EVERY`] writes,
//! so memory follows the live entries and a sweep costs amortised O(1).

use std::sync::Mutex;

use super::BackendError;

/// Writes between two sweeps.
pub const SWEEP_EVERY: usize = 1024;

/// What a swept map drops when it sweeps.
pub trait Sweep {
    /// Removes every entry that has expired by now.
    fn sweep(&mut self);
}

/// A value behind one lock, swept every [`SWEEP_EVERY`] writes.
#[derive(Default)]
pub struct Locked<T> {
    inner: Mutex<Counted<T>>,
}

#[derive(Default)]
struct Counted<T> {
    value: T,
    writes: usize,
}

impl<T: Sweep> Locked<T> {
    /// Runs `read` under the lock.
    pub fn read<R>(&self, read: impl FnOnce(&T) -> R) -> Result<R, BackendError> {
        let guard = self.inner.lock().map_err(|_| BackendError::Poisoned)?;
        Ok(read(&guard.value))
    }

    /// Runs `update` under the lock, without counting it as a write.
    pub fn update<R>(&self, update: impl FnOnce(&mut T) -> R) -> Result<R, BackendError> {
        let mut guard = self.inner.lock().map_err(|_| BackendError::Poisoned)?;
        Ok(update(&mut guard.value))
    }

    /// Runs `write` under the lock, then sweeps if this was the `SWEEP_EVERY`th write.
    pub fn write<R>(&self, write: impl FnOnce(&mut T) -> R) -> Result<R, BackendError> {
        let mut guard = self.inner.lock().map_err(|_| BackendError::Poisoned)?;
        let result = write(&mut guard.value);
        guard.writes += 1;
        if guard.writes >= SWEEP_EVERY {
            guard.writes = 0;
            guard.value.sweep();
        }
        Ok(result)
    }
}
