//! The bare rates: the service's own work without HTTP, through the library and the same kind
//! of pools, against the same PostgreSQL and Redis as the server under test.
//!
//! An HTTP scenario with a target (issue 10) is cut into slices, with a slice of its bare
//! counterpart before each and after the last, so that a slower or faster phase of the machine
//! moves both sides of the ratio alike. Each bare rate runs on the server's CPUs
//! (the server idle meanwhile), so that both sides of a ratio ran on the same core.

use std::{collections::HashMap, path::Path, sync::Arc, time::Duration};

use latchkey::{
    accounts::{LoginOutcome, Registration},
    auth::{
        keys::{KeyPaths, KeySource},
        password::PasswordService,
        tokens::{Amr, PairSubject},
    },
    client::ClientInfo,
    config::Settings,
    session::{
        NewSession, RotateOutcome, Rotation, SessionStore, memory::MemoryStore, redis::RedisStore,
    },
    startup::Application,
    state::AppState,
    store::redis::RedisClient,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    PASSWORD,
    cpus::Pinned,
    load::{Recorder, Run, drive},
};

pub const RS256_VERIFY: &str = "rs256_verify";
pub const SIGN_PAIR: &str = "sign_pair_2_tokens";
pub const GUARD: &str = "guard_pipeline";
pub const ROTATION: &str = "rotation_step";
pub const ARGON2: &str = "argon2_verify_single_thread";
pub const ALL: [&str; 5] = [RS256_VERIFY, SIGN_PAIR, GUARD, ROTATION, ARGON2];

/// The bare rate an HTTP scenario is held against.
pub fn counterpart(scenario: &str) -> Option<&'static str> {
    match scenario {
        "me" => Some(GUARD),
        "refresh" => Some(SIGN_PAIR),
        "login" | "register" => Some(ARGON2),
        _ => None,
    }
}

/// Operations counted over one or more measurements.
#[derive(Debug, Default, Clone, Copy)]
pub struct Measured {
    pub ops: usize,
    pub errors: u64,
    pub elapsed: Duration,
    pub machine_cpu_s: f64,
}

impl Measured {
    fn add(&mut self, elapsed: Duration, rec: &Recorder) {
        self.ops += rec.micros.len();
        self.errors += rec.errors;
        self.elapsed += elapsed;
        self.machine_cpu_s += rec.cpu.machine_s;
    }

    pub fn merge(&mut self, other: &Measured) {
        self.ops += other.ops;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.machine_cpu_s += other.machine_cpu_s;
    }

    pub fn ops_per_s(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.ops as f64 / self.elapsed.as_secs_f64()
        }
    }
}

/// An in-process application on the server's backends, with a user and a live session, and
/// the parts measured on their own (password hashing, the session store's rotation step).
pub struct Bare {
    state: AppState,
    passwords: PasswordService,
    sessions: Arc<dyn SessionStore>,
    access: Arc<String>,
    hash: String,
    user_id: Uuid,
    concurrency: usize,
    warmup: Duration,
    /// The server's CPUs: each bare rate is measured there (see `cpus`).
    cpus: Option<Vec<usize>>,
}

impl Bare {
    /// Builds the application from the server's environment and keys (its own Redis prefix).
    pub async fn build(
        env: &HashMap<String, String>,
        keys_dir: &Path,
        own_redis_prefix: bool,
        concurrency: usize,
        warmup: Duration,
        cpus: Option<Vec<usize>>,
    ) -> anyhow::Result<Self> {
        let mut vars = env.clone();
        vars.insert("PORT".into(), "0".into());
        let mut settings = Settings::from_vars(&vars)?;
        settings.keys.source = KeySource::Files(KeyPaths::in_dir(keys_dir));
        if own_redis_prefix {
            settings.redis.key_prefix = format!("latchkey-bench-bare:{}:", Uuid::new_v4().simple());
        }
        eprintln!("bench: building the in-process application for the bare rates");
        let app = Application::build(settings).await?;
        let state = app.state().clone();
        let sessions: Arc<dyn SessionStore> = match &state.settings.redis.url {
            Some(url) => {
                let redis = &state.settings.redis;
                let client = RedisClient::new(url.expose(), &redis.options()?)?;
                Arc::new(RedisStore::new(client, &redis.key_prefix))
            }
            None => Arc::new(MemoryStore::new()),
        };
        let passwords = PasswordService::new(&state.settings.passwords, state.metrics.clone())?;
        // A real user with a live session, as the guard sees it.
        let email = format!("bare-{}@bench.example", Uuid::new_v4().simple());
        let form = Registration {
            name: Some("Bare".into()),
            email: Some(email.clone()),
            password: Some(PASSWORD.into()),
            password_confirm: Some(PASSWORD.into()),
        };
        let client = ClientInfo::local();
        let user = state.accounts.register(form, &client).await?;
        let outcome = state
            .accounts
            .login(Some(email), Some(PASSWORD.into()), &client)
            .await?;
        let LoginOutcome::SignedIn(signed_in) = outcome else {
            anyhow::bail!("the bench user has no second factor");
        };
        let hash = passwords.hash(PASSWORD.to_owned().into()).await?;
        Ok(Self {
            state,
            passwords,
            sessions,
            access: Arc::new(signed_in.pair.access_token),
            hash,
            user_id: user.id,
            concurrency,
            warmup,
            cpus,
        })
    }

