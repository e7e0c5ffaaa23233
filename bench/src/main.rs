//! Latchkey's load benchmark. See bench/README.md for the command and the figures.
//!
//! It starts the release `latchkey` binary itself (optionally pinned with `taskset`), prepares
//! users and sessions over HTTP, then runs each scenario for a fixed duration and concurrency
//! and prints one JSON line per scenario. In the same run it measures the bare rates of the
//! same work without HTTP, through the library (`bare`): RS256 verify and sign, the guard
//! pipeline (verify + session lookup + user load, through the same kind of pools), the rotation
//! step and argon2 verify; and prints each target of issue 10 with its ratio.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

mod admin_queries;
mod bare;
mod cpus;
mod http;
mod load;
mod redis_cost;
mod seed;
mod wrk;

use anyhow::{Context, bail};
use bare::{Bare, Measured};
use clap::{Parser, ValueEnum};
use http::Http;
use load::{Recorder, Run, SERVER_PID, drive, drive_states};
use serde_json::{Value, json};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// SQLite file + in-process session store.
    Embedded,
    /// PostgreSQL + Redis (BENCH_DATABASE_URL, BENCH_REDIS_URL).
    Postgres,
}

#[derive(Debug, Parser)]
#[command(about = "Latchkey load benchmark")]
struct Args {
    #[arg(long, value_enum, default_value = "postgres")]
    backend: Backend,
    /// Seconds per scenario.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of load before each scenario's measured part (not recorded).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Concurrent connections per scenario.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Distinct users for `GET /users/me`.
    #[arg(long, default_value_t = 256)]
    users: usize,
    /// The latchkey binary to start.
    #[arg(long, default_value = "target/release/latchkey")]
    server: PathBuf,
    /// Pin the server to these CPUs with taskset (e.g. 0); empty: no pinning.
    #[arg(long, default_value = "0")]
    server_cpus: String,
    /// With `--backend postgres`: pin PostgreSQL and Redis to these CPUs for the run (their
    /// CPUs are restored afterwards); empty: leave them where they are.
    #[arg(long, default_value = "1")]
    services_cpus: String,
    /// Scenarios to run (comma-separated): health,me,me_wrk,refresh,login,register,
    /// me_under_login_flood. `me_wrk` is `me` through wrk (skipped if wrk is not installed).
    #[arg(
        long,
        default_value = "health,me,me_wrk,refresh,login,register,me_under_login_flood"
    )]
    scenarios: String,
    /// How the server (and the bare rates) reach Redis: REDIS_ACCESS=multiplexed or pooled.
    #[arg(long, default_value = "multiplexed")]
    redis_access: String,
    /// The server's DATABASE_POOL_SIZE (unset: its default).
    #[arg(long)]
    database_pool_size: Option<u32>,
    /// Slices per scenario with a target, each after a slice of its bare rate (which gets one
    /// more at the end).
    #[arg(long, default_value_t = 4)]
    slices: u32,
    /// Also measure the bare rates without HTTP.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    bare: bool,
    /// Instead of the scenarios: mixed traffic for this many seconds, sampling the server's
    /// resident memory every 10 s.
    #[arg(long)]
    soak: Option<u64>,
    /// Instead of the scenarios: seed this many sessions and rate-limit counters into
    /// BENCH_REDIS_URL (under a prefix of their own, removed afterwards) and print the bytes
    /// of Redis memory each costs. No server is started.
    #[arg(long)]
    redis_cost: Option<u64>,
    /// Before the scenarios: store this many users in the server's database (by SQL, sharing
    /// one password hash).
    #[arg(long, default_value_t = 0)]
    seed_users: u64,
    /// Before the scenarios: this many live sessions in the server's Redis, of seeded users.
    #[arg(long, default_value_t = 0)]
    seed_sessions: u64,
    /// Before the scenarios: this many audit events (by SQL), about seeded users.
    #[arg(long, default_value_t = 0)]
    seed_audit: u64,
    /// After the scenarios: time the admin users and audit listings (first pages, deep pages
    /// by number and by `after`, filters), one request at a time.
    #[arg(long, default_value_t = false)]
    admin_queries: bool,
}

