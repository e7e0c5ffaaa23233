//! Argon2id password hashing, off the async runtime and bounded.
//!
//! Each hash costs ~15-20 ms of CPU and ~19 MiB of memory, so it runs on `spawn_blocking`
//! behind a semaphore: a login flood queues for hashing instead of starving token verification
//! or exhausting memory.
//!
//! The 19 MiB work areas are kept and reused (at most one per hashing slot): allocating one per
//! hash made the resident memory swing with the number of hashes in flight. They sit on 2 MiB
//! pages where the kernel allows it, which makes each hash 1-2% faster.

use std::{
    cell::RefCell,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::{
        self, CustomizedPasswordHasher, PasswordHasher, PasswordVerifier as _,
        phc::{Output, ParamsString, PasswordHash, Salt},
    },
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::telemetry::metrics::Metrics;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Settings {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Settings {
    /// OWASP's recommended minimum for argon2id: m=19456 KiB, t=2, p=1.
    fn default() -> Self {
        Self {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// How much password hashing an instance does at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordSettings {
    pub argon2: Argon2Settings,
    /// Hashes running at once (`PASSWORD_HASH_CONCURRENCY`).
    pub concurrency: usize,
    /// How long a request may wait for a hashing slot before it gets 503 `busy`.
    pub queue_timeout: Duration,
}

/// Why a hash or a check did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Every hashing slot stayed taken for the whole queue timeout.
    #[error("password hashing is saturated")]
    Busy,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Argon2 work areas (`m_cost` blocks of 1 KiB each), kept for the next hash. The semaphore
/// bounds how many hashes run at once, so at most `PASSWORD_HASH_CONCURRENCY` areas ever exist:
/// once warm, hashing holds `PASSWORD_HASH_CONCURRENCY x ARGON2_MEMORY_KIB` and no more.
#[derive(Default)]
struct WorkAreas(Mutex<Vec<Area>>);

impl WorkAreas {
    fn take(&self) -> Area {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default()
    }

    fn give_back(&self, area: Area) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(area);
    }
}

/// One argon2 work area. Where the kernel allows it (Linux, transparent huge pages in
/// `madvise` or `always` mode), the area sits on 2 MiB pages: argon2 reads blocks from all
/// over its 19 MiB, and with 4 KiB pages most of those reads also missed the TLB.
#[derive(Default)]
struct Area {
    blocks: Vec<Block>,
    /// The first block used: the first one on a 2 MiB boundary.
    start: usize,
}

impl Area {
    const HUGE_PAGE: usize = 2 << 20;

    /// The first `len` blocks of the area, made anew if it is too small.
    fn blocks(&mut self, len: usize) -> &mut [Block] {
        if self.blocks.len() < self.start + len {
            *self = Self::new(len);
        }
        &mut self.blocks[self.start..self.start + len]
    }

    fn new(len: usize) -> Self {
        let block = std::mem::size_of::<Block>();
        let mut blocks: Vec<Block> = Vec::with_capacity(len + Self::HUGE_PAGE / block);
        let addr = blocks.as_ptr() as usize;
        let aligned = addr.next_multiple_of(Self::HUGE_PAGE);
        let start = (aligned - addr).div_ceil(block);
        advise_huge_pages(aligned, addr + blocks.capacity() * block);
        // Only now is the memory touched, so the kernel can back it with huge pages.
        blocks.resize(start + len, Block::default());
        Self { blocks, start }
    }
}

/// Asks the kernel to back `[from, to)` (untouched memory of ours) with huge pages. Only a
/// hint: where they are unavailable the pages stay 4 KiB and nothing else changes.
#[cfg(target_os = "linux")]
fn advise_huge_pages(from: usize, to: usize) {
    let len = to.saturating_sub(from) / Area::HUGE_PAGE * Area::HUGE_PAGE;
    if len > 0 {
        // SAFETY: `[from, from + len)` lies inside a live allocation that this process owns,
        // and `from` is page-aligned; MADV_HUGEPAGE changes only how it is paged, not its
        // contents or its mapping.
        unsafe { libc::madvise(from as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_from: usize, _to: usize) {}

/// Argon2id with the configured parameters, computing in a lent work area instead of
/// allocating one per call. PHC strings and the constant-time comparison of `verify_password`
/// come from the `password-hash` traits, which call `hash_password_customized` below.
struct LentArgon2<'a> {
    params: &'a Params,
    area: RefCell<Area>,
}

impl CustomizedPasswordHasher<PasswordHash> for LentArgon2<'_> {
    type Params = Params;

    fn hash_password_customized(
        &self,
        password: &[u8],
        salt: &[u8],
        algorithm: Option<&str>,
        version: Option<password_hash::Version>,
        params: Params,
    ) -> password_hash::Result<PasswordHash> {
        let algorithm = algorithm
            .map(Algorithm::try_from)
            .transpose()?
            .unwrap_or_default();
        let version = version
            .map(Version::try_from)
            .transpose()?
            .unwrap_or_default();
        let salt = Salt::new(salt)?;
        let mut buffer = [0u8; Output::MAX_LENGTH];
        let out = buffer
            .get_mut(..params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN))
            .ok_or(password_hash::Error::OutputSize)?;
        // Argon2 uses the first `m_cost` rounded down to whole lanes; `m_cost` always suffices.
        let blocks = params.m_cost() as usize;
        let mut area = self.area.borrow_mut();
        Argon2::new(algorithm, version, params.clone()).hash_password_into_with_memory(
            password,
            &salt,
            out,
            area.blocks(blocks),
        )?;
        Ok(PasswordHash {
            algorithm: algorithm.ident(),
            version: Some(version.into()),
            params: ParamsString::try_from(&params)?,
            salt: Some(salt),
            hash: Some(Output::new(out)?),
        })
    }
}

impl PasswordHasher<PasswordHash> for LentArgon2<'_> {
    fn hash_password_with_salt(
        &self,
        password: &[u8],
        salt: &[u8],
    ) -> password_hash::Result<PasswordHash> {
        self.hash_password_customized(
            password,
            salt,
            Some(Algorithm::Argon2id.ident().as_str()),
            Some(Version::V0x13.into()),
            self.params.clone(),
        )
    }
}

/// Hashes and verifies passwords with the configured argon2id parameters.
#[derive(Clone)]
pub struct PasswordService {
    params: Arc<Params>,
    areas: Arc<WorkAreas>,
    permits: Arc<Semaphore>,
    /// How long a request may wait for a hashing slot before it gets 503 `busy`.
    queue_timeout: Duration,
    metrics: Arc<Metrics>,
    /// A real hash of a random password, with the current parameters. Verifying an unknown
    /// email's password against it costs the same as a real check, so response timing does
    /// not reveal which emails have accounts.
    dummy_hash: Arc<String>,
}

impl PasswordService {
    pub fn new(settings: &PasswordSettings, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let (argon2, concurrency) = (settings.argon2, settings.concurrency);
        let params = Params::new(
            argon2.memory_kib,
            argon2.iterations,
            argon2.parallelism,
            None,
        )
        .map_err(|err| anyhow::anyhow!("invalid argon2 parameters: {err}"))?;
        let random = uuid::Uuid::new_v4().to_string();
        let areas = Arc::new(WorkAreas::default());
        let hasher = LentArgon2 {
            params: &params,
            area: RefCell::new(areas.take()),
        };
        let dummy_hash = hasher
            .hash_password(random.as_bytes())
            .map_err(|err| anyhow::anyhow!("argon2: {err}"))?
            .to_string();
        areas.give_back(hasher.area.into_inner());
        Ok(Self {
            params: Arc::new(params),
            areas,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            queue_timeout: settings.queue_timeout,
            metrics,
            dummy_hash: Arc::new(dummy_hash),
        })
    }

    /// A hashing slot, or `Busy` after the queue timeout: a login flood is turned away
    /// quickly instead of piling up and starving everything else.
    /// The permit moves into the blocking task, so a request that is abandoned (timeout,
    /// disconnect) keeps its slot until the hash it started has really finished.
    async fn permit(&self) -> Result<OwnedSemaphorePermit, PasswordError> {
        let permits = Arc::clone(&self.permits);
        let started = std::time::Instant::now();
        self.metrics.hash_queue_depth.inc();
        let acquired = tokio::time::timeout(self.queue_timeout, permits.acquire_owned()).await;
        self.metrics.hash_queue_depth.dec();
        self.metrics
            .hash_wait
            .observe(started.elapsed().as_secs_f64());
        match acquired {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(closed)) => Err(anyhow::Error::from(closed).into()),
            Err(_elapsed) => {
                self.metrics.hash_rejected.inc();
                Err(PasswordError::Busy)
            }
        }
    }

    /// Whether a stored hash was made with other parameters than the configured ones (or
    /// another algorithm), so it should be replaced after the next successful login.
    pub fn needs_rehash(&self, stored_hash: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(stored_hash) else {
            return true;
        };
        let same_params = Params::try_from(&parsed.params)
            .map(|p| {
                p.m_cost() == self.params.m_cost()
                    && p.t_cost() == self.params.t_cost()
                    && p.p_cost() == self.params.p_cost()
            })
            .unwrap_or(false);
        parsed.algorithm.as_str() != "argon2id" || !same_params
    }

    /// Runs `work` on a blocking thread with a hashing slot and a work area, both released
    /// only when it has finished (even if the request that started it is gone).
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&LentArgon2<'_>) -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let permit = self.permit().await?;
        let (params, areas) = (Arc::clone(&self.params), Arc::clone(&self.areas));
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let hasher = LentArgon2 {
                params: &params,
                area: RefCell::new(areas.take()),
            };
            let result = work(&hasher);
            areas.give_back(hasher.area.into_inner());
            result
        })
        .await
        .map_err(|err| anyhow::Error::from(err).into())
    }

    /// Hashes a new password into a PHC string.
    pub async fn hash(&self, password: SecretString) -> Result<String, PasswordError> {
        self.run(move |hasher| {
            hasher
                .hash_password(password.expose_secret().as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|err| anyhow::anyhow!("argon2: {err}"))
        })
        .await?
        .map_err(PasswordError::from)
    }

    /// Checks a password against a stored hash, or against the dummy hash when there is no
    /// account (always `false` then, after the same amount of work).
    pub async fn verify(
        &self,
        password: SecretString,
        stored_hash: Option<String>,
    ) -> Result<bool, PasswordError> {
        let known = stored_hash.is_some();
        let hash = stored_hash.unwrap_or_else(|| self.dummy_hash.as_str().to_owned());
        self.run(move |hasher| {
            let parsed = match PasswordHash::new(&hash) {
                Ok(parsed) => parsed,
                Err(_) => return false,
            };
            hasher
                .verify_password(password.expose_secret().as_bytes(), &parsed)
                .is_ok()
                && known
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small parameters: these tests are about the plumbing, not the cost.
    fn service(concurrency: usize) -> PasswordService {
        let settings = PasswordSettings {
            argon2: Argon2Settings {
                memory_kib: 1024,
                iterations: 1,
                parallelism: 1,
            },
            concurrency,
            queue_timeout: Duration::from_secs(30),
        };
        PasswordService::new(&settings, Arc::new(Metrics::new())).unwrap()
    }

    fn secret(s: &str) -> SecretString {
        s.to_owned().into()
    }

    #[tokio::test]
    async fn hashes_in_a_lent_area_interoperate_with_the_argon2_crate() {
        let passwords = service(1);
        let ours = passwords.hash(secret("correct horse")).await.unwrap();
        assert!(ours.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{ours}");
        // A hash made in a reused area is an ordinary argon2id PHC string...
        let stock = Argon2::default();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(stock.verify_password(b"correct horse", &parsed).is_ok());
        assert!(stock.verify_password(b"wrong horse", &parsed).is_err());
        // ...and one the crate made (other parameters, its own allocation) verifies here.
        let theirs = stock.hash_password(b"battery staple").unwrap().to_string();
        let check = |pw: &str, hash: &str| passwords.verify(secret(pw), Some(hash.to_owned()));
        assert!(check("battery staple", &theirs).await.unwrap());
        assert!(!check("battery stapler", &theirs).await.unwrap());
        assert!(check("correct horse", &ours).await.unwrap());
        assert!(!check("correct horsE", &ours).await.unwrap());
        // No account: the dummy hash is checked and the answer is always no.
        assert!(!passwords.verify(secret("anything"), None).await.unwrap());
    }

    #[tokio::test]
    async fn work_areas_are_reused_and_at_most_one_per_hashing_slot_exists() {
        let passwords = service(2);
        let tasks: Vec<_> = (0..12)
            .map(|i| {
                let passwords = passwords.clone();
                tokio::spawn(async move { passwords.hash(secret(&format!("pw {i}"))).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let areas = passwords.areas.0.lock().unwrap();
        assert!(
            (1..=2).contains(&areas.len()),
            "{} work areas after 12 hashes on 2 slots",
            areas.len()
        );
        assert!(
            areas
                .iter()
                .all(|area| area.blocks.len() - area.start == 1024)
        );
    }

    #[test]
    fn a_work_area_starts_at_a_huge_page_boundary_and_grows_when_needed() {
        let mut area = Area::default();
        let first = area.blocks(3000).as_ptr() as usize;
        // Within one block after a 2 MiB boundary, so the kernel can map the area with huge
        // pages from its first block on.
        assert!(
            first % Area::HUGE_PAGE < std::mem::size_of::<Block>(),
            "{first:#x}"
        );
        assert_eq!(area.blocks(3000).len(), 3000);
        assert_eq!(area.blocks(100).len(), 100);
        assert_eq!(area.blocks(5000).len(), 5000);
        let grown = area.blocks(5000).as_ptr() as usize;
        assert!(
            grown % Area::HUGE_PAGE < std::mem::size_of::<Block>(),
            "{grown:#x}"
        );
    }
}