    /// How many tasks run `name` at once: the benchmark's concurrency for what waits on
    /// PostgreSQL or Redis, one thread for pure computation.
    pub fn concurrency_of(&self, name: &str) -> usize {
        match name {
            GUARD | ROTATION => self.concurrency,
            _ => 1,
        }
    }

    /// Runs `name` for `duration` and adds what it did to `into`. With `warm_up`, work that
    /// waits on PostgreSQL or Redis first runs unrecorded for the warm-up time (the first of
    /// several slices of one measurement needs it, the later ones do not).
    pub async fn measure(
        &self,
        name: &str,
        duration: Duration,
        warm_up: bool,
        into: &mut Measured,
    ) -> anyhow::Result<()> {
        let tasks = self.concurrency_of(name);
        let _on_server_cpus = self.cpus.as_deref().map(Pinned::to).transpose()?;
        // Work that waits on PostgreSQL or Redis yields, so its warm-up timer fires on time;
        // a single busy thread would not let it (see `drive`).
        let warmup = if warm_up { self.warmup } else { Duration::ZERO };
        let run = |warmup| Run { warmup, duration };
        let state = self.state.clone();
        let (elapsed, rec) = match name {
            RS256_VERIFY => {
                let access = self.access.clone();
                rate(run(Duration::ZERO), tasks, move || {
                    let ok = state.tokens.verify_access(&access).is_ok();
                    async move { ok }
                })
                .await
            }
            SIGN_PAIR => {
                rate(run(Duration::ZERO), tasks, move || {
                    let state = state.clone();
                    async move {
                        let subject = PairSubject {
                            user_id: Uuid::new_v4(),
                            role: "user",
                            sid: Uuid::new_v4(),
                            amr: Amr::Password,
                        };
                        state.tokens.issue_pair(&subject).await.is_ok()
                    }
                })
                .await
            }
            GUARD => {
                let access = self.access.clone();
                rate(run(warmup), tasks, move || {
                    let state = state.clone();
                    let access = access.clone();
                    async move {
                        let req = poem::Request::builder()
                            .header("Authorization", format!("Bearer {access}"))
                            .finish();
                        latchkey::api::guard::authenticate(&state, &req)
                            .await
                            .is_ok()
                    }
                })
                .await
            }
            ROTATION => self.rotations(run(warmup), tasks).await?,
            ARGON2 => {
                let hash = self.hash.clone();
                let passwords = self.passwords.clone();
                rate(run(Duration::ZERO), tasks, move || {
                    let passwords = passwords.clone();
                    let hash = hash.clone();
                    async move {
                        let verified = passwords.verify(PASSWORD.to_owned().into(), Some(hash));
                        verified.await.unwrap_or(false)
                    }
                })
                .await
            }
            other => anyhow::bail!("unknown bare rate {other}"),
        };
        into.add(elapsed, &rec);
        Ok(())
    }

    /// The store's rotation step alone: one session per task, each rotating its own chain.
    async fn rotations(&self, run: Run, tasks: usize) -> anyhow::Result<(Duration, Recorder)> {
        let mut chains = Vec::new();
        for _ in 0..tasks {
            let (sid, refresh_jti) = (Uuid::new_v4(), Uuid::new_v4());
            let now = chrono::Utc::now().timestamp();
            self.sessions
                .create(NewSession {
                    id: sid,
                    user_id: self.user_id,
                    user_agent: None,
                    ip: None,
                    created_at: now,
                    access_jti: Uuid::new_v4(),
                    access_exp: now + 900,
                    refresh_jti,
                    refresh_exp: now + 3600,
                })
                .await?;
            chains.push((sid, refresh_jti));
        }
        let sessions = self.sessions.clone();
        let user_id = self.user_id;
        Ok(drive(run, chains, move |(sid, current): (Uuid, Uuid)| {
            let sessions = sessions.clone();
            async move {
                let now = chrono::Utc::now().timestamp();
                let next = Uuid::new_v4();
                let outcome = sessions
                    .rotate(Rotation {
                        user_id,
                        session_id: sid,
                        presented_refresh_jti: current,
                        new_access_jti: Uuid::new_v4(),
                        new_access_exp: now + 900,
                        new_refresh_jti: next,
                        new_refresh_exp: now + 3600,
                        now,
                        grace_secs: 10,
                        grace_payload: "{}".into(),
                    })
                    .await;
                match outcome {
                    Ok(RotateOutcome::Rotated) => ((sid, next), true),
                    _ => ((sid, current), false),
                }
            }
        })
        .await)
    }

    /// Prints and returns the JSON line of a bare rate.
    pub fn report(&self, name: &str, measured: &Measured) -> Value {
        let per_op_us = if measured.ops == 0 {
            0.0
        } else {
            (measured.machine_cpu_s * 1e7 / measured.ops as f64).round() / 10.0
        };
        let line = json!({
            "bare": name,
            "concurrency": self.concurrency_of(name),
            "ops": measured.ops,
            "ops_per_s": measured.ops_per_s().round(),
            "errors": measured.errors,
            "machine_cpu_us_per_op": per_op_us,
        });
        println!("{line}");
        line
    }
}

/// Counts how often `op` completes on `tasks` concurrent tasks.
async fn rate<F, Fut>(run: Run, tasks: usize, op: F) -> (Duration, Recorder)
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    drive(run, vec![(); tasks], move |()| {
        let op = op.clone();
        async move { ((), op().await) }
    })
    .await
}
