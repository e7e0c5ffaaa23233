//! Driving a load: concurrent workers for a fixed time, with each request's latency and the
//! CPU time the whole scenario took (the server's and the machine's).

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

/// Latencies of one scenario, and the CPU time it took.
#[derive(Default)]
pub struct Recorder {
    pub micros: Vec<u32>,
    pub errors: u64,
    pub cpu: CpuUsage,
}

impl Recorder {
    /// Adds another slice of the same load.
    pub fn merge(&mut self, other: Recorder) {
        self.micros.extend(other.micros);
        self.errors += other.errors;
        self.cpu.server_s += other.cpu.server_s;
        self.cpu.machine_s += other.cpu.machine_s;
    }
}

/// The server under test, for CPU accounting (set once it has started).
pub static SERVER_PID: OnceLock<u32> = OnceLock::new();

/// CPU seconds spent during a scenario: by the server process (all its threads, user +
/// system; not the kernel's network softirq work) and by the whole machine (every CPU's
/// non-idle time: the server, PostgreSQL, Redis, the load generator and the kernel).
#[derive(Default, Clone, Copy)]
pub struct CpuUsage {
    pub server_s: f64,
    pub machine_s: f64,
}

/// /proc counts CPU time in USER_HZ ticks, which Linux fixes at 100 per second.
const TICKS_PER_S: f64 = 100.0;

/// (server CPU seconds, machine busy CPU seconds) so far.
pub fn cpu_now() -> (f64, f64) {
    let hz = TICKS_PER_S;
    let server = SERVER_PID
        .get()
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .and_then(|stat| {
            // Fields after the command name: state is 3rd overall, utime 14th, stime 15th.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / hz)
        })
        .unwrap_or(0.0);
    let machine = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            let line = stat.lines().find(|l| l.starts_with("cpu "))?;
            let ticks: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|t| t.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
            let total: f64 = ticks.iter().take(8).sum();
            let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
            Some((total - idle) / hz)
        })
        .unwrap_or(0.0);
    (server, machine)
}

/// How long a load runs.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub warmup: Duration,
    pub duration: Duration,
}

/// Runs `workers` loops of `step` until `duration` passes; each loop owns its state.
/// The first `run.warmup` is not recorded: connections are opened and caches filled then.
pub async fn drive<S, F, Fut>(run: Run, states: Vec<S>, step: F) -> (Duration, Recorder)
where
    S: Send + 'static,
    F: Fn(S) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = (S, bool)> + Send,
{
    let (elapsed, rec, _states) = drive_states(run, states, step).await;
    (elapsed, rec)
}

/// [`drive`], also returning each worker's last state, so that a load cut into slices goes on
/// where it stopped (a refresh chain with its newest token).
pub async fn drive_states<S, F, Fut>(
    run: Run,
    states: Vec<S>,
    step: F,
) -> (Duration, Recorder, Vec<S>)
where
    S: Send + 'static,
    F: Fn(S) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = (S, bool)> + Send,
{
    let started = Instant::now() + run.warmup;
    let deadline = started + run.duration;
    let mut tasks = Vec::new();
    for state in states {
        let step = step.clone();
        tasks.push(tokio::spawn(async move {
            let mut rec = Recorder::default();
            let mut state = state;
            // Each worker watches the clock itself: a synchronous operation (a bare verify)
            // would keep a single runtime thread too busy for a timer elsewhere to stop it.
            while Instant::now() < deadline {
                let t = Instant::now();
                let (next, ok) = step(state).await;
                state = next;
                let done = Instant::now();
                // Counted by completion: a request sent during the warm-up that completes in
                // the measured window took the server's time in that window. (Counted by
                // start, the requests queued at the end of the warm-up went uncounted: with
                // 32 logins queued behind one hashing slot, that was 0.5 s of work missing
                // from an 8 s window, 6% of the login rate.)
                if done < started {
                    continue;
                }
                if ok {
                    let micros = done.duration_since(t).as_micros();
                    rec.micros.push(micros.min(u32::MAX as u128) as u32);
                } else {
                    rec.errors += 1;
                }
            }
            (rec, state)
        }));
    }
    // Without a warm-up (the bare rates keep the one runtime thread busy, so a timer would
    // fire late) the start is now.
    if !run.warmup.is_zero() {
        tokio::time::sleep_until(started.into()).await;
    }
    let cpu_at_start = cpu_now();
    let mut total = Recorder::default();
    let mut states = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok((rec, state)) = task.await {
            total.micros.extend(rec.micros);
            total.errors += rec.errors;
            states.push(state);
        }
    }
    let cpu_at_end = cpu_now();
    total.cpu = CpuUsage {
        server_s: cpu_at_end.0 - cpu_at_start.0,
        machine_s: cpu_at_end.1 - cpu_at_start.1,
    };
    (started.elapsed(), total, states)
}