fn database_url() -> String {
    std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// `url` with its database name replaced by `name` (query parameters such as `sslmode` kept).
fn with_database(url: &str, name: &str) -> String {
    let (path, query) = url
        .split_once('?')
        .map_or((url, None), |(p, q)| (p, Some(q)));
    let base = path.rsplit_once('/').map_or(path, |(b, _)| b);
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

fn redis_url() -> String {
    std::env::var("BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The server under test, and what it needs removed afterwards.
struct Server {
    child: Child,
    http: Http,
    dir: tempfile::TempDir,
    database: Option<String>,
    env: HashMap<String, String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start_server(args: &Args) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let mut env: HashMap<String, String> = [
        ("APP_ENV", "development".to_owned()),
        ("PORT", port.to_string()),
        ("KEYS_DIR", dir.path().join("keys").display().to_string()),
        ("LOG_FORMAT", "text".into()),
        ("RUST_LOG", "warn".into()),
        // The benchmark measures throughput, not the abuse limits.
        ("RATE_LIMIT_LOGIN_PER_IP", "100000000/60".into()),
        ("RATE_LIMIT_LOGIN_PER_ACCOUNT", "100000000/60".into()),
        ("RATE_LIMIT_REGISTER_PER_IP", "100000000/60".into()),
        ("RATE_LIMIT_REFRESH_PER_IP", "100000000/60".into()),
        ("PASSWORD_HASH_QUEUE_TIMEOUT_MS", "30000".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(n) = args.database_pool_size {
        env.insert("DATABASE_POOL_SIZE".into(), n.to_string());
    }
    if let Ok(n) = std::env::var("BENCH_HASH_CONCURRENCY") {
        env.insert("PASSWORD_HASH_CONCURRENCY".into(), n);
    }
    let mut database = None;
    match args.backend {
        Backend::Embedded => {
            env.insert(
                "DATABASE_URL".into(),
                format!("sqlite://{}/bench.db?mode=rwc", dir.path().display()),
            );
        }
        Backend::Postgres => {
            let name = format!("latchkey_bench_{}", Uuid::new_v4().simple());
            run_sql(&format!("CREATE DATABASE {name}")).await?;
            env.insert("DATABASE_URL".into(), with_database(&database_url(), &name));
            env.insert("REDIS_URL".into(), redis_url());
            env.insert("REDIS_ACCESS".into(), args.redis_access.clone());
            env.insert(
                "REDIS_KEY_PREFIX".into(),
                format!("latchkey-bench:{}:", Uuid::new_v4().simple()),
            );
            database = Some(name);
        }
    }
    let mut command = if args.server_cpus.is_empty() {
        Command::new(&args.server)
    } else {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(&args.server_cpus).arg(&args.server);
        c
    };
    let child = command
        .arg("serve")
        .current_dir(dir.path())
        .env_clear()
        .envs(&env)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", args.server.display()))?;
    let _ = SERVER_PID.set(child.id());
    let http = Http::new(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    let mut child = child;
    for _ in 0..200 {
        if let Some(status) = child.try_wait()? {
            bail!("the server exited during startup: {status}");
        }
        if http
            .get("/health/live", None)
            .await
            .is_ok_and(|r| r.status.is_success())
        {
            return Ok(Server {
                child,
                http,
                dir,
                database,
                env,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the server did not become ready")
}

async fn run_sql(sql: &str) -> anyhow::Result<()> {
    use sea_orm::ConnectionTrait;
    let admin = latchkey::db::connect(&database_url(), Some(1)).await?;
    admin.execute_unprepared(sql).await?;
    admin.close().await?;
    Ok(())
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn report(
    scenario: &str,
    args: &Args,
    concurrency: usize,
    elapsed: Duration,
    mut rec: Recorder,
) -> Value {
    rec.micros.sort_unstable();
    let n = rec.micros.len();
    let per_request_us = |seconds: f64| {
        if n == 0 {
            0.0
        } else {
            (seconds * 1e6 / n as f64 * 10.0).round() / 10.0
        }
    };
    let line = json!({
        "scenario": scenario,
        "backend": format!("{:?}", args.backend).to_lowercase(),
        "concurrency": concurrency,
        "duration_s": elapsed.as_secs_f64(),
        "requests": n,
        "rps": (n as f64 / elapsed.as_secs_f64()).round(),
        "p50_us": percentile(&rec.micros, 50.0),
        "p90_us": percentile(&rec.micros, 90.0),
        "p99_us": percentile(&rec.micros, 99.0),
        "p99_9_us": percentile(&rec.micros, 99.9),
        "errors": rec.errors,
        "server_cpu_pct": (rec.cpu.server_s * 100.0 / elapsed.as_secs_f64()).round(),
        "server_cpu_us_per_req": per_request_us(rec.cpu.server_s),
        "machine_cpu_us_per_req": per_request_us(rec.cpu.machine_s),
    });
    println!("{line}");
    line
}

pub(crate) const PASSWORD: &str = "benchmark password";

async fn register(http: &Http, email: &str) -> bool {
    let body = json!({"name": "Bench", "email": email, "password": PASSWORD, "password_confirm": PASSWORD});
    http.post("/api/v1/auth/register", &body)
        .await
        .is_ok_and(|r| r.status.as_u16() == 201)
}

async fn login(http: &Http, email: &str) -> Option<(String, String)> {
    let body = json!({"email": email, "password": PASSWORD});
    let response = http.post("/api/v1/auth/login", &body).await.ok()?;
    if response.status.as_u16() != 200 {
        return None;
    }
    let body = response.json()?;
    Some((
        body["access_token"].as_str()?.to_owned(),
        body["refresh_token"].as_str()?.to_owned(),
    ))
}

/// Registers `n` users (concurrently) and returns their emails.
async fn prepare_users(http: &Http, n: usize, tag: &str) -> anyhow::Result<Vec<String>> {
    let emails: Vec<String> = (0..n).map(|i| format!("{tag}-{i}@bench.example")).collect();
    let mut tasks = Vec::new();
    for chunk in emails.chunks(n.div_ceil(16).max(1)) {
        let http = http.clone();
        let chunk = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            for email in chunk {
                if !register(&http, &email).await {
                    return false;
                }
            }
            true
        }));
    }
    for task in tasks {
        if !task.await? {
            bail!("registering benchmark users failed");
        }
    }
    Ok(emails)
}

/// The access tokens of (access, refresh) pairs.
fn access_tokens(pairs: Vec<(String, String)>) -> Vec<String> {
    pairs.into_iter().map(|(access, _)| access).collect()
}

async fn login_all(http: &Http, emails: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for email in emails {
        out.push(login(http, email).await.context("login while preparing")?);
    }
    Ok(out)
}

/// A scenario held against a bare rate (issue 10's targets), measured in slices with a slice of
/// the bare rate before each and after the last. The machine's speed drifts by tens of percent
/// within minutes (bench/README.md); interleaved, both sides of a ratio see the same phases.
struct Interleave<'a> {
    bare: &'a Bare,
    name: &'static str,
    /// The bare rate over all its slices.
    measured: Measured,
    /// The rate of each bare slice, and of each scenario slice (one fewer).
    bare_rates: Vec<f64>,
    scenario_rates: Vec<f64>,
}

impl Interleave<'_> {
    /// One slice of the bare rate.
    async fn bare_slice(&mut self, duration: Duration, first: bool) -> anyhow::Result<()> {
        let mut slice = Measured::default();
        self.bare
            .measure(self.name, duration, first, &mut slice)
            .await?;
        self.measured.merge(&slice);
        self.bare_rates.push(slice.ops_per_s());
        Ok(())
    }

    /// Each scenario slice's rate over the mean bare rate of the slices just before and after.
    fn slice_ratios(&self) -> Vec<f64> {
        let bare = self.bare_rates.windows(2).map(|w| (w[0] + w[1]) / 2.0);
        (self.scenario_rates.iter().zip(bare))
            .map(|(rate, bare)| if bare > 0.0 { rate / bare } else { 0.0 })
            .collect()
    }
}

/// Runs a scenario's workers for `--duration` seconds after the warm-up: in one go, or in
/// slices interleaved with its bare counterpart. Each worker's state carries over from one
/// slice to the next.
async fn load<S, F, Fut>(
    args: &Args,
    states: Vec<S>,
    step: F,
    mut interleave: Option<&mut Interleave<'_>>,
) -> anyhow::Result<(Duration, Recorder)>
where
    S: Send + 'static,
    F: Fn(S) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = (S, bool)> + Send,
{
    // `--slices` slices of the scenario (the bare rate gets one more), or one without a bare
    // counterpart.
    let slices = match interleave {
        Some(_) => args.slices.max(1),
        None => 1,
    };
    let slice = Duration::from_secs(args.duration) / slices;
    if let Some(interleave) = interleave.as_deref_mut() {
        interleave.bare_slice(slice, true).await?;
    }
    let (mut states, mut elapsed, mut total) = (states, Duration::ZERO, Recorder::default());
    for i in 0..slices {
        let warmup = match i {
            0 => Duration::from_secs(args.warmup),
            _ => Duration::ZERO,
        };
        let run = Run {
            warmup,
            duration: slice,
        };
        let (took, rec, next) = drive_states(run, states, step.clone()).await;
        states = next;
        let rate = rec.micros.len() as f64 / took.as_secs_f64();
        elapsed += took;
        total.merge(rec);
        if let Some(interleave) = interleave.as_deref_mut() {
            interleave.scenario_rates.push(rate);
            interleave.bare_slice(slice, false).await?;
        }
    }
    Ok((elapsed, total))
}

async fn scenario(
    name: &str,
    args: &Args,
    server: &Server,
    interleave: Option<&mut Interleave<'_>>,
) -> anyhow::Result<Value> {
    let c = args.concurrency;
    let http = server.http.clone();
    let (elapsed, rec) = match name {
        "health" => {
            let step = move |()| {
                let http = http.clone();
                async move {
                    let reply = http.get("/health/live", None).await;
                    ((), reply.is_ok_and(|r| r.status.is_success()))
                }
            };
            load(args, vec![(); c], step, interleave).await?
        }
        "me" => {
            let emails = prepare_users(&http, args.users, "me").await?;
            let tokens = Arc::new(access_tokens(login_all(&http, &emails).await?));
            let step = me_step(http.clone(), tokens, c);
            load(args, (0..c).collect(), step, interleave).await?
        }
        "me_wrk" => {
            if !wrk::available() {
                let line = json!({"scenario": name, "skipped": "wrk is not installed (apt-get install wrk)"});
                println!("{line}");
                return Ok(line);
            }
            let emails = prepare_users(&http, args.users, "me-wrk").await?;
            let tokens = access_tokens(login_all(&http, &emails).await?);
            let (summary, server_s, machine_s) = wrk::me(
                server.dir.path(),
                &format!("http://{}", http.addr()),
                &tokens,
                c,
                Duration::from_secs(args.warmup),
                Duration::from_secs(args.duration),
            )
            .await?;
            let line = wrk::report(&summary, c, server_s, machine_s);
            println!("{line}");
            return Ok(line);
        }
        "refresh" => {
            let emails = prepare_users(&http, c, "refresh").await?;
            let chains: Vec<String> = login_all(&http, &emails)
                .await?
                .into_iter()
                .map(|(_, r)| r)
                .collect();
            load(args, chains, refresh_step(http.clone()), interleave).await?
        }
        "login" => {
            let emails = Arc::new(prepare_users(&http, c, "login").await?);
            let step = login_step(http.clone(), emails);
            load(args, (0..c).collect(), step, interleave).await?
        }
        "register" => load(args, vec![(); c], register_step(http.clone()), interleave).await?,
        "me_under_login_flood" => {
            // A few clients read /users/me while `concurrency` clients flood login.
            let duration = Run {
                warmup: Duration::from_secs(args.warmup),
                duration: Duration::from_secs(args.duration),
            };
            let emails = prepare_users(&http, 64, "flood-me").await?;
            let tokens = Arc::new(access_tokens(login_all(&http, &emails).await?));
            let flood_emails = Arc::new(prepare_users(&http, c, "flood").await?);
            let flood = tokio::spawn(drive(
                duration,
                (0..c).collect(),
                login_step(http.clone(), flood_emails),
            ));
            let readers = 4;
            let (elapsed, rec) = drive(
                duration,
                (0..readers).collect(),
                me_step(http.clone(), tokens, readers),
            )
            .await;
            let (flood_elapsed, flood_rec) = flood.await?;
            report("login_flood", args, c, flood_elapsed, flood_rec);
            return Ok(report(name, args, readers, elapsed, rec));
        }
        other => bail!("unknown scenario {other}"),
    };
    Ok(report(name, args, c, elapsed, rec))
}

/// One request of a worker: its next state, and whether it succeeded.
type Step<S = usize> = std::pin::Pin<Box<dyn std::future::Future<Output = (S, bool)> + Send>>;

/// A refresh chain: each worker always sends its newest refresh token.
fn refresh_step(http: Http) -> impl Fn(String) -> Step<String> + Clone + Send + Sync + 'static {
    move |token: String| {
        let http = http.clone();
        Box::pin(async move {
            let body = json!({"refresh_token": token});
            let next = match http.post("/api/v1/auth/refresh", &body).await {
                Ok(r) if r.status.is_success() => r
                    .json()
                    .and_then(|b| b["refresh_token"].as_str().map(str::to_owned)),
                _ => None,
            };
            match next {
                Some(next) => (next, true),
                None => (token, false),
            }
        })
    }
}

/// Registers a new account per request.
fn register_step(http: Http) -> impl Fn(()) -> Step<()> + Clone + Send + Sync + 'static {
    let counter = Arc::new(AtomicU64::new(0));
    let run = Uuid::new_v4().simple().to_string();
    move |()| {
        let http = http.clone();
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let email = format!("reg-{run}-{n}@bench.example");
        Box::pin(async move { ((), register(&http, &email).await) })
    }
}

fn me_step(
    http: Http,
    tokens: Arc<Vec<String>>,
    stride: usize,
) -> impl Fn(usize) -> Step + Clone + Send + Sync + 'static {
    move |i: usize| {
        let http = http.clone();
        let token = tokens[i % tokens.len()].clone();
        Box::pin(async move {
            let reply = http.get("/api/v1/users/me", Some(&token)).await;
            (i + stride, reply.is_ok_and(|r| r.status.is_success()))
        })
    }
}

fn login_step(
    http: Http,
    emails: Arc<Vec<String>>,
) -> impl Fn(usize) -> Step + Clone + Send + Sync + 'static {
    move |i: usize| {
        let http = http.clone();
        let email = emails[i % emails.len()].clone();
        Box::pin(async move { (i, login(&http, &email).await.is_some()) })
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Mixed traffic for `seconds`, sampling the server's RSS every 10 s: 8 clients on
/// `/users/me`, 2 refresh chains, 2 clients logging in and 1 registering.
async fn soak(server: &Server, seconds: u64) -> anyhow::Result<()> {
    let pid = server.child.id();
    let http = server.http.clone();
    let emails = prepare_users(&http, 128, "soak").await?;
    let access = Arc::new(access_tokens(login_all(&http, &emails).await?));
    // The refresh chains get sessions of their own: a rotation ends the access token of its
    // session, which the `/users/me` clients must keep using.
    let chains: Vec<String> = login_all(&http, &emails[..2])
        .await?
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    let total = Duration::from_secs(seconds);
    let run = Run {
        warmup: Duration::ZERO,
        duration: total,
    };
    let me = tokio::spawn(drive(
        run,
        (0..8).collect(),
        me_step(http.clone(), access, 8),
    ));
    let logins = tokio::spawn(drive(
        run,
        (0..2).collect(),
        login_step(http.clone(), Arc::new(emails)),
    ));
    let refreshes = tokio::spawn(drive(run, chains, refresh_step(http.clone())));
    let registers = tokio::spawn(drive(run, vec![()], register_step(http.clone())));
    let mut samples = Vec::new();
    let started = Instant::now();
    while started.elapsed() < total {
        tokio::time::sleep(Duration::from_secs(10)).await;
        if let Some(kib) = rss_kib(pid) {
            println!(
                "{}",
                json!({"soak_s": started.elapsed().as_secs(), "rss_kib": kib})
            );
            samples.push(kib);
        }
    }
    let (_, me_rec) = me.await?;
    let (_, login_rec) = logins.await?;
    let (_, refresh_rec) = refreshes.await?;
    let (_, register_rec) = registers.await?;
    let after_warmup = samples.get(samples.len() / 5..).unwrap_or(&samples);
    let (min, max) = (
        after_warmup.iter().min().copied().unwrap_or(0),
        after_warmup.iter().max().copied().unwrap_or(0),
    );
    println!(
        "{}",
        json!({
            "soak_summary_s": seconds,
            "rss_first_kib": samples.first(),
            "rss_last_kib": samples.last(),
            "rss_min_after_warmup_kib": min,
            "rss_max_after_warmup_kib": max,
            "spread_pct": if min > 0 { ((max - min) as f64 * 100.0 / min as f64 * 10.0).round() / 10.0 } else { 0.0 },
            "me_requests": me_rec.micros.len(),
            "login_requests": login_rec.micros.len(),
            "refresh_requests": refresh_rec.micros.len(),
            "register_requests": register_rec.micros.len(),
            "errors": me_rec.errors + login_rec.errors + refresh_rec.errors + register_rec.errors,
            "errors_by_kind": {
                "me": me_rec.errors,
                "login": login_rec.errors,
                "refresh": refresh_rec.errors,
                "register": register_rec.errors,
            },
        })
    );
    Ok(())
}

/// Each scenario, in slices interleaved with its bare counterpart (if it has one); then the
/// other bare rates and the targets.
async fn run_scenarios(args: &Args, server: &Server) -> anyhow::Result<()> {
    let bare = match args.bare {
        true => Some(
            Bare::build(
                &server.env,
                &server.dir.path().join("keys"),
                args.backend == Backend::Postgres,
                args.concurrency,
                Duration::from_secs(args.warmup),
                cpus::parse(&args.server_cpus)?,
            )
            .await?,
        ),
        false => None,
    };
    let mut scenarios = HashMap::new();
    let mut paired: Vec<(String, Interleave<'_>)> = Vec::new();
    for name in args
        .scenarios
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let mut interleave =
            bare.as_ref()
                .zip(bare::counterpart(name))
                .map(|(bare, counterpart)| Interleave {
                    bare,
                    name: counterpart,
                    measured: Measured::default(),
                    bare_rates: Vec::new(),
                    scenario_rates: Vec::new(),
                });
        let line = scenario(name, args, server, interleave.as_mut()).await?;
        scenarios.insert(name.to_owned(), line);
        if let Some(interleave) = interleave {
            paired.push((name.to_owned(), interleave));
        }
    }
    let Some(bare) = bare.as_ref() else {
        return Ok(());
    };
    eprintln!("bench: measuring bare rates");
    let mut rates = HashMap::new();
    for name in bare::ALL {
        let mut total = Measured::default();
        for (_, interleave) in &paired {
            if interleave.name == name {
                total.merge(&interleave.measured);
            }
        }
        if total.ops == 0 {
            let duration = Duration::from_secs(args.duration.clamp(2, 10));
            bare.measure(name, duration, true, &mut total).await?;
        }
        rates.insert(name, bare.report(name, &total));
    }
    print_targets(args, &scenarios, &rates, &paired);
    Ok(())
}

/// How many CPUs the server is pinned to (`--server-cpus`), or all of them.
fn server_cores(args: &Args) -> usize {
    match cpus::parse(&args.server_cpus) {
        Ok(Some(cpus)) => cpus.len(),
        _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// Issue 10's targets, each a ratio of a scenario to the bare rate measured around it.
fn print_targets(
    args: &Args,
    scenarios: &HashMap<String, Value>,
    rates: &HashMap<&str, Value>,
    paired: &[(String, Interleave<'_>)],
) {
    let cores = server_cores(args);
    // The server's PASSWORD_HASH_CONCURRENCY: its default is its number of cores.
    let hash_concurrency = std::env::var("BENCH_HASH_CONCURRENCY")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(cores);
    for (name, interleave) in paired {
        let Some(rps) = scenarios.get(name).and_then(|s| s["rps"].as_f64()) else {
            continue;
        };
        let bare = interleave.measured.ops_per_s();
        let (ceiling, required, of) = match name.as_str() {
            "me" => (bare, 0.70, "the bare guard pipeline".to_owned()),
            "refresh" => (
                cores as f64 * bare,
                0.60,
                format!("{cores} core(s) x the signing rate / 2 (pairs/s)"),
            ),
            _ => (
                hash_concurrency as f64 * bare,
                0.85,
                format!("{hash_concurrency} hash slot(s) x the single-thread argon2 rate"),
            ),
        };
        let ratio = if ceiling > 0.0 { rps / ceiling } else { 0.0 };
        // The same ratio slice by slice (each against the bare slices just around it), to
        // show how much of a run's result is the machine's drift.
        let slots = if bare > 0.0 { ceiling / bare } else { 1.0 };
        let per_slice: Vec<f64> = interleave
            .slice_ratios()
            .iter()
            .map(|r| (r / slots * 1000.0).round() / 1000.0)
            .collect();
        println!(
            "{}",
            json!({
                "target": name,
                "rps": rps,
                "bare": interleave.name,
                "bare_ops_per_s_interleaved": bare.round(),
                "ceiling": ceiling.round(),
                "of": of,
                "ratio": (ratio * 1000.0).round() / 1000.0,
                "required": required,
                "met": ratio >= required,
                "slice_ratios": per_slice,
                "scenario_slices_rps": interleave.scenario_rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
                "bare_slices_ops_per_s": interleave.bare_rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
            })
        );
    }
    let errors: u64 = scenarios
        .values()
        .chain(rates.values())
        .filter_map(|line| line["errors"].as_u64())
        .sum();
    println!(
        "{}",
        json!({"target": "errors", "total": errors, "required": 0, "met": errors == 0})
    );
}

/// What one session costs the in-process store, measured on this process's RSS.
async fn memory_store_cost() -> anyhow::Result<Value> {
    use latchkey::session::{SessionStore, memory::MemoryStore};
    let store = MemoryStore::new();
    let n = 200_000u64;
    let before = rss_kib(std::process::id()).unwrap_or(0);
    let now = chrono::Utc::now().timestamp();
    for _ in 0..n {
        store.create(redis_cost::session(now)).await?;
    }
    let after = rss_kib(std::process::id()).unwrap_or(0);
    let line = json!({
        "memory_store_sessions": n,
        "rss_delta_kib": after.saturating_sub(before),
        "bytes_per_session": (after.saturating_sub(before) * 1024) / n,
    });
    println!("{line}");
    drop(store);
    Ok(line)
}

/// The `--seed-*` data, seeded into the server's database and Redis; a connection to its
/// database when seeding or `--admin-queries` needs one (none otherwise, so that plain runs
/// keep no extra connection open).
async fn seed_data(
    args: &Args,
    server: &Server,
) -> anyhow::Result<Option<sea_orm::DatabaseConnection>> {
    let seed = seed::Seed {
        users: args.seed_users,
        sessions: args.seed_sessions,
        audit: args.seed_audit,
    };
    if seed.is_empty() && !args.admin_queries {
        return Ok(None);
    }
    let db = latchkey::db::connect(&server.env["DATABASE_URL"], Some(2)).await?;
    if !seed.is_empty() {
        if args.backend != Backend::Postgres {
            bail!("--seed-* needs --backend postgres");
        }
        // Its password hash is the one every seeded user gets.
        let template = "seed-template@bench.example";
        if !register(&server.http, template).await {
            bail!("registering the seed template failed");
        }
        let redis = server.env.get("REDIS_URL").map(String::as_str);
        let prefix = server.env.get("REDIS_KEY_PREFIX").map(String::as_str);
        seed::run(&db, redis, prefix, template, seed).await?;
    }
    Ok(Some(db))
}

async fn cleanup(server: Server) {
    let database = server.database.clone();
    let redis = server.env.get("REDIS_URL").cloned();
    let prefix = server.env.get("REDIS_KEY_PREFIX").cloned();
    drop(server);
    if let Some(name) = database {
        let _ = run_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
    }
    // A run may leave a million sessions behind, with a week to live.
    if let (Some(url), Some(prefix)) = (redis, prefix)
        && let Err(err) = redis_cost::clear_prefix(&url, &prefix).await
    {
        eprintln!("bench: removing the run's Redis keys: {err:#}");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if let Some(n) = args.redis_cost {
        redis_cost::measure(&redis_url(), n).await?;
        return Ok(());
    }
    if !args.server.exists() {
        bail!(
            "{} does not exist: build it first with `cargo build --release --bin latchkey`",
            args.server.display()
        );
    }
    // The server runs in a temporary working directory.
    args.server = args.server.canonicalize()?;
    // Pinned before the server starts, so the backends of its connections inherit the CPUs.
    let _services = match (args.backend, cpus::parse(&args.services_cpus)?) {
        (Backend::Postgres, Some(cpus)) => Some(cpus::ServicesPinned::to(
            &["postgres", "redis-server"],
            &cpus,
        )?),
        _ => None,
    };
    let server = start_server(&args).await?;
    let result = async {
        if let Some(seconds) = args.soak {
            soak(&server, seconds).await?;
            memory_store_cost().await?;
            return Ok(());
        }
        let db = seed_data(&args, &server).await?;
        run_scenarios(&args, &server).await?;
        if let Some(db) = db.filter(|_| args.admin_queries) {
            admin_queries::measure(&server.http, &db, args.seed_users, args.seed_audit).await?;
        }
        Ok(())
    }
    .await;
    cleanup(server).await;
    result
}
